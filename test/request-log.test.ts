// Request ids and the one log line per request, on an instance built as
// server.ts builds it (instanceOptions: the id generator, the logger's
// serializers), with its log lines collected.
import { Writable } from 'node:stream'
import Fastify, { type FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import app, { instanceOptions } from '../app.ts'
import { ConfigError, loadConfig } from '../plugins/config.ts'
import { basicAuth, createDatabase, createRedisPrefix, FORM, form, injectAdmin, insertClient, testEnv, trackEmbedded } from './helper.ts'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

type Line = Record<string, unknown>

/** The app at LOG_LEVEL=info, its lines collected, with one client. */
async function loggedApp (t: Test, env: Record<string, string> = {}): Promise<{ instance: FastifyInstance, lines: Line[], clientId: string, secret: string }> {
  const databaseUrl = await createDatabase(t)
  const clientId = 'request-log-client'
  const secret = 'request-log-secret'
  await insertClient(databaseUrl, { id: clientId, secret })
  const config = loadConfig(testEnv(databaseUrl, createRedisPrefix(t), { LOG_LEVEL: 'info', ...env }))
  const lines: Line[] = []
  const stream = new Writable({
    write (chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n')) if (line.trim() !== '') lines.push(JSON.parse(line) as Line)
      callback()
    }
  })
  const options = instanceOptions(config)
  const instance = Fastify({ ...options, logger: { ...(options.logger as object), stream } })
  await instance.register(app, { config })
  t.teardown(async () => await instance.close())
  trackEmbedded(instance, databaseUrl)
  await instance.ready()
  return { instance, lines, clientId, secret }
}

const linesOf = (lines: Line[], reqId: string): Line[] => lines.filter((line) => line.reqId === reqId)

test('a sane incoming request id is used, echoed, and on every line of the request', async (t) => {
  const { instance, lines, clientId } = await loggedApp(t)
  const id = 'edge-7f3a.b_c:9-0'
  const res = await instance.inject({
    method: 'POST',
    url: '/oauth/token',
    headers: { ...FORM, 'x-request-id': id, authorization: basicAuth(clientId, 'a wrong secret') },
    payload: form({ grant_type: 'client_credentials' })
  })
  t.equal(res.statusCode, 401)
  t.equal(res.headers['x-request-id'], id, 'echoed in the response')
  const own = linesOf(lines, id)
  t.ok(own.some((line) => line.msg === 'client authentication failed'), 'the line the request\'s code writes carries the id')
  t.equal(own.filter((line) => line.msg === 'request completed').length, 1, 'and so does its completion line')
})

test('an insane or missing request id is replaced by a random one, never refused', async (t) => {
  const { instance, lines } = await loggedApp(t)
  const insane = ['x'.repeat(129), 'two words', '<script>', 'a"b', 'semi;colon', 'ü', '', 'id-1, id-2']
  const seen = new Set<string>()
  for (const value of [...insane, undefined]) {
    const res = await instance.inject({ method: 'GET', url: '/.well-known/jwks.json', headers: value === undefined ? {} : { 'x-request-id': value } })
    const echoed = String(res.headers['x-request-id'])
    t.equal(res.statusCode, 200, `${JSON.stringify(value?.slice(0, 20))}: answered`)
    t.match(echoed, UUID, `${JSON.stringify(value?.slice(0, 20))}: a fresh UUID instead`)
    t.equal(linesOf(lines, echoed).length, 1, 'which the request\'s line carries')
    seen.add(echoed)
  }
  t.equal(seen.size, insane.length + 1, 'each one different')
  const longest = 'y'.repeat(128)
  const res = await instance.inject({ method: 'GET', url: '/.well-known/jwks.json', headers: { 'x-request-id': longest } })
  t.equal(res.headers['x-request-id'], longest, '128 characters are still used')
})

test('REQUEST_ID_HEADER names the header read and echoed', async (t) => {
  const { instance } = await loggedApp(t, { REQUEST_ID_HEADER: 'X-Correlation-ID' })
  const res = await instance.inject({ method: 'GET', url: '/.well-known/jwks.json', headers: { 'x-correlation-id': 'corr-1', 'x-request-id': 'other-1' } })
  t.equal(res.headers['x-correlation-id'], 'corr-1')
  t.equal(res.headers['x-request-id'], undefined, 'the default header is neither read nor set')
  t.throws(() => loadConfig(testEnv('postgres://unused', 'p:', { REQUEST_ID_HEADER: 'x request id' })), ConfigError, 'a name that is no header name stops the start')
})

test('one info line per request: method, path without query, route, status, duration, client, outcome', async (t) => {
  const { instance, lines, clientId, secret } = await loggedApp(t)
  const token = await instance.inject({
    method: 'POST',
    url: '/oauth/token?client_secret=in-the-query',
    headers: { ...FORM, 'x-request-id': 'token-1' },
    payload: form({ grant_type: 'client_credentials', client_id: clientId, client_secret: secret })
  })
  t.equal(token.statusCode, 200)
  const own = linesOf(lines, 'token-1')
  t.equal(own.length, 1, 'exactly one line')
  t.match(own[0], {
    level: 30,
    msg: 'request completed',
    req: { method: 'POST', url: '/oauth/token' },
    route: '/oauth/token',
    statusCode: 200,
    durationMs: Number,
    clientId,
    grantType: 'client_credentials',
    outcome: 'issued'
  })

  await instance.inject({ method: 'GET', url: '/no-such/path?client_secret=x', headers: { 'x-request-id': 'unknown-1' } })
  t.match(linesOf(lines, 'unknown-1'), [{ msg: 'request completed', req: { url: '/no-such/path' }, route: '/no-such/path', statusCode: 404, outcome: 'not_found' }],
    'an unknown path: its path as the route, without the query')
  await instance.inject({ method: 'POST', url: '/oauth/token', headers: { ...FORM, 'x-request-id': 'bad-grant-1' }, payload: form({ grant_type: 'password', client_id: clientId }) })
  t.match(linesOf(lines, 'bad-grant-1'), [{ statusCode: 400, outcome: 'unsupported_grant_type', clientId }])
  t.notOk(linesOf(lines, 'bad-grant-1')[0]?.grantType, 'a grant type the service does not know is not logged')

  t.notOk(JSON.stringify(lines).includes('in-the-query'), 'the query string is nowhere')
  t.notOk(JSON.stringify(lines).includes(secret), 'nor the secret')
  t.notOk(lines.some((line) => line.msg === 'incoming request'), 'no line as a request arrives, at info')
})

test('probes (routes logged above info) write no line', async (t) => {
  const { instance, lines } = await loggedApp(t)
  for (const [url, admin] of [['/health', false], ['/ready', true], ['/live', true], ['/metrics', true]] as const) {
    const request = { method: 'GET' as const, url, headers: { 'x-request-id': `probe${url.replace('/', '-')}` } }
    const res = admin ? await injectAdmin(instance, request) : await instance.inject(request)
    t.equal(res.statusCode, 200, `${url} answers`)
    t.equal(linesOf(lines, `probe${url.replace('/', '-')}`).length, 0, `${url}: no line`)
  }
})
