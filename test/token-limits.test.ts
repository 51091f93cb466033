// POST /oauth/token: the client cache lifetime, per-client rate limiting,
// and the answer to an unknown route.
import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import bcrypt from 'bcryptjs'
import { assertErrorBody, assertInvalidClient, assertOAuthError, basicAuth, build, decodeJwt, FORM, form, insertClient, needs, sql, tokenRequest } from './helper.ts'
import { CLIENT_CREDENTIALS } from './token/requests.ts'

test('CLIENT_CACHE_TTL: disabling a client by SQL takes effect after the TTL', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { CLIENT_CACHE_TTL: '1s' } })
  await insertClient(databaseUrl, { id: 'svc-to-disable', secret: 'secret' })
  const fields = { ...CLIENT_CREDENTIALS, client_id: 'svc-to-disable', client_secret: 'secret' }
  t.equal((await tokenRequest(app, fields)).statusCode, 200, 'enabled: 200 (record now cached)')
  await sql(databaseUrl, "UPDATE clients SET status = 'disabled' WHERE client_id = $1", ['svc-to-disable'])
  const meanwhile = await tokenRequest(app, fields)
  t.ok(meanwhile.statusCode === 200 || meanwhile.statusCode === 400, `right after the UPDATE: cached 200 or already 400 (${meanwhile.statusCode})`)
  await sleep(1200)
  assertOAuthError(t, await tokenRequest(app, fields), 400, 'unauthorized_client', 'after the TTL')
  assertInvalidClient(t, await tokenRequest(app, { ...fields, client_secret: 'wrong' }), 'after the TTL, wrong secret')
})

test('CLIENT_CACHE_TTL: a secret hash changed by SQL takes effect after the TTL', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { CLIENT_CACHE_TTL: '1s' } })
  await insertClient(databaseUrl, { id: 'svc-rotate', secret: 'old-secret' })
  const oldFields = { ...CLIENT_CREDENTIALS, client_id: 'svc-rotate', client_secret: 'old-secret' }
  const newFields = { ...CLIENT_CREDENTIALS, client_id: 'svc-rotate', client_secret: 'new-secret' }
  t.equal((await tokenRequest(app, oldFields)).statusCode, 200, 'old secret: 200 (record now cached)')
  const hash = await bcrypt.hash('new-secret', 10)
  await sql(databaseUrl, 'UPDATE clients SET client_secret_hash = $1 WHERE client_id = $2', [hash, 'svc-rotate'])
  const meanwhile = await tokenRequest(app, oldFields)
  t.ok(meanwhile.statusCode === 200 || meanwhile.statusCode === 401, `right after the UPDATE: cached 200 or already 401 (${meanwhile.statusCode})`)
  await sleep(1200)
  assertInvalidClient(t, await tokenRequest(app, oldFields), 'old secret after the TTL')
  const renewed = await tokenRequest(app, newFields)
  t.equal(renewed.statusCode, 200, 'new secret after the TTL: 200')
  t.equal(decodeJwt(renewed.json().access_token).payload.sub, 'svc-rotate')
})

test('rate limit: the client\'s rate_limit requests, then 429 with Retry-After', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-limited', secret: 'secret', rateLimit: 3 })
  const fields = { ...CLIENT_CREDENTIALS, client_id: 'svc-limited', client_secret: 'secret' }
  for (const remaining of ['2', '1', '0']) {
    const res = await tokenRequest(app, fields)
    t.equal(res.statusCode, 200, `200 with ${remaining} left`)
    t.equal(String(res.headers['x-ratelimit-limit']), '3', 'x-ratelimit-limit is the client\'s rate_limit')
    t.equal(String(res.headers['x-ratelimit-remaining']), remaining, 'x-ratelimit-remaining counts down')
    const reset = Number(res.headers['x-ratelimit-reset'])
    t.ok(Number.isInteger(reset) && reset >= 1 && reset <= 60, `x-ratelimit-reset within the minute (${String(res.headers['x-ratelimit-reset'])})`)
  }
  const limited = await tokenRequest(app, fields)
  assertOAuthError(t, limited, 429, 'rate_limit_exceeded', 'fourth request')
  const retryAfter = String(limited.headers['retry-after'])
  t.match(retryAfter, /^\d+$/, 'Retry-After is delay-seconds')
  t.ok(Number(retryAfter) >= 1 && Number(retryAfter) <= 60, `Retry-After within the minute (${retryAfter})`)
  t.equal(String(limited.headers['x-ratelimit-limit']), '3')
  t.equal(String(limited.headers['x-ratelimit-remaining']), '0')
  t.match(String(limited.headers['x-ratelimit-reset']), /^\d+$/)
  const viaBasic = await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: basicAuth('svc-limited', 'secret') })
  assertOAuthError(t, viaBasic, 429, 'rate_limit_exceeded', 'the limit is per client, whatever the auth method')
})

