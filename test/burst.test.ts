// A burst of wrong secrets must not stall the token endpoint: attempts are
// counted before any bcrypt work (atomically, so a concurrent burst cannot
// pass the throttle whole), the compares waiting for a worker are bounded
// and served fairly across addresses, and a compare whose request has gone
// away is never run. Requests travel over real sockets, from two loopback
// addresses (127.0.0.1 for the attacker, 127.0.0.2 for the client).
import { request as httpRequest, Agent } from 'node:http'
import { connect } from 'node:net'
import { test } from 'tap'
import bcrypt from 'bcryptjs'
import type { FastifyInstance } from 'fastify'
import { addressKey } from '../client-auth/throttle.ts'
import { basicAuth, build, form, FORM, sql, injectAdmin } from './helper.ts'

interface Answer { status: number | 'error', ms: number, headers: Record<string, string | string[] | undefined>, cause?: string }

async function tokenOverSocket (port: number, clientId: string, secret: string, localAddress: string, timeoutMs = 20_000): Promise<Answer> {
  const started = performance.now()
  const payload = form({ grant_type: 'client_credentials' })
  return await new Promise((resolve) => {
    const req = httpRequest({
      host: '127.0.0.1',
      port,
      localAddress,
      method: 'POST',
      path: '/oauth/token',
      agent: new Agent({ keepAlive: false }),
      headers: { ...FORM, authorization: basicAuth(clientId, secret), 'content-length': Buffer.byteLength(payload) }
    }, (res) => {
      res.resume()
      res.on('end', () => resolve({ status: res.statusCode ?? 0, ms: performance.now() - started, headers: res.headers }))
    })
    req.setTimeout(timeoutMs, () => req.destroy(new Error('no answer')))
    req.on('error', (err) => resolve({ status: 'error', ms: performance.now() - started, headers: {}, cause: err.message }))
    req.end(payload)
  })
}

// The burst's requests as raw bytes on sockets of their own: the test's
// client shares the service's process and event loop, and Node's HTTP
// client costs more per request than the service does.
async function rawToken (port: number, clientId: string, secret: string, localAddress: string): Promise<Answer> {
  const started = performance.now()
  const payload = form({ grant_type: 'client_credentials' })
  const head = 'POST /oauth/token HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-type: application/x-www-form-urlencoded\r\n' +
    `authorization: ${basicAuth(clientId, secret)}\r\ncontent-length: ${Buffer.byteLength(payload)}\r\n\r\n`
  return await new Promise((resolve) => {
    let received = ''
    const socket = connect({ host: '127.0.0.1', port, localAddress }, () => socket.write(head + payload))
    socket.setEncoding('latin1')
    socket.setTimeout(20_000, () => socket.destroy(new Error('no answer')))
    socket.on('data', (chunk: string) => { received += chunk })
    socket.on('error', (err) => resolve({ status: 'error', ms: performance.now() - started, headers: {}, cause: err.message }))
    socket.on('end', () => {
      const [statusLine = '', ...lines] = received.split('\r\n\r\n')[0]?.split('\r\n') ?? []
      const headers: Record<string, string> = {}
      for (const line of lines) {
        const colon = line.indexOf(':')
        headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim()
      }
      const status = Number(statusLine.split(' ')[1])
      resolve(Number.isInteger(status) ? { status, ms: performance.now() - started, headers } : { status: 'error', ms: performance.now() - started, headers, cause: 'no status line' })
    })
  })
}

async function metric (app: FastifyInstance, name: string): Promise<number> {
  const text = (await injectAdmin(app, '/metrics')).body
  const line = text.split('\n').find((candidate) => candidate.startsWith(`${name} `))
  return Number(line?.split(' ')[1])
}

// The service's own cost, as the CLI hashes: the slowest compare a burst can ask for.
async function insertAtCost (databaseUrl: string, id: string, secret: string, cost: number): Promise<void> {
  await sql(databaseUrl, 'INSERT INTO clients (client_id, client_secret_hash, rate_limit) VALUES ($1, $2, 100000)', [id, await bcrypt.hash(secret, cost)])
}

