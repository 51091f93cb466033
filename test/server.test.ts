import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import { basicAuth, createDatabase, createRedisPrefix, freePort, generateRsaKeyPair, insertClient, needs, ServerProcess, testEnv, waitForHealth } from './helper.ts'

const FORM_TYPE = 'application/x-www-form-urlencoded'

interface TokenBody {
  access_token: string
  refresh_token: string
  token_type: string
  expires_in: number
}

test('DATABASE_URL without a signing key stops the process with exit code 1 and one line', async (t) => {
  const env = { DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/unused', SERVER_PORT: String(await freePort()), SERVER_HOST: '127.0.0.1', LOG_LEVEL: 'info' }
  const server = new ServerProcess(t, env)
  const exit = await server.exitWithin(20_000)
  t.strictSame(exit, { code: 1, signal: null }, 'exit code 1')
  t.match(server.stderr, /^session-service: JWT_PRIVATE_KEY[^\n]*\n$/, `exactly one line on stderr (${server.stderr})`)
  t.notMatch(server.stdout + server.stderr, /^\s*at /m, 'no stack frames')
})

test('a JWT_PUBLIC_KEY of another pair stops the process with exit code 1 and one line', async (t) => {
  const env = testEnv(await createDatabase(t), createRedisPrefix(t), {
    JWT_PUBLIC_KEY: generateRsaKeyPair().publicKey,
    SERVER_PORT: String(await freePort()),
    SERVER_HOST: '127.0.0.1',
    LOG_LEVEL: 'info'
  })
  const server = new ServerProcess(t, env)
  const exit = await server.exitWithin(20_000)
  t.strictSame(exit, { code: 1, signal: null }, 'exit code 1')
  t.equal(server.stderr, 'session-service: JWT_PUBLIC_KEY: does not match JWT_PRIVATE_KEY\n', 'exactly one line on stderr')
  t.notMatch(server.stdout + server.stderr, /^\s*at /m, 'no stack frames')
})

test('a Redis that does not answer at start stops the process within about 10 s, with one line naming REDIS_URL', async (t) => {
  const env = testEnv(await createDatabase(t), createRedisPrefix(t), {
    REDIS_URL: `redis://127.0.0.1:${await freePort()}`,
    SERVER_PORT: String(await freePort()),
    SERVER_HOST: '127.0.0.1',
    LOG_LEVEL: 'error'
  })
  const started = Date.now()
  const server = new ServerProcess(t, env)
  const exit = await server.exitWithin(40_000)
  const ms = Date.now() - started
  t.strictSame(exit, { code: 1, signal: null }, 'exit code 1')
  t.match(server.stderr, /^session-service: REDIS_URL: Redis did not answer within 10 s at start \(connect ECONNREFUSED [^\n]+\)\n$/, `one line on stderr (${server.stderr})`)
  t.ok(ms < 30_000, `gave up after ${ms} ms, not the 60 s plugin timeout`)
  t.notMatch(server.stdout + server.stderr, /^\s*at /m, 'no stack frames')
})

/** The client's calls to a running server process, over a real socket. */
interface ProcessClient {
  post: (path: string, fields: Record<string, string>) => Promise<Response>
  verify: (token: string) => Promise<unknown>
  authorization: string
  secret: string
}

async function processClient (t: Test, base: string, databaseUrl: string): Promise<ProcessClient> {
  const secret = 'process secret+/:ü'
  await insertClient(databaseUrl, { id: PROCESS_CLIENT, secret })
  const authorization = basicAuth(PROCESS_CLIENT, secret)
  return {
    authorization,
    secret,
    post: async (path, fields) => await fetch(`${base}${path}`, {
      method: 'POST',
      headers: { authorization, 'content-type': FORM_TYPE },
      body: new URLSearchParams(fields).toString()
    }),
    verify: async (token) => {
      const res = await fetch(`${base}/oauth/verify`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token }) })
      t.equal(res.status, 200, 'verify answers 200')
      return await res.json()
    }
  }
}

