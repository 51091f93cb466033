// Revocations outlive Redis: each is recorded in PostgreSQL too, and put
// back when Redis returns without its data (flushed, or restarted with no
// persistence). Runs against a Redis of its own, which it flushes and restarts.
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import { Redis } from 'ioredis'
import type { FastifyInstance } from 'fastify'
import {
  basicAuth,
  build,
  decodeJwt,
  form,
  FORM,
  freePort,
  insertClient,
  issueTokens,
  needs,
  PrivateRedis,
  sql,
  tokenRequest,
  verify,
  type IssuedTokens
} from './helper.ts'

const CLIENT = { id: 'svc-durable', secret: 'durable-secret' }

async function revoke (app: FastifyInstance, token: string): Promise<void> {
  const res = await app.inject({
    method: 'POST',
    url: '/oauth/revoke',
    headers: { ...FORM, authorization: basicAuth(CLIENT.id, CLIENT.secret) },
    payload: form({ token })
  })
  if (res.statusCode !== 200) throw new Error(`revoke answered ${res.statusCode} ${res.body}`)
}

/** What /oauth/verify says of a token, once the service answers (it may be reconnecting). */
async function verdict (app: FastifyInstance, token: string): Promise<unknown> {
  const deadline = Date.now() + 15_000
  for (;;) {
    const res = await verify(app, token)
    if (res.statusCode === 200) return res.json()
    if (res.statusCode !== 503 || Date.now() > deadline) throw new Error(`verify answered ${res.statusCode} ${res.body}`)
    await sleep(200)
  }
}

interface Scene {
  app: FastifyInstance
  databaseUrl: string
  redis: PrivateRedis
  /** its access token revoked */
  denied: IssuedTokens
  /** its refresh token revoked, and with it the session */
  revokedSession: IssuedTokens
  /** a used refresh token presented again: the session is revoked */
  replayed: IssuedTokens
  /** nothing revoked */
  untouched: IssuedTokens
}

/** `inMemory`: REVOCATIONS_IN_MEMORY_MAX (0: every check asks Redis, whose restore is then under test). */
async function scene (t: Test, inMemory = '1000000'): Promise<Scene> {
  const redis = new PrivateRedis(t, await freePort())
  await redis.start()
  const { app, databaseUrl } = await build(t, { env: { REDIS_URL: redis.url, DEPENDENCY_TIMEOUT: '1s', REVOCATIONS_IN_MEMORY_MAX: inMemory } })
  await insertClient(databaseUrl, CLIENT)
  const denied = await issueTokens(app, CLIENT.id, CLIENT.secret)
  const revokedSession = await issueTokens(app, CLIENT.id, CLIENT.secret)
  const replayed = await issueTokens(app, CLIENT.id, CLIENT.secret)
  const untouched = await issueTokens(app, CLIENT.id, CLIENT.secret)

  await revoke(app, denied.access_token)
  await revoke(app, revokedSession.refresh_token)
  const refreshed = await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: replayed.refresh_token, client_id: CLIENT.id, client_secret: CLIENT.secret })
  t.equal(refreshed.statusCode, 200, 'a first refresh succeeds')
  const replay = await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: replayed.refresh_token, client_id: CLIENT.id, client_secret: CLIENT.secret })
  t.equal(replay.json().error, 'invalid_grant', 'presenting the used refresh token again is refused, and revokes its session')
  return { app, databaseUrl, redis, denied, revokedSession, replayed, untouched }
}

async function assertRevocationsHold (t: Test, s: Scene, when: string): Promise<void> {
  t.same(await verdict(s.app, s.denied.access_token), { valid: false, error: 'revoked' }, `${when}: the revoked access token stays revoked`)
  t.same(await verdict(s.app, s.revokedSession.access_token), { valid: false, error: 'revoked' }, `${when}: the session revoked through its refresh token stays revoked`)
  t.same(await verdict(s.app, s.replayed.access_token), { valid: false, error: 'revoked' }, `${when}: the session revoked by reuse detection stays revoked`)
  t.match(await verdict(s.app, s.untouched.access_token), { valid: true }, `${when}: a token that was never revoked still verifies`)
}

