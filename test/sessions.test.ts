// Sessions: one client_credentials grant and every refresh from it share a
// sid. A used refresh token presented again by its owner is taken as theft
// (RFC 9700 §4.14.2) and revokes the whole session; so does revoking one of
// its refresh tokens (RFC 7009 §2.1). Revoking an access token denies only it.
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import type { Cluster, Redis } from 'ioredis'
import { revocationKeys } from '../storage/revocations.ts'
import { assertOAuthError, basicAuth, build, clusterRun, decodeJwt, form, FORM, insertClient, needs, openTestRedis, tokenRequest, verify } from './helper.ts'

// The key names of the run's Redis (a cluster's share a hash tag).
const revocationKey = revocationKeys(clusterRun)

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const DEFAULT_REVOCATION_TTL = 604800

interface TokenBody {
  access_token: string
  token_type: string
  expires_in: number
  refresh_token: string
}

/** Every client here has the secret `<id>-secret`. */
function secretOf (clientId: string): string {
  return `${clientId}-secret`
}

function basic (clientId: string): Record<string, string> {
  return { authorization: basicAuth(clientId, secretOf(clientId)) }
}

/** A successful token answer; returns its body. */
function assertTokens (t: Test, res: LightMyRequestResponse): TokenBody {
  t.equal(res.statusCode, 200, 'token request succeeds', { body: res.body })
  const body = res.json() as TokenBody
  t.equal(body.token_type, 'Bearer')
  t.type(body.access_token, 'string')
  t.type(body.refresh_token, 'string')
  return body
}

async function grant (t: Test, app: FastifyInstance, clientId: string): Promise<TokenBody> {
  return assertTokens(t, await tokenRequest(app, { grant_type: 'client_credentials' }, basic(clientId)))
}

async function refresh (app: FastifyInstance, clientId: string, refreshToken: string): Promise<LightMyRequestResponse> {
  return await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: refreshToken }, basic(clientId))
}

async function introspect (app: FastifyInstance, clientId: string, token: string): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/oauth/introspect', headers: { ...FORM, ...basic(clientId) }, payload: form({ token }) })
}

/** POST /oauth/revoke with client_secret_post. */
async function revoke (app: FastifyInstance, clientId: string, token: string): Promise<LightMyRequestResponse> {
  return await app.inject({
    method: 'POST',
    url: '/oauth/revoke',
    headers: FORM,
    payload: form({ token, client_id: clientId, client_secret: secretOf(clientId) })
  })
}

/** The sid claim the token carries, as /oauth/verify reports it. */
async function verifiedSid (t: Test, app: FastifyInstance, accessToken: string): Promise<unknown> {
  const res = await verify(app, accessToken)
  t.equal(res.statusCode, 200)
  t.equal(res.json().valid, true, 'the access token verifies', { body: res.body })
  return res.json().claims?.sid
}

async function assertValid (t: Test, app: FastifyInstance, accessToken: string, message: string): Promise<void> {
  const res = await verify(app, accessToken)
  t.equal(res.statusCode, 200)
  t.equal(res.json().valid, true, message, { body: res.body })
}

async function assertRevoked (t: Test, app: FastifyInstance, accessToken: string, message: string): Promise<void> {
  const res = await verify(app, accessToken)
  t.equal(res.statusCode, 200)
  t.strictSame(res.json(), { valid: false, error: 'revoked' }, message)
}

async function assertInactive (t: Test, app: FastifyInstance, clientId: string, token: string, message: string): Promise<void> {
  const res = await introspect(app, clientId, token)
  t.equal(res.statusCode, 200)
  t.strictSame(res.json(), { active: false }, message)
}

async function assertActive (t: Test, app: FastifyInstance, clientId: string, token: string, message: string): Promise<void> {
  const res = await introspect(app, clientId, token)
  t.equal(res.statusCode, 200)
  t.equal(res.json().active, true, message, { body: res.body })
}