/**
 * How long a burst answer may take on this machine now: the queue lets about
 * five compares (BCRYPT_QUEUE_LIMIT plus the worker's) stand before any
 * request, so fifteen compares' worth, as long as one takes here at this
 * moment, and never under 5 s (the bound on a quiet machine). Without the
 * bounded queue, most of a burst of 300 was unanswered after 10 s.
 */
async function answerBound (): Promise<number> {
  const hash = await bcrypt.hash('a measure of this machine', 12)
  const started = performance.now()
  await bcrypt.compare('a measure of this machine', hash)
  return Math.max(5000, 15 * (performance.now() - started))
}

test('300 concurrent wrong secrets from one address: few compares, quick answers, and a client elsewhere is served', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertAtCost(databaseUrl, 'svc-target', 'the-target-secret', 12)
  await insertAtCost(databaseUrl, 'svc-legit', 'the-legit-secret', 12)
  await app.listen({ host: '127.0.0.1', port: 0 })
  const port = (app.server.address() as { port: number }).port
  // The bcrypt worker thread starts at the first compare (which takes
  // seconds under the tests' TypeScript loader): started before the measure.
  t.equal((await tokenOverSocket(port, 'svc-warm-up', 'nothing', '127.0.0.3')).status, 401)
  const comparesBefore = await metric(app, 'session_service_bcrypt_compares_total')

  const bound = await answerBound()
  const burst = Array.from({ length: 300 }, async (_, index) => await rawToken(port, 'svc-target', `wrong-${index}`, '127.0.0.1'))
  // The client's secret is not remembered yet: it needs a compare of its own, during the burst.
  await new Promise((resolve) => setTimeout(resolve, 100))
  const legit = await tokenOverSocket(port, 'svc-legit', 'the-legit-secret', '127.0.0.2')
  const answers = await Promise.all(burst)

  t.equal(legit.status, 200, 'the client from another address gets its token')
  // On a quiet machine it takes about a second; what this test can promise
  // on a loaded one is the order: the client's compare does not wait behind
  // the burst's queued ones.
  const lastChecked = Math.max(...answers.filter((answer) => answer.status === 401).map((answer) => answer.ms))
  t.ok(legit.ms + 100 < lastChecked, `before the burst's queued compares are done (${legit.ms.toFixed(0)} ms, the burst's last 401 at ${lastChecked.toFixed(0)} ms)`)
  t.ok(legit.ms < bound, `and in bounded time (${legit.ms.toFixed(0)} ms, bound ${bound.toFixed(0)} ms)`)
  const statuses = new Map<string, number>()
  for (const answer of answers) statuses.set(String(answer.status), (statuses.get(String(answer.status)) ?? 0) + 1)
  t.comment(`burst answers: ${JSON.stringify(Object.fromEntries(statuses))}`)
  t.ok(answers.every((answer) => answer.status === 401 || answer.status === 429 || answer.status === 503),
    'every burst request is answered 401, 429 or 503: no reset, no hang')
  const slowest = Math.max(...answers.map((answer) => answer.ms))
  t.ok(slowest < bound, `each within ${bound.toFixed(0)} ms (slowest ${slowest.toFixed(0)} ms)`)
  t.ok(answers.filter((answer) => answer.status === 429).every((answer) => answer.headers['retry-after'] === '60'), '429 carries Retry-After')
  t.ok(answers.filter((answer) => answer.status === 503).every((answer) => answer.headers['retry-after'] !== undefined), '503 carries Retry-After')

  const compares = await metric(app, 'session_service_bcrypt_compares_total') - comparesBefore
  // One of them is the client's own compare.
  t.ok(compares - 1 <= 10, `at most AUTH_FAILURE_LIMIT (10) compares started for the burst (${compares - 1})`)
})

