// Each instance answers /oauth/verify and introspection from its own copy
// of the revocations: a revocation on one instance reaches the others within
// a second, no check costs a Redis call while the copy is current, and when
// the copy cannot vouch for itself (its subscription gone, or full) the
// checks go to Redis, so that nothing revoked is ever taken for valid.
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import { Redis } from 'ioredis'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { basicAuth, build, form, FORM, freePort, insertClient, issueTokens, needs, sample, scrapeMetrics, PrivateRedis, verify, TEST_REDIS_URL } from './helper.ts'
import { REVOCATION_NOTICES_CHANNEL } from '../storage/index.ts'

const CLIENT = { id: 'svc-memory', secret: 'memory-secret' }
const AUTH = { authorization: basicAuth(CLIENT.id, CLIENT.secret) }
const skip = needs.postgres || needs.redis

async function post (app: FastifyInstance, url: string, fields: Record<string, string>): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url, headers: { ...FORM, ...AUTH }, payload: form(fields) })
}

/** Counts the Redis calls the instance makes for requests. */
function redisCalls (app: FastifyInstance): { count: number } {
  const counter = { count: 0 }
  app.dependencyCalls.listen((call) => { if (call.dependency === 'redis') counter.count++ })
  return counter
}

/** Milliseconds until `app` says the token is revoked (polled every 10 ms), or undefined after `withinMs`. */
async function msUntilRevoked (app: FastifyInstance, token: string, withinMs: number): Promise<number | undefined> {
  const started = Date.now()
  while (Date.now() - started < withinMs) {
    if ((await verify(app, token)).json().valid === false) return Date.now() - started
    await sleep(10)
  }
  return undefined
}

async function waitUntilCurrent (app: FastifyInstance, current: boolean): Promise<boolean> {
  for (const until = Date.now() + 10_000; Date.now() < until; await sleep(50)) {
    if (app.store.revocationsInMemory()?.current === current) return true
  }
  return false
}

test('a revocation on one instance reaches the other within 1 s, and verify costs no Redis call', { skip }, async (t) => {
  const one = await build(t)
  const two = await build(t, { databaseUrl: one.databaseUrl, redisPrefix: one.redisPrefix })
  await insertClient(one.databaseUrl, CLIENT)
  t.ok(await waitUntilCurrent(two.app, true), 'the second instance holds the revocations in memory')

  const tokens = await issueTokens(one.app, CLIENT.id, CLIENT.secret)
  const calls = redisCalls(two.app)
  for (let i = 0; i < 20; i++) t.equal((await verify(two.app, tokens.access_token)).json().valid, true)
  t.equal(calls.count, 0, 'twenty verifications on the second instance made no Redis call')

  for (const [what, token] of [['access token', tokens.access_token], ['session (by its refresh token)', tokens.refresh_token]] as const) {
    const issued = token === tokens.access_token ? tokens : await issueTokens(one.app, CLIENT.id, CLIENT.secret)
    const revoked = await post(one.app, '/oauth/revoke', { token: token === tokens.access_token ? issued.access_token : issued.refresh_token })
    t.equal(revoked.statusCode, 200, `${what}: revoked on the first instance`)
    calls.count = 0
    const ms = await msUntilRevoked(two.app, issued.access_token, 1000)
    t.ok(ms !== undefined, `${what}: the second instance says revoked within 1 s (${ms ?? 'never'} ms)`)
    t.equal(calls.count, 0, `${what}: its verifications made no Redis call`)
    t.same((await post(two.app, '/oauth/introspect', { token: issued.access_token })).json(), { active: false }, `${what}: inactive at the second`)
  }
})

