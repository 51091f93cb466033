// The embedded mode: no DATABASE_URL and no REDIS_URL. The service keeps its
// database (PGlite) in DATA_DIR, its refresh tokens and revocations in that
// database, and generates its signing key there on the first start. These
// tests use that mode whatever servers the machine has: each builds the app
// on a data directory of its own, as an operator following the README would.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { chmodSync, existsSync, readFileSync, statSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import tap, { test, type Test } from 'tap'
import Fastify, { type FastifyInstance, type LightMyRequestResponse } from 'fastify'
import serviceApp, { options } from '../app.js'
import { ensureDataDirSigningKey, loadConfig } from '../plugins/config.js'
import { insertClientRow } from '../plugins/clients.js'
import { CONTROL_SOCKET, LOCK_FILE, SIGNING_KEY_FILE } from '../storage/data-dir.js'
import { basicAuth, decodeJwt, form, FORM, freePort, PROJECT_DIR, runEntry, runnerEnv, tokenRequest, verify } from './helper.js'

type LogLine = Record<string, unknown>

// pino's numeric levels
const INFO = 30
const WARN = 40

/** A collector of the app's log lines (pino writes one JSON object a line). */
function logCollector (): { stream: Writable, lines: LogLine[] } {
  const lines: LogLine[] = []
  const stream = new Writable({
    write (chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n')) {
        if (line.trim() !== '') lines.push(JSON.parse(line) as LogLine)
      }
      callback()
    }
  })
  return { stream, lines }
}

// Apps started by each test, closed at its teardown if the test did not.
const openApps = new WeakMap<Test, Set<FastifyInstance>>()

/**
 * A data directory of the test's own (t.testdir). The teardown that closes
 * the test's apps is registered first: teardowns run in order, so the apps
 * let go of the folder (and its lock) before it is removed.
 */
function testDataDir (t: Test, content: Record<string, string> = {}): string {
  const apps = new Set<FastifyInstance>()
  openApps.set(t, apps)
  t.teardown(async () => {
    for (const app of apps) await app.close()
  })
  // Owner-only, as the service requires of an existing DATA_DIR.
  const dir = t.testdir(content)
  chmodSync(dir, 0o700)
  return dir
}

/** The app as the server builds it, on `dir` with nothing but DATA_DIR set. */
async function start (t: Test, dir: string, stream?: Writable): Promise<FastifyInstance> {
  const apps = openApps.get(t)
  if (apps === undefined) throw new Error('call testDataDir(t) first')
  const env = { DATA_DIR: dir, LOG_LEVEL: 'silent' }
  const config = loadConfig(env, { dataDirKey: ensureDataDirSigningKey(env) })
  const app = Fastify({ ...options, logger: stream === undefined ? false : { level: 'info', stream } })
  apps.add(app)
  app.addHook('onClose', async () => { apps.delete(app) })
  await app.register(serviceApp, { config })
  await app.ready()
  return app
}

/** A client with a secret, created in the app's embedded database (bcrypt cost 10: fast). */
async function createClient (app: FastifyInstance, id: string, extra: { scopes?: string[], rateLimit?: number } = {}): Promise<{ id: string, secret: string, authorization: string }> {
  const secret = `${id}-secret`
  await insertClientRow(app.db, { id, secret, ...extra }, 10)
  return { id, secret, authorization: basicAuth(id, secret) }
}

interface TokenBody {
  access_token: string
  refresh_token: string
  token_type: string
  expires_in: number
}

function tokens (t: Test, res: LightMyRequestResponse, what: string): TokenBody {
  t.equal(res.statusCode, 200, `${what}: 200`, { body: res.body })
  return res.json() as TokenBody
}

async function revoke (app: FastifyInstance, authorization: string, token: string): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/oauth/revoke', headers: { ...FORM, authorization }, payload: form({ token }) })
}

async function introspect (app: FastifyInstance, authorization: string, token: string): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/oauth/introspect', headers: { ...FORM, authorization }, payload: form({ token }) })
}

async function jwksKids (app: FastifyInstance): Promise<string[]> {
  const res = await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })
  return (res.json() as { keys: Array<{ kid: string }> }).keys.map((key) => key.kid)
}

const mode = (path: string): string => (statSync(path).mode & 0o777).toString(8)

// Each test opens the embedded PostgreSQL on a new data directory, and its
// first start (initdb, then the migrations) takes several seconds on a busy
// machine: more than the default per-file budget allows for the whole file.
tap.setTimeout(300_000)

