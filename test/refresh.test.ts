// grant_type=refresh_token: rotation, client authentication (required and
// optional), ownership, concurrency, expiry, parameter errors and storage.
import { createHash } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { assertOAuthError, basicAuth, build, decodeJwt, FORM, insertClient, issueTokens, keysUnderPrefix, needs, openTestRedis, sql, tokenRequest, verify } from './helper.ts'

interface TokenBody {
  access_token: string
  token_type: string
  expires_in: number
  refresh_token: string
}

/** A successful token answer; returns its body. */
function assertTokens (t: Test, res: LightMyRequestResponse): TokenBody {
  t.equal(res.statusCode, 200, 'status 200', { body: res.body })
  const body = res.json() as TokenBody
  t.same(Object.keys(body).sort(), ['access_token', 'expires_in', 'refresh_token', 'token_type'])
  t.equal(body.token_type, 'Bearer')
  t.type(body.access_token, 'string')
  t.type(body.refresh_token, 'string')
  t.ok(body.refresh_token.length > 0, 'refresh token not empty')
  t.equal(res.headers['cache-control'], 'no-store')
  t.equal(res.headers.pragma, 'no-cache')
  return body
}

/** refresh_token grant with client_secret_post. */
async function refreshPost (app: FastifyInstance, refreshToken: string, clientId: string, secret: string): Promise<LightMyRequestResponse> {
  return await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: refreshToken, client_id: clientId, client_secret: secret })
}

/** refresh_token grant with client_secret_basic. */
async function refreshBasic (app: FastifyInstance, refreshToken: string, clientId: string, secret: string): Promise<LightMyRequestResponse> {
  return await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: refreshToken }, { authorization: basicAuth(clientId, secret) })
}

function sha256Base64url (value: string): string {
  return createHash('sha256').update(value).digest('base64url')
}

/** Every key under a prefix with its value(s) flattened to strings. */
async function dumpPrefix (prefix: string): Promise<Array<{ key: string, values: string[] }>> {
  const redis = await openTestRedis()
  try {
    const keys = await keysUnderPrefix(redis, prefix)
    const entries: Array<{ key: string, values: string[] }> = []
    for (const key of keys) {
      const type = await redis.type(key)
      let values: string[]
      switch (type) {
        case 'string': values = [(await redis.get(key)) ?? '']; break
        case 'hash': values = Object.entries(await redis.hgetall(key)).flat(); break
        case 'list': values = await redis.lrange(key, 0, -1); break
        case 'set': values = await redis.smembers(key); break
        case 'zset': values = await redis.zrange(key, '0', '-1'); break
        case 'none': continue // expired between SCAN and TYPE
        default: throw new Error(`unexpected Redis type ${type} for ${key}`)
      }
      entries.push({ key, values })
    }
    return entries
  } finally {
    await redis.quit()
  }
}

test('rotation: each refresh returns new tokens, the previous refresh token fails at once', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-rotate', secret: 'rotate-secret' })
  const first = await issueTokens(app, 'svc-rotate', 'rotate-secret')

  // client_secret_post
  const second = assertTokens(t, await refreshPost(app, first.refresh_token, 'svc-rotate', 'rotate-secret'))
  t.not(second.access_token, first.access_token, 'new access token')
  t.not(second.refresh_token, first.refresh_token, 'new refresh token')
  t.equal(second.expires_in, 3600)

  // The new refresh token works, with client_secret_basic this time.
  const third = assertTokens(t, await refreshBasic(app, second.refresh_token, 'svc-rotate', 'rotate-secret'))
  t.not(third.access_token, second.access_token)
  t.not(third.refresh_token, second.refresh_token)
  t.not(third.refresh_token, first.refresh_token)

  // The latest one works.
  const fourth = assertTokens(t, await refreshPost(app, third.refresh_token, 'svc-rotate', 'rotate-secret'))

  // Used refresh tokens are dead, whichever auth method presents them; and
  // presenting one is taken as theft (RFC 9700 §4.14.2): the whole session,
  // the latest refresh token included, is revoked.
  assertOAuthError(t, await refreshPost(app, first.refresh_token, 'svc-rotate', 'rotate-secret'), 400, 'invalid_grant')
  assertOAuthError(t, await refreshBasic(app, second.refresh_token, 'svc-rotate', 'rotate-secret'), 400, 'invalid_grant')
  assertOAuthError(t, await refreshPost(app, fourth.refresh_token, 'svc-rotate', 'rotate-secret'), 400, 'invalid_grant')
})

