// POST /oauth/revoke (RFC 7009): access tokens go on the deny-list until
// their expiry, refresh tokens are deleted; only the owner may revoke.
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import type { Cluster, Redis } from 'ioredis'
import { revocationKeys } from '../storage/revocations.ts'
import { assertOAuthError, backends, basicAuth, build, clusterRun, decodeJwt, form, FORM, insertClient, issueTokens, openTestRedis, sql, tokenRequest, verify } from './helper.ts'

// The key names of the run's Redis (a cluster's share a hash tag).
const revocationKey = revocationKeys(clusterRun)

/** POST /oauth/revoke with a form body and optional extra headers. */
async function revoke (app: FastifyInstance, fields: Record<string, string>, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/oauth/revoke', headers: { ...FORM, ...headers }, payload: form(fields) })
}

/** Revocation with client_secret_post. */
async function revokePost (app: FastifyInstance, token: string, clientId: string, secret: string, hint?: string): Promise<LightMyRequestResponse> {
  return await revoke(app, { token, client_id: clientId, client_secret: secret, ...(hint === undefined ? {} : { token_type_hint: hint }) })
}

/** Revocation with client_secret_basic. */
async function revokeBasic (app: FastifyInstance, token: string, clientId: string, secret: string, hint?: string): Promise<LightMyRequestResponse> {
  return await revoke(app, { token, ...(hint === undefined ? {} : { token_type_hint: hint }) }, { authorization: basicAuth(clientId, secret) })
}

/** 200 with an empty body and no-store. */
function assertRevoked (t: Test, res: LightMyRequestResponse): void {
  t.equal(res.statusCode, 200, 'status 200', { body: res.body })
  t.equal(res.body, '', 'empty body')
  t.equal(res.headers['cache-control'], 'no-store')
}

async function assertVerifies (t: Test, app: FastifyInstance, token: string, sub: string): Promise<void> {
  const res = await verify(app, token)
  t.equal(res.statusCode, 200)
  t.equal(res.json().valid, true, 'the access token still verifies', { body: res.body })
  t.equal(res.json().claims?.sub, sub)
}

async function assertVerifyRevoked (t: Test, app: FastifyInstance, token: string): Promise<void> {
  const res = await verify(app, token)
  t.equal(res.statusCode, 200)
  t.same(res.json(), { valid: false, error: 'revoked' })
}

async function refreshPost (app: FastifyInstance, refreshToken: string, clientId: string, secret: string): Promise<LightMyRequestResponse> {
  return await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: refreshToken, client_id: clientId, client_secret: secret })
}

/**
 * Milliseconds left on the deny-list entry of an access token (-2: none), from
 * Redis or, without a Redis server, from the database's revocations table.
 */
async function denyEntryPttl (databaseUrl: string, redisPrefix: string, jti: string): Promise<number> {
  if (backends.redis) return await withRedis(async (redis) => await redis.pttl(`${redisPrefix}${revocationKey.deny(jti)}`))
  const rows = await sql<{ ms: number }>(databaseUrl, `SELECT floor(extract(epoch FROM expires_at - now()) * 1000)::float8 AS ms
    FROM revocations WHERE kind = 'access_token' AND id = $1 AND expires_at > now()`, [jti])
  return rows[0]?.ms ?? -2
}

/** Runs fn with a Redis connection of its own (no key prefix). */
async function withRedis<T> (fn: (redis: Redis | Cluster) => Promise<T>): Promise<T> {
  const redis = await openTestRedis()
  try {
    return await fn(redis)
  } finally {
    await redis.quit()
  }
}

function jtiOf (token: string): string {
  const jti = decodeJwt(token).payload.jti
  if (typeof jti !== 'string') throw new Error('token without jti')
  return jti
}

function expOf (token: string): number {
  const exp = decodeJwt(token).payload.exp
  if (typeof exp !== 'number') throw new Error('token without exp')
  return exp
}

test('revoking an access token: every auth method and hint, verify then says revoked', async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-rev', secret: 'rev-secret' })

  const cases: Array<{ name: string, send: (token: string) => Promise<LightMyRequestResponse> }> = [
    { name: 'post, no hint', send: async (token) => await revokePost(app, token, 'svc-rev', 'rev-secret') },
    { name: 'basic, no hint', send: async (token) => await revokeBasic(app, token, 'svc-rev', 'rev-secret') },
    { name: 'post, hint access_token', send: async (token) => await revokePost(app, token, 'svc-rev', 'rev-secret', 'access_token') },
    { name: 'basic, hint access_token', send: async (token) => await revokeBasic(app, token, 'svc-rev', 'rev-secret', 'access_token') },
    // RFC 7009 §2.1: a wrong hint only costs a longer search.
    { name: 'basic, wrong hint refresh_token', send: async (token) => await revokeBasic(app, token, 'svc-rev', 'rev-secret', 'refresh_token') }
  ]
  for (const { name, send } of cases) {
    await t.test(name, async (t) => {
      const tokens = await issueTokens(app, 'svc-rev', 'rev-secret')
      await assertVerifies(t, app, tokens.access_token, 'svc-rev')
      assertRevoked(t, await send(tokens.access_token))
      await assertVerifyRevoked(t, app, tokens.access_token)

      // The deny-list entry lasts no longer than the token could.
      const now = Date.now()
      const pttl = await denyEntryPttl(databaseUrl, redisPrefix, jtiOf(tokens.access_token))
      const remaining = expOf(tokens.access_token) * 1000 - now
      t.ok(pttl > 0, `the deny-list entry exists and expires (PTTL ${pttl})`)
      t.ok(pttl <= remaining + 50, `PTTL ${pttl} ms is not longer than the remaining lifetime ${remaining} ms`)
      t.ok(pttl >= remaining - 10_000, `PTTL ${pttl} ms covers the remaining lifetime ${remaining} ms`)
    })
  }
})

