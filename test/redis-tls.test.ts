// Redis over TLS with an ACL user, as a managed Redis is run: a private
// redis-server that listens on a TLS port only (no plain port), with a
// certificate from a CA of this test, the default user switched off and a
// service user limited to the commands and keys the README lists. The whole
// token flow and the CLI's announcements go through it; a wrong password, an
// unknown user and an untrusted certificate stop the start at once, with one
// line naming REDIS_URL that never shows the password.
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import {
  backends,
  basicAuth,
  build,
  createDatabase,
  form,
  FORM,
  freePort,
  generateRsaKeyPair,
  insertClient,
  issueTokens,
  runEntry,
  runnerEnv,
  PROJECT_DIR,
  tokenRequest,
  verify
} from './helper.ts'
import { makeTestCertificates, SERVICE_REDIS_COMMANDS } from './helpers/tls.ts'

const PASSWORD = `pw-${randomBytes(12).toString('hex')}`
const ADMIN_PASSWORD = `admin-${randomBytes(12).toString('hex')}`
const PREFIX = `ss-tls:${process.pid}:${randomBytes(4).toString('hex')}:`
const CLIENT = { id: 'svc-tls', secret: 'tls-secret' }

const dir = mkdtempSync(join(tmpdir(), 'ss-redis-tls-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))
const certificates = makeTestCertificates(dir)
const CA_FILE = certificates.caFile

/** An administrator's connection to the TLS server (no key prefix). */
function adminConnection (port: number, auth: { username?: string, password?: string } = { username: 'admin', password: ADMIN_PASSWORD }): Redis {
  return new Redis({
    host: '127.0.0.1',
    port,
    ...auth,
    tls: { ca: readFileSync(CA_FILE, 'utf8') },
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null
  })
}

/** A redis-server on a TLS port only, with the service user and an admin; stopped at teardown. */
async function startTlsRedis (): Promise<{ port: number, child: ChildProcess }> {
  const port = await freePort()
  const child = spawn('redis-server', [
    '--port', '0', '--bind', '127.0.0.1', '--tls-port', String(port),
    '--tls-cert-file', certificates.certFile, '--tls-key-file', certificates.keyFile, '--tls-ca-cert-file', CA_FILE,
    '--tls-auth-clients', 'no', '--save', '', '--appendonly', 'no', '--dir', dir, '--daemonize', 'no'
  ], { stdio: 'ignore' })
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = new Promise((resolve) => child.once('exit', resolve))
    child.kill('SIGTERM')
    await exited
  })
  // Until the ACL is set, the default user (no password) answers.
  const deadline = Date.now() + 10_000
  for (;;) {
    const redis = adminConnection(port, {})
    redis.on('error', () => {})
    try {
      await redis.connect()
      await redis.call('ACL', 'SETUSER', 'admin', 'on', `>${ADMIN_PASSWORD}`, '~*', '&*', '+@all')
      await redis.call('ACL', 'SETUSER', 'svc', 'on', `>${PASSWORD}`, 'resetkeys', `~${PREFIX}*`, 'resetchannels', `&${PREFIX}*`,
        '-@all', ...SERVICE_REDIS_COMMANDS.map((command) => `+${command}`))
      await redis.call('ACL', 'SETUSER', 'svc', '+client|setinfo').catch(() => {})
      await redis.call('AUTH', 'admin', ADMIN_PASSWORD)
      await redis.call('ACL', 'SETUSER', 'default', 'off')
      return { port, child }
    } catch (err) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`the TLS redis-server on port ${port} did not start (${(err as Error).message})`)
      await sleep(100)
    } finally {
      redis.disconnect()
    }
  }
}

const { port } = await startTlsRedis()
const serviceUrl = `rediss://svc:${PASSWORD}@127.0.0.1:${port}`

/** Runs fn with an administrator's connection. */
async function asAdmin<T> (fn: (redis: Redis) => Promise<T>): Promise<T> {
  const redis = adminConnection(port)
  redis.on('error', () => {})
  try {
    await redis.connect()
    return await fn(redis)
  } finally {
    redis.disconnect()
  }
}

/** Starting the app fails; returns the message and how long it took. */
/**
 * How long a start that succeeds takes here now, with the same Redis: a start
 * that stops at once on Redis's answer takes about as long, one that waited
 * for Redis (10 s) takes that much longer, whatever the machine's load.
 */