test('a refreshed access token verifies and names the client', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-claims', secret: 'claims-secret' })
  const first = await issueTokens(app, 'svc-claims', 'claims-secret')
  const refreshed = assertTokens(t, await refreshBasic(app, first.refresh_token, 'svc-claims', 'claims-secret'))

  const res = await verify(app, refreshed.access_token)
  t.equal(res.statusCode, 200)
  const body = res.json()
  t.equal(body.valid, true)
  t.equal(body.claims.sub, 'svc-claims')
  t.equal(body.claims.client_id, 'svc-claims')
  t.equal(body.claims.iss, 'session-service')
  t.equal(body.claims.aud, 'api')
  t.equal(body.claims.exp - body.claims.iat, 3600)
  t.not(body.claims.jti, decodeJwt(first.access_token).payload.jti, 'a new jti')

  const { header } = decodeJwt(refreshed.access_token)
  t.equal(header.alg, 'RS256')
  t.equal(header.typ, 'at+jwt')
})

test('client authentication is required by default', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-auth', secret: 'auth-secret' })
  const tokens = await issueTokens(app, 'svc-auth', 'auth-secret')

  // No credentials at all.
  assertOAuthError(t, await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token }), 401, 'invalid_client')
  // client_id alone is no authentication.
  assertOAuthError(t, await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token, client_id: 'svc-auth' }), 401, 'invalid_client')
  // Wrong secret, both ways.
  assertOAuthError(t, await refreshPost(app, tokens.refresh_token, 'svc-auth', 'wrong-secret'), 401, 'invalid_client')
  assertOAuthError(t, await refreshBasic(app, tokens.refresh_token, 'svc-auth', 'wrong-secret'), 401, 'invalid_client')
  // Unknown client: same answer as a wrong secret.
  const unknown = await refreshPost(app, tokens.refresh_token, 'svc-nobody', 'auth-secret')
  assertOAuthError(t, unknown, 401, 'invalid_client')
  const wrong = await refreshPost(app, tokens.refresh_token, 'svc-auth', 'wrong-secret')
  t.same(unknown.json(), wrong.json(), 'unknown client and wrong secret answered alike')

  // The failed attempts did not consume the token.
  assertTokens(t, await refreshPost(app, tokens.refresh_token, 'svc-auth', 'auth-secret'))
})

test("another client presenting a client's refresh token gets invalid_grant, and the token survives", async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-a', secret: 'secret-a' })
  await insertClient(databaseUrl, { id: 'svc-b', secret: 'secret-b' })
  const a = await issueTokens(app, 'svc-a', 'secret-a')

  assertOAuthError(t, await refreshPost(app, a.refresh_token, 'svc-b', 'secret-b'), 400, 'invalid_grant')
  assertOAuthError(t, await refreshBasic(app, a.refresh_token, 'svc-b', 'secret-b'), 400, 'invalid_grant')

  const refreshed = assertTokens(t, await refreshPost(app, a.refresh_token, 'svc-a', 'secret-a'))
  const res = await verify(app, refreshed.access_token)
  t.equal(res.json().valid, true)
  t.equal(res.json().claims.sub, 'svc-a', 'the new tokens are still A\'s')
})