test('a restart loses nothing: clients, tokens, revocations, refresh tokens and the signing key are kept in DATA_DIR', async (t) => {
  // A folder that does not exist yet: the service creates it, owner-only.
  const dir = join(testDataDir(t), 'data')
  const first = await start(t, dir)
  const client = await createClient(first, 'svc-restart', { scopes: ['read', 'write'] })
  const { authorization } = client

  const kept = tokens(t, await tokenRequest(first, { grant_type: 'client_credentials', scope: 'read' }, { authorization }), 'first session')
  t.equal(decodeJwt(kept.access_token).payload.scope, 'read', 'the first session has the scope asked for')
  const revoked = tokens(t, await tokenRequest(first, { grant_type: 'client_credentials', scope: 'read' }, { authorization }), 'second session')
  const revokeRes = await revoke(first, authorization, revoked.access_token)
  t.equal(revokeRes.statusCode, 200, 'revoking an access token answers 200')
  t.strictSame((await verify(first, revoked.access_token)).json(), { valid: false, error: 'revoked' }, 'before the restart: the revoked access token is revoked')
  const kidsBefore = await jwksKids(first)
  t.equal(kidsBefore.length, 1, 'the JWKS publishes one key')

  await first.close()
  t.notOk(existsSync(join(dir, LOCK_FILE)), 'the lock is given back when the app closes')

  const second = await start(t, dir)

  const fresh = await tokenRequest(second, { grant_type: 'client_credentials' }, { authorization })
  t.equal(fresh.statusCode, 200, 'after the restart: the client still authenticates', { body: fresh.body })

  const keptCheck = (await verify(second, kept.access_token)).json()
  t.equal(keptCheck.valid, true, 'after the restart: the access token issued before still verifies', { body: keptCheck })
  t.match(keptCheck, { claims: { sub: client.id, scope: 'read' } }, 'with its claims')
  t.strictSame((await verify(second, revoked.access_token)).json(), { valid: false, error: 'revoked' },
    'after the restart: the access token revoked before is still revoked')

  const sid = decodeJwt(kept.access_token).payload.sid
  const introspected = await introspect(second, authorization, kept.refresh_token)
  t.equal(introspected.statusCode, 200, 'introspection answers 200')
  t.match(introspected.json(), { active: true, token_type: 'refresh_token', client_id: client.id, scope: 'read', sid },
    'after the restart: the refresh token from before introspects as active, with its session and scope')

  const refreshed = tokens(t, await tokenRequest(second, { grant_type: 'refresh_token', refresh_token: kept.refresh_token }, { authorization }),
    'after the restart: the refresh token from before is exchanged')
  t.equal(decodeJwt(refreshed.access_token).payload.sid, sid, 'the new access token belongs to the same session')
  t.equal((await verify(second, refreshed.access_token)).json().valid, true, 'the new access token verifies')

  const replay = await tokenRequest(second, { grant_type: 'refresh_token', refresh_token: kept.refresh_token }, { authorization })
  t.equal(replay.statusCode, 400, 'the same refresh token a second time: 400')
  t.equal(replay.json().error, 'invalid_grant', 'the same refresh token a second time: invalid_grant')
  t.strictSame((await verify(second, refreshed.access_token)).json(), { valid: false, error: 'revoked' },
    'the replay revoked the session: its newest access token is revoked')
  t.strictSame((await verify(second, kept.access_token)).json(), { valid: false, error: 'revoked' },
    'the replay revoked the session: its first access token is revoked too')
  t.strictSame((await introspect(second, authorization, refreshed.refresh_token)).json(), { active: false },
    'the replay revoked the session: its rotated refresh token is no longer active')

  t.strictSame(await jwksKids(second), kidsBefore, 'the JWKS kid is the same after the restart: the same key signs')
  t.equal(mode(join(dir, SIGNING_KEY_FILE)), '600', `${SIGNING_KEY_FILE} is readable by its owner only`)
  t.equal(mode(dir), '700', 'DATA_DIR is accessible to its owner only')
})