async function normalStartMs (t: Test): Promise<number> {
  const started = Date.now()
  await build(t, { redisPrefix: PREFIX, env: { LOG_LEVEL: 'silent', REDIS_URL: serviceUrl, REDIS_TLS_CA_FILE: CA_FILE } })
  return Date.now() - started
}

async function startFails (t: Test, env: Record<string, string>): Promise<{ message: string, ms: number }> {
  const started = Date.now()
  try {
    await build(t, { redisPrefix: PREFIX, env: { LOG_LEVEL: 'silent', ...env } })
  } catch (err) {
    return { message: (err as Error).message, ms: Date.now() - started }
  }
  t.fail('the app started')
  return { message: '', ms: Date.now() - started }
}

t.test('rediss:// with an ACL user and REDIS_TLS_CA_FILE: tokens are issued, refreshed and revoked through Redis over TLS', async (t) => {
  await asAdmin(async (redis) => await redis.call('ACL', 'LOG', 'RESET'))
  const { app, databaseUrl } = await build(t, { redisPrefix: PREFIX, env: { REDIS_URL: serviceUrl, REDIS_TLS_CA_FILE: CA_FILE } })
  await insertClient(databaseUrl, CLIENT)

  const auth = { authorization: basicAuth(CLIENT.id, CLIENT.secret) }
  const tokens = await issueTokens(app, CLIENT.id, CLIENT.secret)
  let res = await verify(app, tokens.access_token)
  t.equal(res.json().valid, true, 'the access token verifies', { body: res.body })
  res = await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token }, auth)
  t.equal(res.statusCode, 200, 'the refresh token is exchanged', { body: res.body })
  const refreshed = res.json()
  res = await app.inject({ method: 'POST', url: '/oauth/revoke', headers: { ...FORM, ...auth }, payload: form({ token: refreshed.access_token }) })
  t.equal(res.statusCode, 200, 'the new access token is revoked', { body: res.body })
  res = await verify(app, refreshed.access_token)
  t.same(res.json(), { valid: false, error: 'revoked' }, 'and verify says so')
  res = await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token }, auth)
  t.equal(res.json().error, 'invalid_grant', 'the used refresh token is refused', { body: res.body })
  res = await app.inject({ method: 'GET', url: '/health' })
  t.match(res.json(), { redis: { status: 'up' } }, '/health sees Redis up')

  const keys = await asAdmin(async (redis) => await redis.keys('*'))
  t.ok(keys.length > 0 && keys.every((key) => key.startsWith(PREFIX)), `what the service wrote is in Redis, under REDIS_KEY_PREFIX (${keys.join(' ')})`)
  // The TLS server has no plain port: every connection listed came over TLS.
  const clients = await asAdmin(async (redis) => String(await redis.call('CLIENT', 'LIST')))
  t.match(clients, /name=session-service .*user=svc/, 'the service is connected as the ACL user')
  t.match(clients, /name=session-service-sub .*user=svc/, 'and so is its subscriber, a duplicate of that connection')

  if (backends.postgres) {
    // The CLI connects with the same options: the instance forgets the
    // disabled client at once, where it would otherwise serve it from
    // memory for CLIENT_CACHE_TTL (30 s).
    const cli = await runEntry('cli/index.ts', ['clients', 'disable', CLIENT.id], {
      env: { DATABASE_URL: databaseUrl, REDIS_URL: serviceUrl, REDIS_TLS_CA_FILE: CA_FILE, REDIS_KEY_PREFIX: PREFIX },
      cwd: t.testdir({})
    })
    t.equal(cli.code, 0, 'clients disable succeeds', { stderr: cli.stderr })
    t.equal(cli.stderr, '', 'with no note about Redis')
    let refused = false
    for (let i = 0; i < 20 && !refused; i++) {
      res = await tokenRequest(app, { grant_type: 'client_credentials' }, auth)
      refused = res.statusCode === 400
      if (!refused) await sleep(50)
    }
    t.equal(res.json().error, 'unauthorized_client', 'the running instance refuses the disabled client within a second', { body: res.body })
  }

  const denied = await asAdmin(async (redis) => await redis.call('ACL', 'LOG'))
  t.same(denied, [], 'Redis refused nothing: the README\'s commands, keys and channels suffice')
})