test('concurrent refreshes with one token: exactly one succeeds', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-race', secret: 'race-secret' })
  const tokens = await issueTokens(app, 'svc-race', 'race-secret')

  const N = 10
  const results = await Promise.all(Array.from({ length: N }, async (_, i) =>
    i % 2 === 0
      ? await refreshPost(app, tokens.refresh_token, 'svc-race', 'race-secret')
      : await refreshBasic(app, tokens.refresh_token, 'svc-race', 'race-secret')))

  const ok = results.filter((res) => res.statusCode === 200)
  const failed = results.filter((res) => res.statusCode !== 200)
  t.equal(ok.length, 1, 'exactly one 200')
  t.equal(failed.length, N - 1)
  for (const res of failed) assertOAuthError(t, res, 400, 'invalid_grant')

  // The losers presented a used token, which revokes the session (RFC 9700
  // §4.14.2): a client that races itself cannot tell itself from a thief.
  const winner = ok[0]
  if (winner === undefined) return
  assertOAuthError(t, await refreshPost(app, winner.json().refresh_token, 'svc-race', 'race-secret'), 400, 'invalid_grant')
  t.equal((await verify(app, winner.json().access_token)).json().error, 'revoked', 'its access token too')
})

test('concurrent refreshes across two instances sharing database and Redis: exactly one succeeds', { skip: needs.postgres }, async (t) => {
  const one = await build(t)
  const two = await build(t, { databaseUrl: one.databaseUrl, redisPrefix: one.redisPrefix })
  await insertClient(one.databaseUrl, { id: 'svc-race2', secret: 'race2-secret' })
  const tokens = await issueTokens(one.app, 'svc-race2', 'race2-secret')

  const N = 10
  const results = await Promise.all(Array.from({ length: N }, async (_, i) =>
    await refreshPost(i % 2 === 0 ? one.app : two.app, tokens.refresh_token, 'svc-race2', 'race2-secret')))

  const ok = results.filter((res) => res.statusCode === 200)
  t.equal(ok.length, 1, 'exactly one 200 over both instances')
  const failed = results.filter((res) => res.statusCode !== 200)
  t.equal(failed.length, N - 1)
  for (const res of failed) assertOAuthError(t, res, 400, 'invalid_grant')

  // The session is revoked on both instances.
  const winner = ok[0]
  if (winner === undefined) return
  assertOAuthError(t, await refreshPost(two.app, winner.json().refresh_token, 'svc-race2', 'race2-secret'), 400, 'invalid_grant')
  assertOAuthError(t, await refreshPost(one.app, winner.json().refresh_token, 'svc-race2', 'race2-secret'), 400, 'invalid_grant')

  // Without a race, a refresh token issued by one instance is honoured by the other.
  const fresh = await issueTokens(one.app, 'svc-race2', 'race2-secret')
  const next = assertTokens(t, await refreshPost(two.app, fresh.refresh_token, 'svc-race2', 'race2-secret'))
  assertTokens(t, await refreshPost(one.app, next.refresh_token, 'svc-race2', 'race2-secret'))
})

test('REFRESH_TOKEN_CLIENT_AUTH=optional', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { REFRESH_TOKEN_CLIENT_AUTH: 'optional' } })
  await insertClient(databaseUrl, { id: 'svc-opt', secret: 'opt-secret' })
  await insertClient(databaseUrl, { id: 'svc-other', secret: 'other-secret' })

  await t.test('no credentials: accepted, and rotation still applies', async (t) => {
    const tokens = await issueTokens(app, 'svc-opt', 'opt-secret')
    const refreshed = assertTokens(t, await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token }))
    t.not(refreshed.refresh_token, tokens.refresh_token)
    const res = await verify(app, refreshed.access_token)
    t.equal(res.json().valid, true)
    t.equal(res.json().claims.sub, 'svc-opt')
    assertTokens(t, await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: refreshed.refresh_token }))
    assertOAuthError(t, await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token }), 400, 'invalid_grant')
  })

  await t.test('client_id without secret matching the owner: accepted', async (t) => {
    const tokens = await issueTokens(app, 'svc-opt', 'opt-secret')
    assertTokens(t, await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token, client_id: 'svc-opt' }))
  })

  await t.test('client_id of another client: invalid_grant, token kept', async (t) => {
    const tokens = await issueTokens(app, 'svc-opt', 'opt-secret')
    assertOAuthError(t, await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token, client_id: 'svc-other' }), 400, 'invalid_grant')
    assertOAuthError(t, await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token, client_id: 'svc-unknown' }), 400, 'invalid_grant')
    assertTokens(t, await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token, client_id: 'svc-opt' }))
  })

  await t.test('credentials presented must be valid', async (t) => {
    const tokens = await issueTokens(app, 'svc-opt', 'opt-secret')
    assertOAuthError(t, await refreshPost(app, tokens.refresh_token, 'svc-opt', 'wrong-secret'), 401, 'invalid_client')
    assertOAuthError(t, await refreshBasic(app, tokens.refresh_token, 'svc-opt', 'wrong-secret'), 401, 'invalid_client')
    // Another client's valid credentials are not the owner's.
    assertOAuthError(t, await refreshPost(app, tokens.refresh_token, 'svc-other', 'other-secret'), 400, 'invalid_grant')
    // With correct credentials it works.
    assertTokens(t, await refreshBasic(app, tokens.refresh_token, 'svc-opt', 'opt-secret'))
  })

  await t.test('garbage token without credentials: invalid_grant', async (t) => {
    assertOAuthError(t, await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: 'not-a-real-refresh-token' }), 400, 'invalid_grant')
  })
})

