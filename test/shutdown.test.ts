// A deploy loses no request: server.ts, spawned as a process, gets SIGTERM
// (or SIGINT) while 200 token requests are in flight on 200 connections, and
// every one of them is answered in full. Real sockets throughout: what is
// tested is what a load balancer or a client library sees.
import { Agent, request, type OutgoingHttpHeaders } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import { basicAuth, build, createDatabase, createRedisPrefix, form, freePort, insertClient, needs, pollUntil, ServerProcess, type TestContext, testEnv, injectAdmin } from './helper.ts'

/** What the client saw: a status code, or the error code of a failed request. */
interface Outcome {
  status: number | string
  connection: string | undefined
  body: string
}

interface Sent {
  /** Resolves once the whole request has been handed to the operating system (or failed). */
  written: Promise<void>
  outcome: Promise<Outcome>
}

function send (port: number, agent: Agent | false, method: string, path: string, headers: OutgoingHttpHeaders = {}, body?: string): Sent {
  let written!: () => void
  const writtenPromise = new Promise<void>((resolve) => { written = resolve })
  const outcome = new Promise<Outcome>((resolve) => {
    const req = request({ host: '127.0.0.1', port, method, path, agent, headers })
    req.on('finish', written)
    req.on('error', (err: NodeJS.ErrnoException) => {
      written()
      resolve({ status: err.code ?? err.message, connection: undefined, body: '' })
    })
    req.on('response', (res) => {
      let text = ''
      res.setEncoding('utf8').on('data', (chunk: string) => { text += chunk })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, connection: res.headers.connection, body: text }))
      res.on('error', (err: NodeJS.ErrnoException) => resolve({ status: err.code ?? err.message, connection: undefined, body: text }))
    })
    req.end(body)
  })
  return { written: writtenPromise, outcome }
}

/** A GET on a connection of its own. */
async function get (port: number, path: string): Promise<Outcome> {
  return await send(port, false, 'GET', path).outcome
}

/** How many outcomes of each kind, e.g. `{ 200: 182, ECONNRESET: 18 }`. */
function tally (outcomes: Outcome[]): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const { status } of outcomes) counts[String(status)] = (counts[String(status)] ?? 0) + 1
  return counts
}

const CONCURRENT = 200
const FORM_TYPE = 'application/x-www-form-urlencoded'

interface Started {
  server: ServerProcess
  port: number
  /** the admin listener's port (/ready) */
  adminPort: number
  tokenRequest: (agent: Agent | false) => Sent
  /**
   * An agent that keeps up to 200 connections alive, as a load balancer or a
   * client library does; with `open`, its 200 connections are opened (and
   * idle) when it is returned.
   */
  pool: (open: boolean) => Promise<Agent>
}

async function start (t: TestContext, env: Record<string, string>): Promise<Started | undefined> {
  const databaseUrl = await createDatabase(t)
  const port = await freePort()
  const adminPort = await freePort()
  const server = new ServerProcess(t, testEnv(databaseUrl, createRedisPrefix(t), {
    SERVER_PORT: String(port),
    ADMIN_PORT: String(adminPort),
    SERVER_HOST: '127.0.0.1',
    LOG_LEVEL: 'warn',
    ...env
  }))
  const deadline = Date.now() + 30_000
  while ((await get(port, '/health')).status !== 200) {
    if (server.child.exitCode !== null || Date.now() > deadline) return undefined
    await sleep(100)
  }
  // A rate limit well above the load, so that every refusal is the shutdown's.
  const clientId = 'deploy-test'
  const secret = 'deploy test secret'
  await insertClient(databaseUrl, { id: clientId, secret, rateLimit: 100_000 })
  const headers = { authorization: basicAuth(clientId, secret), 'content-type': FORM_TYPE }
  const body = form({ grant_type: 'client_credentials' })
  const tokenRequest = (agent: Agent | false): Sent => send(port, agent, 'POST', '/oauth/token', headers, body)
  // The secret is checked (bcrypt) once and remembered: the requests under
  // test cost what a busy instance's requests cost.
  if ((await tokenRequest(false).outcome).status !== 200) return undefined

  const pool = async (open: boolean): Promise<Agent> => {
    const agent = new Agent({ keepAlive: true, maxSockets: CONCURRENT })
    t.teardown(() => agent.destroy())
    if (open) await Promise.all(Array.from({ length: CONCURRENT }, async () => await send(port, agent, 'GET', '/health').outcome))
    return agent
  }
  return { server, port, adminPort, tokenRequest, pool }
}

/** Asserts that each of the 200 requests got a complete token response. */
function checkAllIssued (t: Test, what: string, outcomes: Outcome[]): void {
  t.strictSame(tally(outcomes), { 200: CONCURRENT }, `${what}: all ${CONCURRENT} get 200`)
  const complete = outcomes.filter(({ status, body }) => {
    if (status !== 200) return false
    let token: { token_type?: string, access_token?: string }
    try {
      token = JSON.parse(body)
    } catch {
      return false
    }
    return token.token_type === 'Bearer' && typeof token.access_token === 'string'
  })
  t.equal(complete.length, CONCURRENT, `${what}: each answer is a complete token response`)
}