test('the deny-list entry follows a short token lifetime', async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t, { env: { JWT_EXPIRY: '60s' } })
  await insertClient(databaseUrl, { id: 'svc-short', secret: 'short-secret' })
  const tokens = await issueTokens(app, 'svc-short', 'short-secret')
  assertRevoked(t, await revokePost(app, tokens.access_token, 'svc-short', 'short-secret'))
  const now = Date.now()
  const ttl = await denyEntryPttl(databaseUrl, redisPrefix, jtiOf(tokens.access_token))
  const remaining = expOf(tokens.access_token) * 1000 - now
  t.ok(ttl > 0, `entry exists with a TTL (${ttl})`)
  t.ok(ttl <= remaining + 50, `PTTL ${ttl} ms <= remaining ${remaining} ms`)
  t.ok(remaining <= 60_000, 'remaining lifetime within JWT_EXPIRY')
})

test('revoking one access token leaves the other tokens of the client alone', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-two', secret: 'two-secret' })
  const first = await issueTokens(app, 'svc-two', 'two-secret')
  const second = await issueTokens(app, 'svc-two', 'two-secret')
  assertRevoked(t, await revokePost(app, first.access_token, 'svc-two', 'two-secret'))
  await assertVerifyRevoked(t, app, first.access_token)
  await assertVerifies(t, app, second.access_token, 'svc-two')
  // Revoking an access token does not touch refresh tokens.
  const refreshed = await refreshPost(app, second.refresh_token, 'svc-two', 'two-secret')
  t.equal(refreshed.statusCode, 200, 'refresh still works', { body: refreshed.body })
})

test('revoking a refresh token: refreshing with it then fails', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-rrev', secret: 'rrev-secret' })

  for (const [name, send] of [
    ['post, no hint', async (token: string) => await revokePost(app, token, 'svc-rrev', 'rrev-secret')],
    ['basic, hint refresh_token', async (token: string) => await revokeBasic(app, token, 'svc-rrev', 'rrev-secret', 'refresh_token')],
    ['post, wrong hint access_token', async (token: string) => await revokePost(app, token, 'svc-rrev', 'rrev-secret', 'access_token')]
  ] as const) {
    await t.test(name, async (t) => {
      const tokens = await issueTokens(app, 'svc-rrev', 'rrev-secret')
      assertRevoked(t, await send(tokens.refresh_token))
      assertOAuthError(t, await refreshPost(app, tokens.refresh_token, 'svc-rrev', 'rrev-secret'), 400, 'invalid_grant')
      // Revoked again: nothing left, still 200.
      assertRevoked(t, await send(tokens.refresh_token))
    })
  }
})

test('tokens that are unknown, garbage or already revoked: 200', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-unk', secret: 'unk-secret' })
  const tokens = await issueTokens(app, 'svc-unk', 'unk-secret')

  // Shaped like a refresh token, but never issued.
  assertRevoked(t, await revokePost(app, randomBytes(32).toString('base64url'), 'svc-unk', 'unk-secret'))
  assertRevoked(t, await revokeBasic(app, randomBytes(32).toString('base64url'), 'svc-unk', 'unk-secret', 'refresh_token'))
  // Garbage of various shapes, including a three-part string that is no JWT.
  assertRevoked(t, await revokePost(app, 'garbage !!', 'svc-unk', 'unk-secret'))
  assertRevoked(t, await revokePost(app, 'a.b.c', 'svc-unk', 'unk-secret', 'access_token'))
  assertRevoked(t, await revokePost(app, tokens.access_token.slice(0, -4) + 'AAAA', 'svc-unk', 'unk-secret'))

  // None of that touched the real tokens.
  await assertVerifies(t, app, tokens.access_token, 'svc-unk')

  // Already revoked, access and refresh.
  assertRevoked(t, await revokePost(app, tokens.access_token, 'svc-unk', 'unk-secret'))
  assertRevoked(t, await revokePost(app, tokens.access_token, 'svc-unk', 'unk-secret'))
  await assertVerifyRevoked(t, app, tokens.access_token)
  assertRevoked(t, await revokeBasic(app, tokens.refresh_token, 'svc-unk', 'unk-secret'))
  assertRevoked(t, await revokeBasic(app, tokens.refresh_token, 'svc-unk', 'unk-secret'))
})