test('a notice that no instance sealed revokes nothing', { skip }, async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t)
  await insertClient(databaseUrl, CLIENT)
  t.ok(await waitUntilCurrent(app, true))
  const tokens = await issueTokens(app, CLIENT.id, CLIENT.secret)
  const jti = JSON.parse(Buffer.from(tokens.access_token.split('.')[1] ?? '', 'base64url').toString()).jti as string
  const forger = new Redis(TEST_REDIS_URL)
  t.teardown(() => forger.disconnect())
  const channel = `${redisPrefix}${REVOCATION_NOTICES_CHANNEL}`
  const exp = Math.floor(Date.now() / 1000) + 3600
  for (const notice of [JSON.stringify(['a', jti, exp]), `AAAA.${JSON.stringify(['a', jti, exp])}`]) await forger.publish(channel, notice)
  await sleep(300)
  t.equal((await verify(app, tokens.access_token)).json().valid, true, 'forged notices are ignored')
  t.equal(app.store.revocationsInMemory()?.current, true, 'and the copy still answers')
})

test('the subscription lost: checks go to Redis, revocations made meanwhile hold, and the copy comes back', { skip }, async (t) => {
  const redis = new PrivateRedis(t, await freePort())
  await redis.start()
  const env = { REDIS_URL: redis.url }
  const one = await build(t, { env })
  const two = await build(t, { env, databaseUrl: one.databaseUrl, redisPrefix: one.redisPrefix })
  await insertClient(one.databaseUrl, CLIENT)
  t.ok(await waitUntilCurrent(two.app, true))
  const admin = new Redis(redis.url)
  t.teardown(() => admin.disconnect())

  // Every subscriber connection is dropped, the second instance's included;
  // a revocation made at once is announced to nobody.
  const tokens = await issueTokens(one.app, CLIENT.id, CLIENT.secret)
  await admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub')
  t.equal((await post(one.app, '/oauth/revoke', { token: tokens.access_token })).statusCode, 200, 'revoked while the subscriptions reconnect')
  const ms = await msUntilRevoked(two.app, tokens.access_token, 1000)
  t.ok(ms !== undefined, `the second instance says revoked all the same, within 1 s (${ms ?? 'never'} ms)`)

  t.ok(await waitUntilCurrent(two.app, true), 'the copy answers again once the subscription is back')
  const calls = redisCalls(two.app)
  t.same((await verify(two.app, tokens.access_token)).json(), { valid: false, error: 'revoked' }, 'from memory, reloaded: still revoked')
  t.equal(calls.count, 0, 'without a Redis call')
})

test('memory is bounded: beyond REVOCATIONS_IN_MEMORY_MAX the checks go to Redis, and revoked stays revoked', { skip }, async (t) => {
  const { app, databaseUrl } = await build(t, { env: { REVOCATIONS_IN_MEMORY_MAX: '2' } })
  await insertClient(databaseUrl, CLIENT)
  t.ok(await waitUntilCurrent(app, true))
  const issued = await Promise.all([1, 2, 3].map(async () => await issueTokens(app, CLIENT.id, CLIENT.secret)))
  for (const tokens of issued) t.equal((await post(app, '/oauth/revoke', { token: tokens.access_token })).statusCode, 200)
  t.match(app.store.revocationsInMemory(), { entries: 2, current: false }, 'two held, the copy no longer answers')
  const metrics = await scrapeMetrics(app)
  t.equal(sample(metrics, 'session_service_revocations_in_memory'), 2, 'the metrics say so')
  t.equal(sample(metrics, 'session_service_revocations_in_memory_current'), 0)
  const calls = redisCalls(app)
  for (const tokens of issued) t.same((await verify(app, tokens.access_token)).json(), { valid: false, error: 'revoked' })
  t.ok(calls.count >= 3, 'each check asked Redis')
})

test('REVOCATIONS_IN_MEMORY_MAX=0: no copy, every check asks Redis', { skip }, async (t) => {
  const { app, databaseUrl } = await build(t, { env: { REVOCATIONS_IN_MEMORY_MAX: '0' } })
  await insertClient(databaseUrl, CLIENT)
  t.equal(app.store.revocationsInMemory(), undefined)
  const tokens = await issueTokens(app, CLIENT.id, CLIENT.secret)
  const calls = redisCalls(app)
  t.equal((await verify(app, tokens.access_token)).json().valid, true)
  t.equal(calls.count, 1, 'one Redis call for one verification')
})