test('REFRESH_TOKEN_CLIENT_AUTH=optional: a disabled owner gets unauthorized_client', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { REFRESH_TOKEN_CLIENT_AUTH: 'optional', CLIENT_CACHE_TTL: '1s' } })
  await insertClient(databaseUrl, { id: 'svc-off', secret: 'off-secret' })
  const tokens = await issueTokens(app, 'svc-off', 'off-secret')
  await sql(databaseUrl, "UPDATE clients SET status = 'disabled' WHERE client_id = $1", ['svc-off'])
  await sleep(1300) // past CLIENT_CACHE_TTL

  assertOAuthError(t, await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token }), 400, 'unauthorized_client')
  assertOAuthError(t, await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token, client_id: 'svc-off' }), 400, 'unauthorized_client')
  // With its (correct) secret: the secret is checked, then the status.
  assertOAuthError(t, await refreshPost(app, tokens.refresh_token, 'svc-off', 'off-secret'), 400, 'unauthorized_client')
  // A wrong secret is still an authentication failure first.
  assertOAuthError(t, await refreshPost(app, tokens.refresh_token, 'svc-off', 'wrong-secret'), 401, 'invalid_client')
})

test('a refresh token expires after REFRESH_TOKEN_EXPIRY', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { REFRESH_TOKEN_EXPIRY: '1s' } })
  await insertClient(databaseUrl, { id: 'svc-rexp', secret: 'rexp-secret' })
  const tokens = await issueTokens(app, 'svc-rexp', 'rexp-secret')
  await sleep(1500)
  assertOAuthError(t, await refreshPost(app, tokens.refresh_token, 'svc-rexp', 'rexp-secret'), 400, 'invalid_grant')
})

test('JWT_EXPIRY=1s: a refreshed access token lives one second, then verify says expired', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { JWT_EXPIRY: '1s' } })
  await insertClient(databaseUrl, { id: 'svc-jexp', secret: 'jexp-secret' })
  const first = await issueTokens(app, 'svc-jexp', 'jexp-secret')
  const refreshed = assertTokens(t, await refreshPost(app, first.refresh_token, 'svc-jexp', 'jexp-secret'))
  t.equal(refreshed.expires_in, 1)
  const { payload } = decodeJwt(refreshed.access_token)
  t.equal((payload.exp as number) - (payload.iat as number), 1, 'exp - iat == 1')

  await sleep(2100)
  const res = await verify(app, refreshed.access_token)
  t.equal(res.statusCode, 200)
  t.same(res.json(), { valid: false, error: 'expired' })
  // The refresh token (default lifetime) still works after the access token expired.
  assertTokens(t, await refreshPost(app, refreshed.refresh_token, 'svc-jexp', 'jexp-secret'))
})