test('a full bcrypt queue answers 503 at once, with Retry-After, and the metrics say so', async (t) => {
  const { app } = await build(t, { env: { BCRYPT_QUEUE_LIMIT: '3', AUTH_FAILURE_LIMIT_PER_ADDRESS: '1000' } })
  // Thirty addresses, one unknown id each: no throttle applies, only the queue.
  const answers = await Promise.all(Array.from({ length: 30 }, async (_, index) => await app.inject({
    method: 'POST',
    url: '/oauth/token',
    remoteAddress: `198.51.100.${index + 1}`,
    headers: { ...FORM, authorization: basicAuth(`svc-nobody-${index}`, 'a-guess') },
    payload: form({ grant_type: 'client_credentials' })
  })))
  const refused = answers.filter((res) => res.statusCode === 503)
  const checked = answers.filter((res) => res.statusCode === 401)
  t.equal(refused.length + checked.length, 30, 'each answered 401 or 503')
  t.ok(refused.length >= 26 - 4, `most are refused (${refused.length})`)
  t.ok(checked.length >= 1 && checked.length <= 4, `one running and at most three queued are checked (${checked.length})`)
  for (const res of refused.slice(0, 1)) {
    t.strictSame(res.json(), { error: 'temporarily_unavailable', error_description: 'too many client authentications are waiting; retry shortly' })
    t.equal(res.headers['retry-after'], '1')
  }
  t.equal(await metric(app, 'session_service_bcrypt_refused_total'), refused.length, 'refusals are counted')
  t.equal(await metric(app, 'session_service_bcrypt_queue_length'), 0, 'and the queue is empty again')
})

test('a queued compare whose request went away is dropped, not run', async (t) => {
  const { app } = await build(t, { env: { BCRYPT_QUEUE_LIMIT: '50' } })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const port = (app.server.address() as { port: number }).port
  const before = await metric(app, 'session_service_bcrypt_compares_total')
  // Twelve unknown ids (each its own compare against the decoy); all but the
  // first two hang up at once.
  const requests = Array.from({ length: 12 }, async (_, index) =>
    await tokenOverSocket(port, `svc-gone-${index}`, 'a-guess', '127.0.0.1', index < 2 ? 20_000 : 50))
  const answers = await Promise.all(requests)
  t.equal(answers[0]?.status, 401)
  t.equal(answers[1]?.status, 401)
  // Wait for the queue to drain.
  for (let i = 0; i < 100 && await metric(app, 'session_service_bcrypt_queue_length') > 0; i++) await new Promise((resolve) => setTimeout(resolve, 100))
  const dropped = await metric(app, 'session_service_bcrypt_dropped_total')
  const compares = await metric(app, 'session_service_bcrypt_compares_total') - before
  t.ok(dropped >= 5, `the compares of requests that hung up are dropped (${dropped})`)
  t.ok(compares <= 12 - dropped, `and never run (${compares} compares for 12 requests)`)
})

test('IPv6 addresses are counted per /64', async (t) => {
  t.equal(addressKey('2001:db8:1:2::a'), '2001:db8:1:2::/64')
  t.equal(addressKey('2001:db8:1:2:ffff:1:2:3'), '2001:db8:1:2::/64')
  t.equal(addressKey('2001:0db8:0001:0002:0000:0000:0000:0001'), '2001:db8:1:2::/64')
  t.equal(addressKey('::1'), '0:0:0:0::/64')
  t.equal(addressKey('::ffff:192.0.2.1'), '192.0.2.1', 'an IPv4-mapped address is its IPv4 address')
  t.equal(addressKey('192.0.2.1'), '192.0.2.1')

  const { app } = await build(t, { env: { AUTH_FAILURE_LIMIT_PER_ADDRESS: '3' } })
  const attempt = async (address: string, index: number): Promise<number> => (await app.inject({
    method: 'POST',
    url: '/oauth/token',
    remoteAddress: address,
    headers: { ...FORM, authorization: basicAuth(`svc-v6-${index}`, 'a-guess') },
    payload: form({ grant_type: 'client_credentials' })
  })).statusCode
  t.equal(await attempt('2001:db8:1:2::a', 1), 401)
  t.equal(await attempt('2001:db8:1:2::b', 2), 401)
  t.equal(await attempt('2001:db8:1:2:1::c', 3), 401)
  t.equal(await attempt('2001:db8:1:2:ffff::d', 4), 429, 'a fourth address of the same /64 is throttled')
  t.equal(await attempt('2001:db8:1:3::a', 5), 401, 'the next /64 is not')
})
