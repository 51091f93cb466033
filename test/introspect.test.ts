// POST /oauth/introspect (RFC 7662): a client learns the metadata of its own
// active tokens, and for anything else only {"active":false}, so that the
// endpoint tells nobody whether another client's token exists.
import { randomBytes, randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { assertOAuthError, basicAuth, build, decodeJwt, form, FORM, generateRsaKeyPair, insertClient, jwtSegment, signRs256, sql, testKeys, tokenRequest, verify } from './helper.ts'

const ORDERS = 'https://orders.example.com'

/** Has scopes (default: read) and a second audience. */
const SCOPED = 'svc-scoped'
/** Plain: no scopes, no audiences. */
const PLAIN = 'svc-plain'

const ACCESS_KEYS = ['active', 'aud', 'client_id', 'exp', 'iat', 'iss', 'jti', 'sid', 'sub', 'token_type']
const REFRESH_KEYS = ['active', 'aud', 'client_id', 'exp', 'iat', 'iss', 'sid', 'sub', 'token_type']

/** Another RSA key than the service's, for forged signatures. */
const attackerKeys = generateRsaKeyPair()

interface TokenBody {
  access_token: string
  token_type: string
  expires_in: number
  refresh_token: string
  scope?: string
}

function secretOf (clientId: string): string {
  return `${clientId}-secret`
}

function basic (clientId: string): Record<string, string> {
  return { authorization: basicAuth(clientId, secretOf(clientId)) }
}

/** Both clients, the scoped one configured before its first request (client records are cached). */
async function setup (t: Test, env: Record<string, string> = {}): Promise<FastifyInstance> {
  const { app, databaseUrl } = await build(t, { env })
  await insertClient(databaseUrl, { id: SCOPED, secret: secretOf(SCOPED) })
  await insertClient(databaseUrl, { id: PLAIN, secret: secretOf(PLAIN) })
  await sql(databaseUrl, 'UPDATE clients SET scopes = $2, default_scopes = $3, audiences = $4 WHERE client_id = $1',
    [SCOPED, ['read', 'write'], ['read'], [ORDERS]])
  return app
}

async function introspect (app: FastifyInstance, fields: Record<string, string>, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/oauth/introspect', headers: { ...FORM, ...headers }, payload: form(fields) })
}

/** Introspection with client_secret_basic; returns the body after checking status and headers. */
async function introspectAs (t: Test, app: FastifyInstance, clientId: string, token: string, hint?: string): Promise<Record<string, unknown>> {
  const res = await introspect(app, { token, ...(hint === undefined ? {} : { token_type_hint: hint }) }, basic(clientId))
  t.equal(res.statusCode, 200, 'introspection answers 200', { body: res.body })
  t.equal(res.headers['cache-control'], 'no-store')
  return res.json()
}

async function assertInactive (t: Test, app: FastifyInstance, clientId: string, token: string, message: string): Promise<void> {
  t.strictSame(await introspectAs(t, app, clientId, token), { active: false }, message)
}

async function assertActive (t: Test, app: FastifyInstance, clientId: string, token: string, message: string): Promise<void> {
  t.equal((await introspectAs(t, app, clientId, token)).active, true, message)
}

async function grant (t: Test, app: FastifyInstance, clientId: string, fields: Record<string, string> = {}): Promise<TokenBody> {
  const res = await tokenRequest(app, { grant_type: 'client_credentials', ...fields }, basic(clientId))
  t.equal(res.statusCode, 200, 'token request succeeds', { body: res.body })
  return res.json()
}

async function refresh (t: Test, app: FastifyInstance, clientId: string, refreshToken: string, fields: Record<string, string> = {}): Promise<TokenBody> {
  const res = await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: refreshToken, ...fields }, basic(clientId))
  t.equal(res.statusCode, 200, 'refresh succeeds', { body: res.body })
  return res.json()
}

