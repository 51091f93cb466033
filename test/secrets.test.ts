// Client secret checks: bcrypt on worker threads (or the main thread), and
// the in-process memory of verified secrets, which must never outlive a
// rotated or disabled secret.
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import bcrypt from 'bcryptjs'
import { basicAuth, build, insertClient, keysUnderPrefix, openTestRedis, sql, tokenRequest, needs, injectAdmin } from './helper.ts'

const settings: Array<Record<string, string>> = [{}, { BCRYPT_WORKERS: '0' }, { BCRYPT_WORKERS: '2' }, { SECRET_CACHE_TTL: '0' }]
for (const env of settings) {
  test(`secrets are checked alike with ${JSON.stringify(env)}`, async (t) => {
    const { app, databaseUrl } = await build(t, { env })
    await insertClient(databaseUrl, { id: 'svc-secret', secret: 'right secret' })
    // Several at once: the pool serves them all, in any order.
    const answers = await Promise.all(['right secret', 'wrong secret', 'right secret', 'Right secret', 'right secret'].map(async (secret) =>
      (await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-secret', secret) })).statusCode))
    t.same(answers, [200, 401, 200, 401, 200])
    const unknown = await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-nobody', 'right secret') })
    t.equal(unknown.statusCode, 401)
  })
}

test('a rotated secret takes effect within CLIENT_CACHE_TTL although the old one was verified and remembered', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { CLIENT_CACHE_TTL: '1s', SECRET_CACHE_TTL: '1h' } })
  await insertClient(databaseUrl, { id: 'svc-rotate', secret: 'old secret' })
  const auth = (secret: string): Record<string, string> => ({ authorization: basicAuth('svc-rotate', secret) })
  t.equal((await tokenRequest(app, { grant_type: 'client_credentials' }, auth('old secret'))).statusCode, 200)
  t.equal((await tokenRequest(app, { grant_type: 'client_credentials' }, auth('old secret'))).statusCode, 200, 'remembered')

  await sql(databaseUrl, 'UPDATE clients SET client_secret_hash = $2 WHERE client_id = $1', ['svc-rotate', await bcrypt.hash('new secret', 10)])
  await sleep(1200)
  t.equal((await tokenRequest(app, { grant_type: 'client_credentials' }, auth('old secret'))).statusCode, 401, 'the old secret is refused')
  t.equal((await tokenRequest(app, { grant_type: 'client_credentials' }, auth('new secret'))).statusCode, 200, 'the new one works')

  // Rotating back to the old secret's hash is a new hash too (new salt): checked again, and it works.
  await sql(databaseUrl, 'UPDATE clients SET client_secret_hash = $2 WHERE client_id = $1', ['svc-rotate', await bcrypt.hash('old secret', 10)])
  await sleep(1200)
  t.equal((await tokenRequest(app, { grant_type: 'client_credentials' }, auth('new secret'))).statusCode, 401)
  t.equal((await tokenRequest(app, { grant_type: 'client_credentials' }, auth('old secret'))).statusCode, 200)
})

test('a disabled client is refused although its secret was remembered', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { CLIENT_CACHE_TTL: '1s' } })
  await insertClient(databaseUrl, { id: 'svc-off', secret: 'off secret' })
  const auth = { authorization: basicAuth('svc-off', 'off secret') }
  t.equal((await tokenRequest(app, { grant_type: 'client_credentials' }, auth)).statusCode, 200)
  await sql(databaseUrl, "UPDATE clients SET status = 'disabled' WHERE client_id = 'svc-off'")
  await sleep(1200)
  const res = await tokenRequest(app, { grant_type: 'client_credentials' }, auth)
  t.equal(res.statusCode, 400)
  t.equal(res.json().error, 'unauthorized_client')
})