const PROCESS_CLIENT = 'svc-process'

/** Every grant, verify and both revocations; returns the tokens issued. */
async function exerciseEndpoints (t: Test, { post, verify }: ProcessClient): Promise<string[]> {
  const issued: string[] = []
  const tokenRes = await post('/oauth/token', { grant_type: 'client_credentials' })
  t.equal(tokenRes.status, 200, 'client_credentials with Basic auth')
  t.equal(tokenRes.headers.get('cache-control'), 'no-store')
  const first = await tokenRes.json() as TokenBody
  t.equal(first.token_type, 'Bearer')
  issued.push(first.access_token, first.refresh_token)

  const refreshRes = await post('/oauth/token', { grant_type: 'refresh_token', refresh_token: first.refresh_token })
  t.equal(refreshRes.status, 200, 'refresh')
  const second = await refreshRes.json() as TokenBody
  issued.push(second.access_token, second.refresh_token)
  t.not(second.access_token, first.access_token, 'a new access token')
  t.not(second.refresh_token, first.refresh_token, 'a new refresh token')

  t.match(await verify(second.access_token), { valid: true, claims: { sub: PROCESS_CLIENT, client_id: PROCESS_CLIENT, iss: 'session-service', aud: 'api' } })

  const revokeAccess = await post('/oauth/revoke', { token: second.access_token, token_type_hint: 'access_token' })
  t.equal(revokeAccess.status, 200, 'revoke the access token')
  t.equal(await revokeAccess.text(), '')
  t.strictSame(await verify(second.access_token), { valid: false, error: 'revoked' })

  const revokeRefresh = await post('/oauth/revoke', { token: second.refresh_token })
  t.equal(revokeRefresh.status, 200, 'revoke the refresh token')
  const afterRevoke = await post('/oauth/token', { grant_type: 'refresh_token', refresh_token: second.refresh_token })
  t.equal(afterRevoke.status, 400)
  t.equal((await afterRevoke.json() as { error: string }).error, 'invalid_grant', 'the revoked refresh token no longer works')
  return issued
}

/**
 * SIGTERM while requests are in flight: once the server has received them
 * (it logs "incoming request" for each, at debug), it must answer all of them, then
 * exit 0. Returns the tokens they were given.
 */
async function sigtermWithRequestsInFlight (t: Test, server: ServerProcess, { post }: ProcessClient, shutdownDelayMs: number): Promise<string[]> {
  const received = (): number => server.logLines().filter((line) => line.msg === 'incoming request' &&
    (line.req as { url?: string } | undefined)?.url === '/oauth/token').length
  const before = received()
  const inFlight = Array.from({ length: 5 }, async () => {
    const res = await post('/oauth/token', { grant_type: 'client_credentials' })
    return { status: res.status, body: await res.text() }
  })
  const receivedBy = Date.now() + 10_000
  while (received() < before + 5 && Date.now() < receivedBy) await sleep(5)
  t.equal(received() - before, 5, 'the five requests reached the server')
  const killedAt = Date.now()
  server.child.kill('SIGTERM')

  const answers = await Promise.allSettled(inFlight)
  t.strictSame(answers.map((answer) => answer.status === 'fulfilled' ? answer.value.status : String(answer.reason)), [200, 200, 200, 200, 200],
    'every in-flight request gets a complete 200 response')
  const issued: string[] = []
  for (const answer of answers) {
    if (answer.status !== 'fulfilled') continue
    const body = JSON.parse(answer.value.body) as TokenBody
    t.equal(body.token_type, 'Bearer')
    issued.push(body.access_token, body.refresh_token)
  }
  const exit = await server.exitWithin(shutdownDelayMs + 15_000)
  const exitMs = Date.now() - killedAt
  t.strictSame(exit, { code: 0, signal: null }, 'exit code 0 after SIGTERM')
  t.ok(exitMs < shutdownDelayMs + 10_000, `exited ${exitMs} ms after SIGTERM, within SHUTDOWN_DELAY + 10 s`)
  return issued
}