function sidOf (accessToken: string): string {
  const sid = decodeJwt(accessToken).payload.sid
  if (typeof sid !== 'string') throw new Error(`no sid in ${accessToken}`)
  return sid
}

/** A Redis connection of the test's own, closed at teardown. */
async function openRedis (t: Test): Promise<Redis | Cluster> {
  const redis = await openTestRedis()
  t.teardown(async () => { await redis.quit() })
  return redis
}

/** client_credentials, then two refreshes: three generations of one session. */
async function threeGenerations (t: Test, app: FastifyInstance, clientId: string): Promise<[TokenBody, TokenBody, TokenBody]> {
  const first = await grant(t, app, clientId)
  const second = assertTokens(t, await refresh(app, clientId, first.refresh_token))
  const third = assertTokens(t, await refresh(app, clientId, second.refresh_token))
  return [first, second, third]
}

test('every token of a session carries one sid; each grant starts a new session', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-sid', secret: secretOf('svc-sid') })
  const [first, second, third] = await threeGenerations(t, app, 'svc-sid')

  const sid = await verifiedSid(t, app, first.access_token)
  t.type(sid, 'string')
  t.match(sid, UUID, 'the sid is a UUID')
  t.equal(await verifiedSid(t, app, second.access_token), sid, 'the first refresh keeps the sid')
  t.equal(await verifiedSid(t, app, third.access_token), sid, 'the second refresh keeps the sid')

  // The latest refresh token belongs to the same session.
  const refreshInfo = await introspect(app, 'svc-sid', third.refresh_token)
  t.equal(refreshInfo.json().active, true)
  t.equal(refreshInfo.json().sid, sid, 'the refresh token is in the session too')

  const other = await grant(t, app, 'svc-sid')
  const otherSid = await verifiedSid(t, app, other.access_token)
  t.match(otherSid, UUID)
  t.not(otherSid, sid, 'a second client_credentials grant starts another session')
})

test('a used refresh token presented again revokes its session, and only that session', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-reuse', secret: secretOf('svc-reuse') })
  const [first, second, third] = await threeGenerations(t, app, 'svc-reuse')
  const other = await grant(t, app, 'svc-reuse')

  // Before the replay everything of the session is in order, so what fails
  // below fails because of the replay.
  await assertValid(t, app, second.access_token, 'A2 verifies before the replay')
  await assertValid(t, app, third.access_token, 'A3 verifies before the replay')
  await assertActive(t, app, 'svc-reuse', third.refresh_token, 'R3 is active before the replay')

  assertOAuthError(t, await refresh(app, 'svc-reuse', first.refresh_token), 400, 'invalid_grant')

  assertOAuthError(t, await refresh(app, 'svc-reuse', third.refresh_token), 400, 'invalid_grant')
  await assertRevoked(t, app, first.access_token, 'the first access token is revoked')
  await assertRevoked(t, app, second.access_token, 'A2 is revoked')
  await assertRevoked(t, app, third.access_token, 'A3 is revoked')
  await assertInactive(t, app, 'svc-reuse', third.access_token, 'A3 introspects inactive')
  await assertInactive(t, app, 'svc-reuse', third.refresh_token, 'R3 introspects inactive')

  // The same client's other session goes on.
  await assertValid(t, app, other.access_token, 'the other session\'s access token still verifies')
  await assertActive(t, app, 'svc-reuse', other.refresh_token, 'the other session\'s refresh token is active')
  const next = assertTokens(t, await refresh(app, 'svc-reuse', other.refresh_token))
  await assertValid(t, app, next.access_token, 'the other session issues valid tokens')
  t.equal(sidOf(next.access_token), sidOf(other.access_token))
})