test('an expired access token of the same client: 200, nothing left on the deny-list', async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t, { env: { JWT_EXPIRY: '1s' } })
  await insertClient(databaseUrl, { id: 'svc-old', secret: 'old-secret' })
  const tokens = await issueTokens(app, 'svc-old', 'old-secret')
  await sleep(2100)
  t.same((await verify(app, tokens.access_token)).json(), { valid: false, error: 'expired' })

  assertRevoked(t, await revokePost(app, tokens.access_token, 'svc-old', 'old-secret'))
  assertRevoked(t, await revokeBasic(app, tokens.access_token, 'svc-old', 'old-secret', 'access_token'))
  const exists = await denyEntryPttl(databaseUrl, redisPrefix, jtiOf(tokens.access_token)) === -2 ? 0 : 1
  t.equal(exists, 0, 'no deny-list entry outlives the token')
})

test("another client's tokens: unauthorized_client, nothing revoked", async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-owner', secret: 'owner-secret' })
  await insertClient(databaseUrl, { id: 'svc-thief', secret: 'thief-secret' })
  const tokens = await issueTokens(app, 'svc-owner', 'owner-secret')

  assertOAuthError(t, await revokePost(app, tokens.access_token, 'svc-thief', 'thief-secret'), 400, 'unauthorized_client')
  assertOAuthError(t, await revokeBasic(app, tokens.access_token, 'svc-thief', 'thief-secret', 'access_token'), 400, 'unauthorized_client')
  await assertVerifies(t, app, tokens.access_token, 'svc-owner')

  assertOAuthError(t, await revokePost(app, tokens.refresh_token, 'svc-thief', 'thief-secret'), 400, 'unauthorized_client')
  assertOAuthError(t, await revokeBasic(app, tokens.refresh_token, 'svc-thief', 'thief-secret', 'refresh_token'), 400, 'unauthorized_client')
  const refreshed = await refreshPost(app, tokens.refresh_token, 'svc-owner', 'owner-secret')
  t.equal(refreshed.statusCode, 200, 'the owner can still refresh', { body: refreshed.body })
  t.not(refreshed.json().refresh_token, tokens.refresh_token)
})

test('client authentication and request errors', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-err', secret: 'err-secret' })
  const tokens = await issueTokens(app, 'svc-err', 'err-secret')

  // No client authentication.
  assertOAuthError(t, await revoke(app, { token: tokens.access_token }), 401, 'invalid_client')
  assertOAuthError(t, await revoke(app, { token: tokens.refresh_token, client_id: 'svc-err' }), 401, 'invalid_client')
  // Wrong secret, unknown client.
  assertOAuthError(t, await revokePost(app, tokens.access_token, 'svc-err', 'wrong-secret'), 401, 'invalid_client')
  assertOAuthError(t, await revokeBasic(app, tokens.access_token, 'svc-err', 'wrong-secret'), 401, 'invalid_client')
  assertOAuthError(t, await revokePost(app, tokens.access_token, 'svc-nobody', 'err-secret'), 401, 'invalid_client')
  // Another scheme than Basic.
  assertOAuthError(t, await revoke(app, { token: tokens.access_token }, { authorization: `Bearer ${tokens.access_token}` }), 401, 'invalid_client')
  // None of the refused requests revoked anything.
  await assertVerifies(t, app, tokens.access_token, 'svc-err')

  // Missing or empty token.
  assertOAuthError(t, await revoke(app, { client_id: 'svc-err', client_secret: 'err-secret' }), 400, 'invalid_request')
  assertOAuthError(t, await revoke(app, { token: '', client_id: 'svc-err', client_secret: 'err-secret' }), 400, 'invalid_request')
  assertOAuthError(t, await revoke(app, {}, { authorization: basicAuth('svc-err', 'err-secret') }), 400, 'invalid_request')

  // A JSON body is not accepted, even with everything in it.
  const json = await app.inject({
    method: 'POST',
    url: '/oauth/revoke',
    headers: { authorization: basicAuth('svc-err', 'err-secret') },
    payload: { token: tokens.access_token }
  })
  assertOAuthError(t, json, 400, 'invalid_request')
  await assertVerifies(t, app, tokens.access_token, 'svc-err')

  // A repeated token parameter.
  const repeated = await app.inject({
    method: 'POST',
    url: '/oauth/revoke',
    headers: { ...FORM, authorization: basicAuth('svc-err', 'err-secret') },
    payload: `token=${encodeURIComponent(tokens.access_token)}&token=other`
  })
  assertOAuthError(t, repeated, 400, 'invalid_request')
  await assertVerifies(t, app, tokens.access_token, 'svc-err')
})