test('each revocation is recorded in PostgreSQL until the tokens it covers expire', { skip: needs.redis || needs.postgres }, async (t) => {
  const s = await scene(t)
  const rows = await sql<{ kind: string, id: string, ttl: number }>(s.databaseUrl,
    'SELECT kind, id, extract(epoch FROM expires_at - now())::float8 AS ttl FROM revocations ORDER BY kind, id')
  const jti = decodeJwt(s.denied.access_token).payload.jti
  const sids = [s.revokedSession, s.replayed].map((tokens) => decodeJwt(tokens.access_token).payload.sid).sort()
  t.same(rows.map((row) => [row.kind, row.id]), [['access_token', jti], ...sids.map((sid) => ['session', sid])],
    'one row for the access token (by jti) and one per revoked session (by sid)')
  const accessTtl = rows.find((row) => row.kind === 'access_token')?.ttl ?? 0
  t.ok(accessTtl > 3500 && accessTtl <= 3600, `the access token's row lasts as long as the token (${Math.round(accessTtl)} s)`)
  for (const row of rows.filter((candidate) => candidate.kind === 'session')) {
    t.ok(row.ttl > 604_700 && row.ttl <= 604_800, `a session's row lasts as long as its last token could (${Math.round(row.ttl)} s)`)
  }
})

test('Redis flushed: the revocations are put back before any token is checked', { skip: needs.redis || needs.postgres }, async (t) => {
  const s = await scene(t, '0')
  await assertRevocationsHold(t, s, 'before')

  const admin = new Redis(s.redis.url)
  t.teardown(() => admin.disconnect())
  await admin.flushall()
  t.equal(await admin.dbsize(), 0, 'Redis is empty')

  await assertRevocationsHold(t, s, 'after FLUSHALL')
  t.ok(await admin.exists((await admin.keys('*:deny:*'))[0] ?? 'none') === 1, 'the deny-list entry is back in Redis')
  // The refresh tokens themselves were in Redis only: they are gone.
  const refresh = await tokenRequest(s.app, { grant_type: 'refresh_token', refresh_token: s.untouched.refresh_token, client_id: CLIENT.id, client_secret: CLIENT.secret })
  t.equal(refresh.json().error, 'invalid_grant', 'a refresh token lost with the data is invalid_grant, not a 500')
  const fresh = await issueTokens(s.app, CLIENT.id, CLIENT.secret)
  t.match(await verdict(s.app, fresh.access_token), { valid: true }, 'new tokens are issued and verify')
})

test('Redis restarted empty: the service reconnects by itself and the revocations hold', { skip: needs.redis || needs.postgres }, async (t) => {
  const s = await scene(t)
  await s.redis.stop()
  // The revocations in memory answer until the instance sees its
  // subscription gone (at once when the connection closes, within 1 s when
  // it hangs); then verify asks Redis.
  let down = await verify(s.app, s.untouched.access_token)
  for (const until = Date.now() + 3000; down.statusCode !== 503 && Date.now() < until; down = await verify(s.app, s.untouched.access_token)) await sleep(50)
  t.equal(down.statusCode, 503, 'while Redis is down, verify cannot check the deny-list: 503')
  t.equal(down.json().error, 'temporarily_unavailable')
  await s.redis.start()
  await assertRevocationsHold(t, s, 'after the restart')
})

test('with an append-only file, refresh tokens and revocations survive a Redis restart', { skip: needs.redis || needs.postgres }, async (t) => {
  const redis = new PrivateRedis(t, await freePort(), { persistIn: t.testdir({}) })
  await redis.start()
  const { app, databaseUrl } = await build(t, { env: { REDIS_URL: redis.url, DEPENDENCY_TIMEOUT: '1s' } })
  await insertClient(databaseUrl, CLIENT)
  const kept = await issueTokens(app, CLIENT.id, CLIENT.secret)
  const denied = await issueTokens(app, CLIENT.id, CLIENT.secret)
  await revoke(app, denied.access_token)

  // SIGTERM: Redis writes the append-only file out and stops; then it starts
  // again from that file.
  await redis.stop()
  await redis.start()

  const deadline = Date.now() + 15_000
  let refreshed = await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: kept.refresh_token, client_id: CLIENT.id, client_secret: CLIENT.secret })
  while (refreshed.statusCode === 503 && Date.now() < deadline) {
    await sleep(200)
    refreshed = await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: kept.refresh_token, client_id: CLIENT.id, client_secret: CLIENT.secret })
  }
  t.equal(refreshed.statusCode, 200, 'a refresh token issued before the restart is exchanged after it')
  t.same(await verdict(app, denied.access_token), { valid: false, error: 'revoked' }, 'a revocation made before the restart holds')
})