test('a revoked session is recorded under the prefix for max(JWT_EXPIRY, REFRESH_TOKEN_EXPIRY)', { skip: needs.redis }, async (t) => {
  const cases: Array<{ name: string, env: Record<string, string>, ttl: number }> = [
    { name: 'defaults', env: {}, ttl: DEFAULT_REVOCATION_TTL },
    { name: 'JWT_EXPIRY=2h REFRESH_TOKEN_EXPIRY=1h', env: { JWT_EXPIRY: '2h', REFRESH_TOKEN_EXPIRY: '1h' }, ttl: 7200 }
  ]
  for (const { name, env, ttl } of cases) {
    await t.test(name, async (t) => {
      const { app, databaseUrl, redisPrefix } = await build(t, { env })
      const redis = await openRedis(t)
      await insertClient(databaseUrl, { id: 'svc-ttl', secret: secretOf('svc-ttl') })
      const first = await grant(t, app, 'svc-ttl')
      assertTokens(t, await refresh(app, 'svc-ttl', first.refresh_token))
      const key = `${redisPrefix}${revocationKey.session(sidOf(first.access_token))}`
      t.equal(await redis.exists(key), 0, 'no record before the replay')

      assertOAuthError(t, await refresh(app, 'svc-ttl', first.refresh_token), 400, 'invalid_grant')
      t.equal(await redis.exists(key), 1, 'revoked-session:<sid> under the prefix')
      t.equal(await redis.exists(revocationKey.session(sidOf(first.access_token))), 0, 'nothing outside the prefix')
      const remaining = await redis.ttl(key)
      t.ok(remaining > ttl - 10 && remaining <= ttl, `TTL about ${ttl} s (is ${remaining})`)
    })
  }
})

test("another client presenting a client's used refresh token does not revoke the owner's session", { skip: needs.redis }, async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t)
  const redis = await openRedis(t)
  await insertClient(databaseUrl, { id: 'svc-owner', secret: secretOf('svc-owner') })
  await insertClient(databaseUrl, { id: 'svc-thief', secret: secretOf('svc-thief') })
  const first = await grant(t, app, 'svc-owner')
  const second = assertTokens(t, await refresh(app, 'svc-owner', first.refresh_token))

  assertOAuthError(t, await refresh(app, 'svc-thief', first.refresh_token), 400, 'invalid_grant')
  // The owner's unused token, presented by the other client, is refused too and left as it is.
  assertOAuthError(t, await refresh(app, 'svc-thief', second.refresh_token), 400, 'invalid_grant')

  t.equal(await redis.exists(`${redisPrefix}${revocationKey.session(sidOf(first.access_token))}`), 0, 'the session is not recorded as revoked')
  await assertValid(t, app, first.access_token, 'the first access token still verifies')
  await assertValid(t, app, second.access_token, 'the latest access token still verifies')
  const third = assertTokens(t, await refresh(app, 'svc-owner', second.refresh_token))
  await assertValid(t, app, third.access_token, 'the owner\'s session goes on')
})

test('revoking a refresh token revokes its session', { skip: needs.redis }, async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t)
  const redis = await openRedis(t)
  await insertClient(databaseUrl, { id: 'svc-revoke', secret: secretOf('svc-revoke') })
  const first = await grant(t, app, 'svc-revoke')
  const second = assertTokens(t, await refresh(app, 'svc-revoke', first.refresh_token))
  const other = await grant(t, app, 'svc-revoke')

  const res = await revoke(app, 'svc-revoke', second.refresh_token)
  t.equal(res.statusCode, 200)
  t.equal(res.body, '', 'empty body')

  assertOAuthError(t, await refresh(app, 'svc-revoke', second.refresh_token), 400, 'invalid_grant')
  await assertRevoked(t, app, first.access_token, 'the first access token of the session is revoked')
  await assertRevoked(t, app, second.access_token, 'the latest access token of the session is revoked')
  await assertInactive(t, app, 'svc-revoke', second.access_token, 'the latest access token introspects inactive')
  const key = `${redisPrefix}${revocationKey.session(sidOf(first.access_token))}`
  const remaining = await redis.ttl(key)
  t.ok(remaining > DEFAULT_REVOCATION_TTL - 10 && remaining <= DEFAULT_REVOCATION_TTL, `recorded for the longest token lifetime (${remaining} s)`)

  await assertValid(t, app, other.access_token, 'another session is untouched')
  assertTokens(t, await refresh(app, 'svc-revoke', other.refresh_token))
})