test('rate limit: a client with NULL rate_limit uses RATE_LIMIT_DEFAULT', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { RATE_LIMIT_DEFAULT: '2' } })
  await insertClient(databaseUrl, { id: 'svc-default-limit', secret: 'secret', rateLimit: null })
  const rows = await sql<{ rate_limit: number | null }>(databaseUrl, 'SELECT rate_limit FROM clients WHERE client_id = $1', ['svc-default-limit'])
  t.equal(rows[0]?.rate_limit, null, 'rate_limit column is NULL')
  const fields = { ...CLIENT_CREDENTIALS, client_id: 'svc-default-limit', client_secret: 'secret' }
  for (const remaining of ['1', '0']) {
    const res = await tokenRequest(app, fields)
    t.equal(res.statusCode, 200)
    t.equal(String(res.headers['x-ratelimit-limit']), '2', 'x-ratelimit-limit is RATE_LIMIT_DEFAULT')
    t.equal(String(res.headers['x-ratelimit-remaining']), remaining)
  }
  const limited = await tokenRequest(app, fields)
  assertOAuthError(t, limited, 429, 'rate_limit_exceeded', 'third request')
  t.match(String(limited.headers['retry-after']), /^\d+$/)
})

test('rate limit: the default RATE_LIMIT_DEFAULT is 60', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-sixty', secret: 'secret' })
  const res = await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-sixty', client_secret: 'secret' })
  t.equal(res.statusCode, 200)
  t.equal(String(res.headers['x-ratelimit-limit']), '60')
  t.equal(String(res.headers['x-ratelimit-remaining']), '59')
})

test('rate limit: one client\'s exhaustion does not affect another client', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-noisy', secret: 'secret', rateLimit: 1 })
  await insertClient(databaseUrl, { id: 'svc-quiet', secret: 'secret', rateLimit: 2 })
  const noisy = { ...CLIENT_CREDENTIALS, client_id: 'svc-noisy', client_secret: 'secret' }
  t.equal((await tokenRequest(app, noisy)).statusCode, 200)
  assertOAuthError(t, await tokenRequest(app, noisy), 429, 'rate_limit_exceeded', 'noisy client over its limit')
  const quiet = await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-quiet', client_secret: 'secret' })
  t.equal(quiet.statusCode, 200, 'the other client is served')
  t.equal(String(quiet.headers['x-ratelimit-limit']), '2')
  t.equal(String(quiet.headers['x-ratelimit-remaining']), '1', 'its own budget is untouched')
})

test('rate limit: two instances sharing the database and Redis prefix share the counter', { skip: needs.postgres || needs.redis }, async (t) => {
  const first = await build(t)
  const second = await build(t, { databaseUrl: first.databaseUrl, redisPrefix: first.redisPrefix })
  await insertClient(first.databaseUrl, { id: 'svc-shared', secret: 'secret', rateLimit: 3 })
  const fields = { ...CLIENT_CREDENTIALS, client_id: 'svc-shared', client_secret: 'secret' }
  t.equal((await tokenRequest(first.app, fields)).statusCode, 200, 'instance 1: first request')
  t.equal((await tokenRequest(first.app, fields)).statusCode, 200, 'instance 1: second request')
  const third = await tokenRequest(second.app, fields)
  t.equal(third.statusCode, 200, 'instance 2: third request')
  t.equal(String(third.headers['x-ratelimit-remaining']), '0', 'instance 2 sees the requests made on instance 1')
  assertOAuthError(t, await tokenRequest(second.app, fields), 429, 'rate_limit_exceeded', 'instance 2: fourth request')
  assertOAuthError(t, await tokenRequest(first.app, fields), 429, 'rate_limit_exceeded', 'instance 1: fifth request')

  // A third instance with a Redis prefix of its own counts separately.
  const separate = await build(t, { databaseUrl: first.databaseUrl })
  const own = await tokenRequest(separate.app, fields)
  t.equal(own.statusCode, 200, 'another Redis prefix: a counter of its own')
  t.equal(String(own.headers['x-ratelimit-remaining']), '2')
})

test('an unknown route is 404 not_found in JSON', async (t) => {
  const { app } = await build(t)
  const res = await app.inject({ method: 'GET', url: `/no-such-route/${randomUUID()}?x=1` })
  assertErrorBody(t, res, 404, 'not_found', 'GET unknown route')
  const post = await app.inject({ method: 'POST', url: '/oauth/tokens', headers: FORM, payload: form(CLIENT_CREDENTIALS) })
  assertErrorBody(t, post, 404, 'not_found', 'POST to a near-miss path')
})