test('an own access token: active, exactly the RFC 7662 members, the token\'s claims', async (t) => {
  const app = await setup(t)

  await t.test('client with scopes', async (t) => {
    const tokens = await grant(t, app, SCOPED)
    const { payload } = decodeJwt(tokens.access_token)
    const res = await introspect(app, { token: tokens.access_token }, basic(SCOPED))
    t.equal(res.statusCode, 200)
    t.match(res.headers['content-type'], /^application\/json/)
    t.equal(res.headers['cache-control'], 'no-store')
    t.equal(res.headers.pragma, 'no-cache')
    const body = res.json()
    t.strictSame(Object.keys(body).sort(), [...ACCESS_KEYS, 'scope'].sort(), 'exactly the access token members, with scope')
    t.strictSame(body, {
      active: true,
      token_type: 'Bearer',
      client_id: SCOPED,
      sub: payload.sub,
      iss: payload.iss,
      aud: payload.aud,
      exp: payload.exp,
      iat: payload.iat,
      jti: payload.jti,
      sid: payload.sid,
      scope: payload.scope
    })
    t.equal(body.scope, 'read', 'the default scope')
    t.equal(body.sub, SCOPED)
    t.equal(body.iss, 'session-service')
    t.equal(body.aud, 'api')
    t.equal(body.exp - body.iat, 3600)

    // The same facts /oauth/verify reports.
    const verified = (await verify(app, tokens.access_token)).json()
    t.equal(verified.valid, true)
    for (const name of ['sub', 'iss', 'aud', 'exp', 'iat', 'jti', 'sid', 'scope', 'client_id']) {
      t.equal(body[name], verified.claims[name], `${name} as /oauth/verify reports it`)
    }
  })

  await t.test('client without scopes: no scope member', async (t) => {
    const tokens = await grant(t, app, PLAIN)
    const { payload } = decodeJwt(tokens.access_token)
    const body = await introspectAs(t, app, PLAIN, tokens.access_token)
    t.strictSame(Object.keys(body).sort(), ACCESS_KEYS, 'exactly the access token members, without scope')
    t.equal(body.active, true)
    t.equal(body.token_type, 'Bearer')
    t.equal(body.client_id, PLAIN)
    t.equal(body.jti, payload.jti)
    t.equal(body.sid, payload.sid)
  })
})

test('an own refresh token: active, in the access token\'s session, without a jti', async (t) => {
  const app = await setup(t)

  await t.test('client with scopes', async (t) => {
    const tokens = await grant(t, app, SCOPED, { scope: 'read write' })
    const { payload } = decodeJwt(tokens.access_token)
    const body = await introspectAs(t, app, SCOPED, tokens.refresh_token)
    t.strictSame(Object.keys(body).sort(), [...REFRESH_KEYS, 'scope'].sort(), 'exactly the refresh token members, with scope')
    t.equal(body.active, true)
    t.equal(body.token_type, 'refresh_token')
    t.equal(body.client_id, SCOPED)
    t.equal(body.sub, SCOPED)
    t.equal(body.iss, 'session-service')
    t.equal(body.aud, payload.aud)
    t.equal(body.sid, payload.sid, 'the access token\'s sid')
    t.equal(body.scope, 'read write')
    t.type(body.iat, 'number')
    t.ok(Math.abs(Number(body.iat) - Number(payload.iat)) <= 1, 'issued with the access token')
    t.equal(Number(body.exp) - Number(body.iat), 604800, 'exp = iat + REFRESH_TOKEN_EXPIRY')
    t.notOk('jti' in body, 'no jti')

    // Introspection does not spend the token: the owner can still refresh,
    // narrowing the access token; the new refresh token keeps the session scope.
    const next = await refresh(t, app, SCOPED, tokens.refresh_token, { scope: 'read' })
    t.equal(decodeJwt(next.access_token).payload.scope, 'read')
    const nextBody = await introspectAs(t, app, SCOPED, next.refresh_token)
    t.equal(nextBody.scope, 'read write', 'the session scope')
    t.equal(nextBody.sid, payload.sid)
  })

  await t.test('client without scopes: no scope member', async (t) => {
    const tokens = await grant(t, app, PLAIN)
    const body = await introspectAs(t, app, PLAIN, tokens.refresh_token)
    t.strictSame(Object.keys(body).sort(), REFRESH_KEYS, 'exactly the refresh token members, without scope')
    t.equal(body.token_type, 'refresh_token')
    t.equal(body.sid, decodeJwt(tokens.access_token).payload.sid)
  })
})

test('a refresh token\'s exp follows REFRESH_TOKEN_EXPIRY', async (t) => {
  const app = await setup(t, { REFRESH_TOKEN_EXPIRY: '2h' })
  const tokens = await grant(t, app, PLAIN)
  const body = await introspectAs(t, app, PLAIN, tokens.refresh_token)
  t.equal(body.active, true)
  t.equal(Number(body.exp) - Number(body.iat), 7200)
})

test('another client\'s tokens are not active for the caller, and are left as they were', async (t) => {
  const app = await setup(t)
  const tokens = await grant(t, app, SCOPED)
  const before = await introspectAs(t, app, SCOPED, tokens.refresh_token)

  await assertInactive(t, app, PLAIN, tokens.access_token, 'another client\'s access token: exactly {active:false}')
  await assertInactive(t, app, PLAIN, tokens.refresh_token, 'another client\'s refresh token: exactly {active:false}')
  const post = await introspect(app, { token: tokens.refresh_token, client_id: PLAIN, client_secret: secretOf(PLAIN) })
  t.strictSame(post.json(), { active: false }, 'with client_secret_post too')

  t.strictSame(await introspectAs(t, app, SCOPED, tokens.refresh_token), before, 'the owner sees its refresh token unchanged')
  t.equal((await verify(app, tokens.access_token)).json().valid, true, 'the access token still verifies')
  const next = await refresh(t, app, SCOPED, tokens.refresh_token)
  await assertActive(t, app, SCOPED, next.access_token, 'the owner refreshed with it')
})

