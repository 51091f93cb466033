// The embedded mode (no DATABASE_URL, no REDIS_URL): the SQL store and the
// in-process rate limits of one app, what its log, /health, /ready and
// /metrics say of the mode, and the lock that keeps DATA_DIR to one opener.
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import tap, { test } from 'tap'
import Fastify, { type LightMyRequestResponse } from 'fastify'
import serviceApp, { options } from '../app.ts'
import { loadConfig } from '../plugins/config.ts'
import { LOCK_FILE, SIGNING_KEY_FILE } from '../storage/data-dir.ts'
import { freePort, runEntry, tokenRequest, injectAdmin } from './helper.ts'
import { type LogLine, INFO, WARN, logCollector, migratedDataDir, start, createClient, tokens } from './embedded/apps.ts'

// Each test opens the embedded PostgreSQL on a data directory of its own,
// which takes seconds on a busy machine even from a copy of the template.
tap.setTimeout(300_000)

test('one embedded app, no Redis: the SQL store and the in-process rate limits', async (t) => {
  const app = await start(t, await migratedDataDir(t))

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
  const dir = await migratedDataDir(t)
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
  const ready = await injectAdmin(app, '/ready')
  t.equal(ready.statusCode, 200, 'GET /ready: 200')
  t.strictSame(ready.json(), { status: 'ready' }, 'GET /ready: ready')
  const metrics = await injectAdmin(app, '/metrics')
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

test('the lock of DATA_DIR: a stale one is taken over, a live one refuses a second opener with one line, and it goes with the app', async (t) => {
  // Left by a process that no longer exists (beyond any pid_max).
  const dir = await migratedDataDir(t, { [LOCK_FILE]: '2147483646\n' })
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