test('the lock of DATA_DIR: a stale one is taken over, a live one refuses a second opener with one line, and it goes with the app', async (t) => {
  // Left by a process that no longer exists (beyond any pid_max).
  const dir = testDataDir(t, { [LOCK_FILE]: '2147483646\n' })
  const app = await start(t, dir)
  t.equal((await app.inject({ method: 'GET', url: '/health' })).statusCode, 200, 'a stale lock is taken over: the app starts and answers /health')
  t.equal(readFileSync(join(dir, LOCK_FILE), 'utf8').trim(), String(process.pid), `${LOCK_FILE} now names this process`)

  const other = Fastify({ ...options, logger: false })
  await t.rejects(async () => await other.register(serviceApp, { config: loadConfig({ DATA_DIR: dir, LOG_LEVEL: 'silent' }) }), { message: /in use/ },
    'a second app on the same DATA_DIR in this process: an error saying the data directory is in use')
  await other.close().catch(() => {})
  t.equal((await app.inject({ method: 'GET', url: '/health' })).statusCode, 200, 'the first app still serves after the refused attempt')
  t.ok(existsSync(join(dir, LOCK_FILE)), 'the refused attempt left the lock of the first app in place')

  const run = await runEntry('server.ts', [], {
    env: { DATA_DIR: dir, SERVER_PORT: String(await freePort()), SERVER_HOST: '127.0.0.1' },
    timeoutMs: 30_000
  })
  t.equal(run.code, 1, 'server.ts on a held DATA_DIR exits with code 1', { stderr: run.stderr })
  t.match(run.stderr, /^session-service: the data directory [^\n]*\n$/, `exactly one line on stderr, naming the data directory (${run.stderr})`)
  t.match(run.stderr, `in use by process ${process.pid}`, 'the line names the process holding it')
  t.notMatch(run.stdout + run.stderr, /^\s+at /m, 'no stack trace')

  await app.close()
  t.notOk(existsSync(join(dir, LOCK_FILE)), `${LOCK_FILE} is gone once the app has closed`)
})

test('one embedded app, no Redis: the SQL store and the in-process rate limits', async (t) => {
  const app = await start(t, testDataDir(t))

  t.test('of 10 simultaneous exchanges of one refresh token, exactly one succeeds', async (t) => {
    const { authorization } = await createClient(app, 'svc-race')
    const issued = tokens(t, await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization }), 'client_credentials')
    const answers = await Promise.all(Array.from({ length: 10 }, async () =>
      await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: issued.refresh_token }, { authorization })))
    const statuses = answers.map((res) => res.statusCode)
    t.equal(statuses.filter((status) => status === 200).length, 1, `exactly one 200 (statuses: ${statuses.join(', ')})`)
    const refused = answers.filter((res) => res.statusCode !== 200)
    t.strictSame(refused.map((res) => [res.statusCode, res.json().error]), Array.from({ length: 9 }, () => [400, 'invalid_grant']),
      'the nine others: 400 invalid_grant')
  })

  t.test('a client with rate_limit 2 gets its third token request refused with 429 and Retry-After', async (t) => {
    const { authorization } = await createClient(app, 'svc-limited', { rateLimit: 2 })
    const answers: LightMyRequestResponse[] = []
    for (let i = 0; i < 3; i++) answers.push(await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization }))
    t.strictSame(answers.map((res) => res.statusCode), [200, 200, 429], 'two token responses, then 429')
    const limited = answers[2]
    t.equal(limited?.json().error, 'rate_limit_exceeded', 'the 429 says rate_limit_exceeded')
    const retryAfter = limited?.headers['retry-after']
    t.match(retryAfter, /^\d+$/, 'the 429 carries Retry-After in seconds')
    t.ok(Number(retryAfter) > 0 && Number(retryAfter) <= 60, `Retry-After (${String(retryAfter)}) is within the one-minute window`)
  })
})

test('the log says once what the embedded mode means; /health, /ready and /metrics show PostgreSQL only', async (t) => {
  const dir = testDataDir(t)
  const log = logCollector()
  const app = await start(t, dir, log.stream)
  const lines = log.lines
  const said = (level: number, pattern: RegExp): LogLine[] => lines.filter((line) => line.level === level && pattern.test(String(line.msg)))

  const single = said(WARN, /REDIS_URL/)
  t.equal(single.length, 1, 'exactly one warning mentions REDIS_URL', { lines })
  t.match(single[0]?.msg, /single instance/, 'it says to run a single instance')
  t.equal(said(INFO, /generated/).length, 1, 'exactly one info line says the signing key was generated', { lines })
  t.match(said(INFO, /generated/)[0], { path: join(dir, SIGNING_KEY_FILE) }, 'naming the file it was saved in')
  t.equal(lines.filter((line) => /embedded PostgreSQL/.test(String(line.msg))).length, 1, 'exactly one line about the embedded PostgreSQL', { lines })

  const health = await app.inject({ method: 'GET', url: '/health' })
  t.equal(health.statusCode, 200, 'GET /health: 200')
  t.strictSame(health.json(), { status: 'ok', postgresql: { status: 'up' }, redis: { status: 'unused' } }, 'GET /health: PostgreSQL up, Redis unused')
  const ready = await app.inject({ method: 'GET', url: '/ready' })
  t.equal(ready.statusCode, 200, 'GET /ready: 200')
  t.strictSame(ready.json(), { status: 'ready' }, 'GET /ready: ready')
  const metrics = await app.inject({ method: 'GET', url: '/metrics' })
  t.equal(metrics.statusCode, 200, 'GET /metrics: 200')
  t.match(metrics.body, /^session_service_dependency_up\{dependency="postgresql"\} 1$/m, 'metrics: PostgreSQL up')
  t.notMatch(metrics.body, /dependency="redis"/, 'metrics: no Redis series')

  await app.close()
  const again = logCollector()
  await start(t, dir, again.stream)
  t.equal(again.lines.filter((line) => /generated/.test(String(line.msg))).length, 0, 'second start: no key generated', { lines: again.lines })
  const saved = again.lines.filter((line) => line.level === INFO && /saved in the data directory/.test(String(line.msg)))
  t.equal(saved.length, 1, 'second start: one info line says the saved key is used', { lines: again.lines })
  t.equal(again.lines.filter((line) => line.level === WARN && /REDIS_URL/.test(String(line.msg))).length, 1,
    'second start: the single-instance warning again, once')
})

interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
}

test('the README quick start: server.ts with only DATA_DIR, a client from the CLI, a token over HTTP, SIGTERM', async (t) => {
  // Not t.testdir(): the control socket the CLI uses lives in DATA_DIR, and a
  // Unix socket path is limited to about 100 bytes.
  const dir = await mkdtemp(join(tmpdir(), 'ss-embedded-'))
  const port = await freePort()
  const base = `http://127.0.0.1:${port}`

  const server: ChildProcessWithoutNullStreams = spawn(process.execPath, [...process.execArgv, 'server.ts'], {
    cwd: PROJECT_DIR,
    env: { ...runnerEnv(), DATA_DIR: dir, SERVER_PORT: String(port), SERVER_HOST: '127.0.0.1' }
  })
  let stdout = ''
  let stderr = ''
  server.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
  server.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  const exited = new Promise<Exit>((resolve) => server.on('close', (code, signal) => resolve({ code, signal })))
  const running = (): boolean => server.exitCode === null && server.signalCode === null
  // One teardown, in this order: the process goes before its folder does.
  t.teardown(async () => {
    if (running()) {
      server.kill('SIGKILL')
      await exited
    }
    await rm(dir, { recursive: true, force: true })
  })

  const deadline = Date.now() + 30_000
  let healthStatus = 0
  while (healthStatus !== 200 && running() && Date.now() < deadline) {
    try {
      healthStatus = (await fetch(`${base}/health`, { signal: AbortSignal.timeout(2000) })).status
    } catch {
      await sleep(100)
    }
  }
  t.equal(healthStatus, 200, 'the server answers GET /health with 200', { stderr, stdout })
  if (healthStatus !== 200) return
  t.ok(existsSync(join(dir, CONTROL_SOCKET)), 'the running server listens on its control socket in DATA_DIR')

  const created = await runEntry('cli/index.ts', ['clients', 'create', '--name', 'demo', '--json'], { env: { DATA_DIR: dir } })
  t.equal(created.code, 0, 'the CLI creates a client while the server runs', { stderr: created.stderr })
  if (created.code !== 0) return
  const client = JSON.parse(created.stdout) as { client_id: string, client_secret: string, name: string }
  t.equal(client.name, 'demo', 'the CLI prints the client it created')
  t.type(client.client_id, 'string', 'with its client_id')
  t.type(client.client_secret, 'string', 'and its secret')

  const tokenRes = await fetch(`${base}/oauth/token`, {
    method: 'POST',
    headers: { authorization: basicAuth(client.client_id, client.client_secret), 'content-type': 'application/x-www-form-urlencoded' },
    body: form({ grant_type: 'client_credentials' })
  })
  t.equal(tokenRes.status, 200, 'the running server issues a token to the client the CLI created')
  const body = await tokenRes.json() as TokenBody
  t.equal(body.token_type, 'Bearer', 'token_type Bearer')
  t.equal(decodeJwt(body.access_token).payload.sub, client.client_id, 'the access token names the client')

  server.kill('SIGTERM')
  const exit = await Promise.race([exited, sleep(15_000).then(() => undefined)])
  t.strictSame(exit, { code: 0, signal: null }, 'exit code 0 after SIGTERM', { stderr })
  t.equal(stderr, '', 'nothing on stderr')
  t.notOk(existsSync(join(dir, LOCK_FILE)), `the server gave back ${LOCK_FILE} on exit`)
})