test('inactive: garbage and tokens signed by another key', async (t) => {
  const app = await setup(t)
  const tokens = await grant(t, app, SCOPED)
  const { header, payload } = decodeJwt(tokens.access_token)
  const [head, body] = tokens.access_token.split('.')

  const garbage = [
    'garbage',
    'a.b.c',
    '..',
    `${head ?? ''}.${body ?? ''}.`,
    `${jwtSegment({ alg: 'none', typ: 'at+jwt' })}.${jwtSegment(payload)}.`,
    randomBytes(32).toString('base64url'),
    // Longer than any token we issue, within the body limit.
    'x'.repeat(9000),
    `${'a'.repeat(3000)}.${'b'.repeat(3000)}.${'c'.repeat(3000)}`
  ]
  for (const token of garbage) {
    await assertInactive(t, app, SCOPED, token, `${token.slice(0, 24)}… is not active`)
  }

  // Built the same way with our own key the token is active, so the one
  // thing that makes the other inactive is its signature.
  const claims = { ...payload, jti: randomUUID() }
  await assertActive(t, app, SCOPED, signRs256(header, claims, testKeys.privateKey), 'control: our key, our claims')
  await assertInactive(t, app, SCOPED, signRs256(header, claims, attackerKeys.privateKey), 'signed by another key')
})

test('inactive: expired access and refresh tokens', async (t) => {
  // Three seconds: a loaded machine may take more than one between the grant and the first look.
  const app = await setup(t, { JWT_EXPIRY: '3s', REFRESH_TOKEN_EXPIRY: '3s' })
  const tokens = await grant(t, app, SCOPED)
  await assertActive(t, app, SCOPED, tokens.access_token, 'the access token is active at first')
  await assertActive(t, app, SCOPED, tokens.refresh_token, 'the refresh token is active at first')
  await sleep(3200)
  await assertInactive(t, app, SCOPED, tokens.access_token, 'the expired access token')
  await assertInactive(t, app, SCOPED, tokens.refresh_token, 'the expired refresh token')
})

test('inactive: revoked access tokens, used refresh tokens, revoked sessions', async (t) => {
  const app = await setup(t)

  await t.test('a revoked access token', async (t) => {
    const tokens = await grant(t, app, SCOPED)
    const sibling = await refresh(t, app, SCOPED, tokens.refresh_token)
    await assertActive(t, app, SCOPED, tokens.access_token, 'active before revocation')
    const res = await app.inject({ method: 'POST', url: '/oauth/revoke', headers: { ...FORM, ...basic(SCOPED) }, payload: form({ token: tokens.access_token }) })
    t.equal(res.statusCode, 200)
    await assertInactive(t, app, SCOPED, tokens.access_token, 'inactive after revocation')
    await assertActive(t, app, SCOPED, sibling.access_token, 'the session\'s other access token stays active')
  })

  await t.test('a used refresh token', async (t) => {
    const tokens = await grant(t, app, SCOPED)
    await assertActive(t, app, SCOPED, tokens.refresh_token, 'active before use')
    const next = await refresh(t, app, SCOPED, tokens.refresh_token)
    await assertInactive(t, app, SCOPED, tokens.refresh_token, 'inactive once used')
    await assertActive(t, app, SCOPED, next.refresh_token, 'its successor is active')
  })

  await t.test('the tokens of a session revoked by a replay', async (t) => {
    const tokens = await grant(t, app, SCOPED)
    const next = await refresh(t, app, SCOPED, tokens.refresh_token)
    const replay = await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token }, basic(SCOPED))
    assertOAuthError(t, replay, 400, 'invalid_grant')
    await assertInactive(t, app, SCOPED, next.access_token, 'the latest access token')
    await assertInactive(t, app, SCOPED, next.refresh_token, 'the latest refresh token')
  })

  await t.test('a revoked refresh token', async (t) => {
    const tokens = await grant(t, app, SCOPED)
    const res = await app.inject({ method: 'POST', url: '/oauth/revoke', headers: { ...FORM, ...basic(SCOPED) }, payload: form({ token: tokens.refresh_token }) })
    t.equal(res.statusCode, 200)
    await assertInactive(t, app, SCOPED, tokens.refresh_token, 'the refresh token')
    await assertInactive(t, app, SCOPED, tokens.access_token, 'its session\'s access token')
  })
})