test('malformed refresh requests', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-bad', secret: 'bad-secret' })
  const tokens = await issueTokens(app, 'svc-bad', 'bad-secret')
  const auth = { authorization: basicAuth('svc-bad', 'bad-secret') }

  assertOAuthError(t, await tokenRequest(app, { grant_type: 'refresh_token' }, auth), 400, 'invalid_request')
  assertOAuthError(t, await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: '' }, auth), 400, 'invalid_request')
  assertOAuthError(t, await tokenRequest(app, { grant_type: 'refresh_token', client_id: 'svc-bad', client_secret: 'bad-secret' }), 400, 'invalid_request')

  // Garbage tokens of various shapes.
  assertOAuthError(t, await refreshPost(app, 'garbage', 'svc-bad', 'bad-secret'), 400, 'invalid_grant')
  assertOAuthError(t, await refreshPost(app, tokens.access_token, 'svc-bad', 'bad-secret'), 400, 'invalid_grant')
  assertOAuthError(t, await refreshPost(app, tokens.refresh_token + 'x', 'svc-bad', 'bad-secret'), 400, 'invalid_grant')

  // Repeated refresh_token: refused as a whole, even with the real token twice.
  const repeated = await app.inject({
    method: 'POST',
    url: '/oauth/token',
    headers: { ...FORM, ...auth },
    payload: `grant_type=refresh_token&refresh_token=${encodeURIComponent(tokens.refresh_token)}&refresh_token=${encodeURIComponent(tokens.refresh_token)}`
  })
  assertOAuthError(t, repeated, 400, 'invalid_request')
  const mixed = await app.inject({
    method: 'POST',
    url: '/oauth/token',
    headers: { ...FORM, ...auth },
    payload: `grant_type=refresh_token&refresh_token=${encodeURIComponent(tokens.refresh_token)}&refresh_token=other`
  })
  assertOAuthError(t, mixed, 400, 'invalid_request')

  // None of that consumed the real token.
  assertTokens(t, await refreshBasic(app, tokens.refresh_token, 'svc-bad', 'bad-secret'))
})

test('refresh tokens are stored hashed in Redis, never in clear', { skip: needs.redis }, async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-store', secret: 'store-secret' })
  const first = await issueTokens(app, 'svc-store', 'store-secret')
  const second = assertTokens(t, await refreshPost(app, first.refresh_token, 'svc-store', 'store-secret'))

  const entries = await dumpPrefix(redisPrefix)
  t.ok(entries.length > 0, 'the app wrote keys under its prefix')
  for (const token of [first.refresh_token, second.refresh_token]) {
    const inKeys = entries.filter((entry) => entry.key.includes(token))
    const inValues = entries.filter((entry) => entry.values.some((value) => value.includes(token)))
    t.same(inKeys.map((entry) => entry.key), [], 'no key contains the refresh token')
    t.same(inValues.map((entry) => entry.key), [], 'no value contains the refresh token')
  }

  const keys = new Set(entries.map((entry) => entry.key))
  const keyOf = (token: string): string => `${redisPrefix}refresh:v2:${sha256Base64url(token)}`
  t.ok(keys.has(keyOf(second.refresh_token)), 'the live refresh token is stored under its SHA-256')
  // The used one stays, marked used, until it would have expired: that is how
  // its reuse is recognised (RFC 9700 §4.14.2). Its record (r) is sealed: a
  // MAC, a dot, then the record's JSON.
  const used = entries.find((entry) => entry.key === keyOf(first.refresh_token))
  const fields = Object.fromEntries((used?.values ?? []).flatMap((value, index, all) => index % 2 === 0 ? [[value, all[index + 1] ?? '']] : []))
  t.equal(fields.u, '1', 'the used refresh token is marked used')
  t.match(fields.r, /^[A-Za-z0-9_-]{43}\.\{/, 'its record is sealed')
  t.equal(JSON.parse(String(fields.r).slice(44)).client_id, 'svc-store')
  const refreshKeys = [...keys].filter((key) => key.startsWith(`${redisPrefix}refresh:`))
  t.equal(refreshKeys.length, 2, 'the live token and the used one')
  const redis = await openTestRedis()
  t.teardown(async () => await redis.quit())
  const ttl = await redis.ttl(keyOf(first.refresh_token))
  t.ok(ttl > 604700 && ttl <= 604800, 'the used record keeps the token\'s own expiry')
})