test('SIGTERM: /ready turns 503 at once, the instance serves every request for SHUTDOWN_DELAY, on old connections and new, then exits 0', { skip: needs.postgres }, async (t) => {
  const started = await start(t, {})
  t.ok(started, 'the server starts')
  if (started === undefined) return
  const { server, port, adminPort, pool, tokenRequest } = started
  const defaultDelayMs = 5000
  const busy = await pool(true)
  const idle = await pool(true)
  t.equal(Object.values(idle.freeSockets).flat().length, CONCURRENT, `${CONCURRENT} more keep-alive connections open and idle`)
  t.equal((await get(adminPort, '/ready')).status, 200, '/ready answers 200 before the signal')

  // The signal and 200 requests at once: whichever reaches the process
  // first, every request arrives within the delay.
  const inFlight = Array.from({ length: CONCURRENT }, () => tokenRequest(busy).outcome)
  const signalledAt = Date.now()
  server.child.kill('SIGTERM')

  // The signal is handled between two of the process's tasks: on a loaded
  // machine the first /ready may come before it. 503 within a second of the
  // signal is what a load balancer needs of a 5 s SHUTDOWN_DELAY.
  const ready = await pollUntil(async () => await get(adminPort, '/ready'), (answer) => answer.status === 503, 1000, 20)
  t.equal(ready.status, 503, `/ready answers 503 at once after SIGTERM (${Date.now() - signalledAt} ms)`)
  t.equal(ready.body, '{"status":"draining"}', 'and says the instance is draining')

  // Requests after the signal, on connections that were idle when it came.
  const afterSignal = await Promise.all(Array.from({ length: CONCURRENT }, () => tokenRequest(idle).outcome))
  t.comment(`requests on idle keep-alive connections after SIGTERM: ${JSON.stringify(tally(afterSignal))}`)
  checkAllIssued(t, `${CONCURRENT} requests on keep-alive connections after SIGTERM`, afterSignal)
  t.equal(afterSignal.filter(({ connection }) => connection === 'close').length, CONCURRENT,
    'each of their answers carries Connection: close, the last on its connection')

  // New connections are accepted and served as usual during the delay.
  t.equal((await get(port, '/health')).status, 200, '/health on a new connection during the delay: 200')
  t.equal((await get(adminPort, '/live')).status, 200, '/live on the admin listener during the delay: 200 (no restart while draining)')
  t.equal((await tokenRequest(false).outcome).status, 200, 'a token request on a new connection during the delay: 200')

  const outcomes = await Promise.all(inFlight)
  t.comment(`requests in flight at SIGTERM: ${JSON.stringify(tally(outcomes))}`)
  checkAllIssued(t, `${CONCURRENT} requests in flight at SIGTERM`, outcomes)

  await sleep(Math.max(0, signalledAt + defaultDelayMs - 1500 - Date.now()))
  t.equal((await tokenRequest(false).outcome).status, 200, 'a token request on a new connection late in the delay: 200')

  const exit = await server.exitWithin(defaultDelayMs + 15_000)
  const exitMs = Date.now() - signalledAt
  t.strictSame(exit, { code: 0, signal: null }, 'exit code 0', { output: server.output })
  t.ok(exitMs >= defaultDelayMs, `kept serving for the whole delay: exited ${exitMs} ms after SIGTERM`)
  t.ok(exitMs < defaultDelayMs + 10_000, 'within SHUTDOWN_DELAY + 10 s')
  t.equal((await get(port, '/health')).status, 'ECONNREFUSED', 'nothing listens once the process has exited')
  t.equal((await get(adminPort, '/live')).status, 'ECONNREFUSED', 'on the admin port either')
})

test('SIGINT (Ctrl-C) skips SHUTDOWN_DELAY and exits 0', { skip: needs.postgres }, async (t) => {
  const started = await start(t, { SHUTDOWN_DELAY: '60s' })
  t.ok(started, 'the server starts')
  if (started === undefined) return
  const { server, port } = started
  const signalledAt = Date.now()
  server.child.kill('SIGINT')
  const exit = await server.exitWithin(20_000)
  const exitMs = Date.now() - signalledAt
  t.strictSame(exit, { code: 0, signal: null }, 'exit code 0', { output: server.output })
  // Generous on a loaded machine, yet far from the 60 s of the delay.
  t.ok(exitMs < 20_000, `exited ${exitMs} ms after SIGINT, without waiting for the delay`)
  t.equal((await get(port, '/health')).status, 'ECONNREFUSED', 'nothing listens any more')
})

test('the app without server.ts: /ready reports draining from the flag server.ts sets', async (t) => {
  const { app } = await build(t)
  t.equal(app.draining, false, 'not draining after start')
  t.equal((await injectAdmin(app, '/ready')).statusCode, 200, '/ready answers 200')
  app.draining = true
  const res = await injectAdmin(app, '/ready')
  t.equal(res.statusCode, 503, '/ready answers 503 once draining')
  t.equal(res.body, '{"status":"draining"}')
  t.equal(res.headers['cache-control'], 'no-store')
  t.equal(res.headers['retry-after'], undefined, 'no Retry-After: the instance is not coming back')
  t.equal((await app.inject({ method: 'GET', url: '/health' })).statusCode, 200, 'the other endpoints keep serving')
})