test('a token for another of the client\'s audiences is active for its owner', async (t) => {
  const app = await setup(t)
  const tokens = await grant(t, app, SCOPED, { audience: ORDERS })
  t.equal(decodeJwt(tokens.access_token).payload.aud, ORDERS)
  // /oauth/verify without an audience expects JWT_AUDIENCE; introspection
  // answers the owner whatever audience of ours the token names.
  t.strictSame((await verify(app, tokens.access_token)).json(), { valid: false, error: 'invalid_audience' })

  const access = await introspectAs(t, app, SCOPED, tokens.access_token)
  t.equal(access.active, true)
  t.equal(access.aud, ORDERS)
  const refreshBody = await introspectAs(t, app, SCOPED, tokens.refresh_token)
  t.equal(refreshBody.active, true)
  t.equal(refreshBody.aud, ORDERS, 'the session\'s audience')
  await assertInactive(t, app, PLAIN, tokens.access_token, 'still nothing for another client')
})

test('client authentication is required', async (t) => {
  const app = await setup(t)
  const tokens = await grant(t, app, SCOPED)
  const token = tokens.access_token

  assertOAuthError(t, await introspect(app, { token }), 401, 'invalid_client')
  assertOAuthError(t, await introspect(app, { token }, { authorization: basicAuth(SCOPED, 'wrong-secret') }), 401, 'invalid_client')
  assertOAuthError(t, await introspect(app, { token, client_id: SCOPED, client_secret: 'wrong-secret' }), 401, 'invalid_client')
  assertOAuthError(t, await introspect(app, { token }, { authorization: basicAuth('svc-unknown', 'whatever') }), 401, 'invalid_client')
  assertOAuthError(t, await introspect(app, { token, client_id: SCOPED }), 401, 'invalid_client')
  // The token itself is no credential for introspection here.
  assertOAuthError(t, await introspect(app, { token }, { authorization: `Bearer ${token}` }), 401, 'invalid_client')

  const viaBasic = await introspect(app, { token }, basic(SCOPED))
  const viaPost = await introspect(app, { token, client_id: SCOPED, client_secret: secretOf(SCOPED) })
  t.equal(viaBasic.statusCode, 200)
  t.equal(viaPost.statusCode, 200)
  t.equal(viaBasic.json().active, true, 'client_secret_basic')
  t.strictSame(viaPost.json(), viaBasic.json(), 'client_secret_post gives the same answer')
})

test('malformed requests are invalid_request', async (t) => {
  const app = await setup(t)
  const tokens = await grant(t, app, SCOPED)

  assertOAuthError(t, await introspect(app, {}, basic(SCOPED)), 400, 'invalid_request')
  assertOAuthError(t, await introspect(app, { token: '' }, basic(SCOPED)), 400, 'invalid_request')
  assertOAuthError(t, await introspect(app, { token_type_hint: 'access_token' }, basic(SCOPED)), 400, 'invalid_request')

  const json = await app.inject({
    method: 'POST',
    url: '/oauth/introspect',
    headers: { 'content-type': 'application/json', ...basic(SCOPED) },
    payload: JSON.stringify({ token: tokens.access_token })
  })
  assertOAuthError(t, json, 400, 'invalid_request')

  const repeated = await app.inject({
    method: 'POST',
    url: '/oauth/introspect',
    headers: { ...FORM, ...basic(SCOPED) },
    payload: `${form({ token: tokens.access_token })}&${form({ token: tokens.refresh_token })}`
  })
  assertOAuthError(t, repeated, 400, 'invalid_request')
})

test('token_type_hint is accepted and does not change the answer', async (t) => {
  const app = await setup(t)
  const tokens = await grant(t, app, SCOPED)

  const access = await introspectAs(t, app, SCOPED, tokens.access_token)
  t.equal(access.active, true)
  for (const hint of ['access_token', 'refresh_token', 'unknown_type']) {
    t.strictSame(await introspectAs(t, app, SCOPED, tokens.access_token, hint), access, `access token, hint ${hint}`)
  }

  const refreshBody = await introspectAs(t, app, SCOPED, tokens.refresh_token)
  t.equal(refreshBody.active, true)
  for (const hint of ['access_token', 'refresh_token']) {
    t.strictSame(await introspectAs(t, app, SCOPED, tokens.refresh_token, hint), refreshBody, `refresh token, hint ${hint}`)
  }

  t.strictSame(await introspectAs(t, app, PLAIN, tokens.access_token, 'access_token'), { active: false }, 'a hint reveals nothing to another client')
})