test('nothing of a secret is written to Redis', { skip: needs.redis }, async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-redis', secret: 'a-secret-that-stays-in-process' })
  t.equal((await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-redis', 'a-secret-that-stays-in-process') })).statusCode, 200)
  const redis = await openTestRedis()
  t.teardown(async () => await redis.quit())
  // This test's keys only, by SCAN (on every master of a cluster): the shared
  // Redis may hold many others, and one KEYS over all of them can outlast the
  // client's command timeout.
  const keys = await keysUnderPrefix(redis, redisPrefix)
  t.ok(keys.length > 0, `the token request wrote keys (${keys.length})`)
  for (const key of keys) {
    const type = await redis.type(key)
    if (type !== 'string') continue
    const value = await redis.get(key) ?? ''
    t.notOk(value.includes('a-secret-that-stays-in-process'), `${key} holds no secret`)
  }
})

test('BCRYPT_WORKERS and SECRET_CACHE_TTL are validated', async (t) => {
  const { loadConfig } = await import('../plugins/config.ts')
  const { testEnv } = await import('./helper.ts')
  t.throws(() => loadConfig(testEnv('postgres://x/y', 'p:', { BCRYPT_WORKERS: '-1' })), /^BCRYPT_WORKERS/)
  t.throws(() => loadConfig(testEnv('postgres://x/y', 'p:', { SECRET_CACHE_TTL: 'soon' })), /^SECRET_CACHE_TTL/)
  t.equal(loadConfig(testEnv('postgres://x/y', 'p:', { SECRET_CACHE_TTL: '0' })).secretCacheTtl, 0)
})

test('concurrent requests with a secret not yet remembered share one bcrypt compare', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { RATE_LIMIT_DEFAULT: '1000' } })
  await insertClient(databaseUrl, { id: 'svc-burst', secret: 'burst-secret' })
  const compares = async (): Promise<number> => {
    const text = (await injectAdmin(app, '/metrics')).body
    const line = text.split('\n').find((candidate) => candidate.startsWith('session_service_bcrypt_compares_total '))
    return Number(line?.split(' ')[1])
  }
  const before = await compares()
  // As when a remembered secret expires under load: many requests at once.
  const answers = await Promise.all(Array.from({ length: 20 }, async () =>
    await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-burst', 'burst-secret') })))
  t.strictSame(answers.map((res) => res.statusCode), Array(20).fill(200), 'every request gets its tokens')
  t.equal(await compares() - before, 1, 'after one bcrypt compare between them, not twenty')
  await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-burst', 'burst-secret') })
  t.equal(await compares() - before, 1, 'and none for a later request: the secret is remembered')
})

test('a secret hashed below BCRYPT_COST is hashed again at that cost after its first success, and keeps working', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { BCRYPT_COST: '11' } })
  await insertClient(databaseUrl, { id: 'svc-cheap', secret: 'a cheaply hashed secret' })
  const storedHash = async (): Promise<string | undefined> =>
    (await sql<{ hash: string }>(databaseUrl, 'SELECT client_secret_hash AS hash FROM clients WHERE client_id = $1', ['svc-cheap']))[0]?.hash
  t.match(await storedHash(), /^\$2[aby]\$10\$/, 'inserted at cost 10')
  const auth = (secret: string): Record<string, string> => ({ authorization: basicAuth('svc-cheap', secret) })
  t.equal((await tokenRequest(app, { grant_type: 'client_credentials' }, auth('a wrong secret'))).statusCode, 401)
  t.match(await storedHash(), /^\$2[aby]\$10\$/, 'a failure changes nothing')
  t.equal((await tokenRequest(app, { grant_type: 'client_credentials' }, auth('a cheaply hashed secret'))).statusCode, 200)
  // In the background, after the answer: waited for, not timed.
  const deadline = Date.now() + 30_000
  while (!/^\$2[aby]\$11\$/.test(await storedHash() ?? '') && Date.now() < deadline) await sleep(100)
  t.match(await storedHash(), /^\$2[aby]\$11\$/, 'stored again at BCRYPT_COST')
  t.ok(await bcrypt.compare('a cheaply hashed secret', await storedHash() ?? ''), 'the new hash is of the same secret')
  t.equal((await tokenRequest(app, { grant_type: 'client_credentials' }, auth('a cheaply hashed secret'))).statusCode, 200, 'the secret still works')
  t.equal((await tokenRequest(app, { grant_type: 'client_credentials' }, auth('a wrong secret'))).statusCode, 401, 'and a wrong one still fails')
})