test('revoking an access token denies only that token', { skip: needs.redis }, async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t)
  const redis = await openRedis(t)
  await insertClient(databaseUrl, { id: 'svc-deny', secret: secretOf('svc-deny') })
  const first = await grant(t, app, 'svc-deny')
  const second = assertTokens(t, await refresh(app, 'svc-deny', first.refresh_token))

  const res = await revoke(app, 'svc-deny', first.access_token)
  t.equal(res.statusCode, 200)
  t.equal(res.body, '')

  await assertRevoked(t, app, first.access_token, 'the revoked access token is denied')
  await assertInactive(t, app, 'svc-deny', first.access_token, 'and introspects inactive')
  await assertValid(t, app, second.access_token, 'the other access token of the session stays valid')
  await assertActive(t, app, 'svc-deny', second.access_token, 'and active')
  t.equal(await redis.exists(`${redisPrefix}${revocationKey.session(sidOf(first.access_token))}`), 0, 'the session is not revoked')
  const third = assertTokens(t, await refresh(app, 'svc-deny', second.refresh_token))
  await assertValid(t, app, third.access_token, 'the refresh token still works')
  t.equal(sidOf(third.access_token), sidOf(first.access_token), 'in the same session')
})

// 3 s rather than 1 s: on a loaded machine the steps before the first verify
// took over a second, and the token had expired before it could be seen revoked.
test('with 3 s lifetimes the revocation record expires with the session', { skip: needs.redis }, async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t, { env: { JWT_EXPIRY: '3s', REFRESH_TOKEN_EXPIRY: '3s' } })
  const redis = await openRedis(t)
  await insertClient(databaseUrl, { id: 'svc-short', secret: secretOf('svc-short') })
  const first = await grant(t, app, 'svc-short')
  const second = assertTokens(t, await refresh(app, 'svc-short', first.refresh_token))
  assertOAuthError(t, await refresh(app, 'svc-short', first.refresh_token), 400, 'invalid_grant')

  const key = `${redisPrefix}${revocationKey.session(sidOf(first.access_token))}`
  const remaining = await redis.ttl(key)
  t.ok(remaining > 0 && remaining <= 3, `recorded for at most 3 s (TTL ${remaining})`)
  await assertRevoked(t, app, second.access_token, 'revoked while it lasts')

  await sleep(3500)
  t.equal(await redis.exists(key), 0, 'the record is gone')
  // Nothing of the session outlived the record: its tokens fail on their own.
  const expired = await verify(app, second.access_token)
  t.strictSame(expired.json(), { valid: false, error: 'expired' }, 'the access token has expired')
  assertOAuthError(t, await refresh(app, 'svc-short', second.refresh_token), 400, 'invalid_grant')
})

test('two instances sharing PostgreSQL and Redis: a replay on one revokes the session on the other', { skip: needs.postgres }, async (t) => {
  const one = await build(t)
  const two = await build(t, { databaseUrl: one.databaseUrl, redisPrefix: one.redisPrefix })
  await insertClient(one.databaseUrl, { id: 'svc-two', secret: secretOf('svc-two') })
  const first = await grant(t, one.app, 'svc-two')
  const second = assertTokens(t, await refresh(one.app, 'svc-two', first.refresh_token))
  await assertValid(t, two.app, second.access_token, 'instance two accepts tokens of instance one')

  assertOAuthError(t, await refresh(two.app, 'svc-two', first.refresh_token), 400, 'invalid_grant')

  await assertRevoked(t, one.app, first.access_token, 'instance one sees the first access token revoked')
  await assertRevoked(t, one.app, second.access_token, 'instance one sees the latest access token revoked')
  await assertInactive(t, one.app, 'svc-two', second.refresh_token, 'instance one sees the refresh token inactive')
  assertOAuthError(t, await refresh(one.app, 'svc-two', second.refresh_token), 400, 'invalid_grant')
})