/** The one line a person reads after the start: where to get tokens, discovery, docs, and how to make a client. */
async function startGuide (t: Test, server: ServerProcess, port: number): Promise<void> {
  const guides = server.logLines().filter((line) => typeof line.tokenEndpoint === 'string')
  t.equal(guides.length, 1, 'one start guide line')
  const adminPort = server.logLines().find((line) => line.msg === 'admin listener open')?.port
  t.match(guides[0], {
    level: 30,
    tokenEndpoint: `http://localhost:${port}/oauth/token`,
    discovery: `http://localhost:${port}/.well-known/openid-configuration`,
    apiDocs: `http://127.0.0.1:${String(adminPort)}/docs`,
    // server.ts started by node from the project folder: the CLI beside it
    createClient: 'node cli/index.ts clients create --name demo --scope read'
  }, 'the token endpoint and discovery on the public URL, the docs on the admin listener, the CLI beside server.ts')
  const guide = guides[0] ?? {}
  for (const field of ['tokenEndpoint', 'discovery', 'apiDocs', 'createClient']) {
    t.ok(String(guide.msg).includes(String(guide[field])), `the message itself shows ${field}, for a person reading the log`)
  }
  const docs = await fetch(String(guide.apiDocs))
  t.equal(docs.status, 200, 'the API docs URL answers')
  await docs.body?.cancel()
}

test('the server process: serves over HTTP, drains in-flight requests on SIGTERM, keeps secrets out of its log', { skip: needs.postgres }, async (t) => {
  const databaseUrl = await createDatabase(t)
  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  // A short delay: test/shutdown.test.ts covers the delay itself.
  const shutdownDelayMs = 1000
  const server = new ServerProcess(t, testEnv(databaseUrl, createRedisPrefix(t), {
    SERVER_PORT: String(port),
    SERVER_HOST: '127.0.0.1',
    // debug: the "incoming request" line of each request, as it arrives
    LOG_LEVEL: 'debug',
    SHUTDOWN_DELAY: `${shutdownDelayMs / 1000}s`
  }))
  const healthStatus = await waitForHealth(base, () => server.running, 60_000)
  t.equal(healthStatus, 200, `GET /health answers 200 (stderr: ${server.stderr})`)
  if (healthStatus !== 200) return
  await startGuide(t, server, port)

  const client = await processClient(t, base, databaseUrl)
  const issued = [...await exerciseEndpoints(t, client), ...await sigtermWithRequestsInFlight(t, server, client, shutdownDelayMs)]
  const { authorization, secret } = client

  t.test('the log has lines, and no credential or token in them', async (t) => {
    const lines = server.logLines()
    t.ok(lines.some((line) => typeof line.msg === 'string' && line.msg.startsWith(`Server listening at http://127.0.0.1:${port}`)), 'a "Server listening" line')
    t.ok(lines.some((line) => line.msg === 'request completed'), 'request lines')
    t.ok(lines.some((line) => line.msg === 'shutting down' && line.signal === 'SIGTERM' && line.delayMs === shutdownDelayMs), 'a "shutting down" line with the delay')
    t.equal(issued.length, 14, 'two tokens from each of the seven grants')
    const secrets: Array<[string, string]> = [
      ['client secret', secret],
      ['client secret, form-encoded', new URLSearchParams({ s: secret }).toString().slice(2)],
      ['Basic header value', authorization],
      ['Basic credentials', authorization.slice('Basic '.length)],
      ...issued.map((token, i): [string, string] => [`token ${i}`, token])
    ]
    for (const [what, value] of secrets) {
      t.notOk(server.stdout.includes(value), `${what} not in the log`)
    }
    t.ok(lines.some((line) => (line.req as { url?: string } | undefined)?.url === '/oauth/revoke'), 'the scanned log covers the whole flow')
  })
})