t.test('a wrong password or an unknown ACL user stops the start at once with one line naming REDIS_URL, without the password', async (t) => {
  const cases = {
    'wrong password': `rediss://svc:not-${PASSWORD}@127.0.0.1:${port}`,
    'unknown user': `rediss://nobody:${PASSWORD}@127.0.0.1:${port}`
  }
  const reference = await normalStartMs(t)
  for (const [name, url] of Object.entries(cases)) {
    const { message, ms } = await startFails(t, { REDIS_URL: url, REDIS_TLS_CA_FILE: CA_FILE })
    t.match(message, /^REDIS_URL: [^\n]*WRONGPASS[^\n]*$/, `${name}: one line naming REDIS_URL, with Redis's answer (${message})`)
    t.notMatch(message, PASSWORD, `${name}: the password is not in it`)
    t.ok(ms < reference + 5000, `${name}: the start stopped after ${ms} ms (a start that succeeds: ${reference} ms), not after the 10 s wait for Redis`)
  }
})

t.test('a certificate that does not chain to the CA given stops the start at once', async (t) => {
  const cases = {
    'no REDIS_TLS_CA_FILE (public CAs only)': {},
    'REDIS_TLS_CA_FILE of another CA': { REDIS_TLS_CA_FILE: certificates.otherCaFile }
  }
  const reference = await normalStartMs(t)
  for (const [name, env] of Object.entries(cases)) {
    const { message, ms } = await startFails(t, { REDIS_URL: serviceUrl, ...env })
    t.match(message, /^REDIS_URL: [^\n]*certificate[^\n]*$/, `${name}: one line naming REDIS_URL and the certificate (${message})`)
    t.notMatch(message, PASSWORD, `${name}: the password is not in it`)
    t.ok(ms < reference + 5000, `${name}: the start stopped after ${ms} ms (a start that succeeds: ${reference} ms), not after the 10 s wait for Redis`)
  }
})

t.test('REDIS_TLS_CA_FILE without a rediss:// REDIS_URL stops the start, naming REDIS_TLS_CA_FILE', async (t) => {
  const cases = {
    'redis://': `redis://svc:${PASSWORD}@127.0.0.1:${port}`,
    'no REDIS_URL': ''
  }
  for (const [name, url] of Object.entries(cases)) {
    const { message } = await startFails(t, { REDIS_URL: url, REDIS_TLS_CA_FILE: CA_FILE })
    t.match(message, /^REDIS_TLS_CA_FILE: [^\n]*rediss:\/\/[^\n]*$/, `${name}: one line naming REDIS_TLS_CA_FILE and rediss:// (${message})`)
    t.notMatch(message, PASSWORD, `${name}: the password is not in it`)
  }
})

t.test('the server process: a wrong password ends it with exit code 1 and one line on stderr, the password in neither output nor log', async (t) => {
  const databaseUrl = await createDatabase(t)
  const keys = generateRsaKeyPair()
  const wrong = `not-${PASSWORD}`
  const env = {
    ...(databaseUrl.startsWith('embedded:') ? { DATA_DIR: databaseUrl.slice('embedded:'.length) } : { DATABASE_URL: databaseUrl }),
    REDIS_URL: `rediss://svc:${wrong}@127.0.0.1:${port}`,
    REDIS_TLS_CA_FILE: CA_FILE,
    REDIS_KEY_PREFIX: PREFIX,
    JWT_PRIVATE_KEY: keys.privateKey,
    SERVER_HOST: '127.0.0.1',
    SERVER_PORT: String(await freePort()),
    LOG_LEVEL: 'info'
  }
  const res = await runEntry('server.ts', [], { env: { ...runnerEnv(), ...env }, cwd: PROJECT_DIR, timeoutMs: 40_000 })
  t.equal(res.code, 1, 'exit code 1')
  t.match(res.stderr, /^session-service: REDIS_URL: Redis refused the user name or password at start \(WRONGPASS [^\n]*\)\n$/, `one line on stderr (${res.stderr})`)
  t.notMatch(res.stdout + res.stderr, wrong, 'the password is neither on stderr nor in the log')
  t.notMatch(res.stdout + res.stderr, /^\s*at /m, 'no stack frames')
})
