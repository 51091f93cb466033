// Scopes (RFC 6749 §3.3), audiences (the `audience` parameter and RFC 8707
// resource indicators) and per-client custom claims, end to end: what the
// client asks for, what the token and the response say, and how a refresh
// (RFC 6749 §6) may narrow a session's scope but never widen it or move it.
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { assertOAuthError, basicAuth, build, decodeJwt, insertClient, sql, tokenRequest, verify } from './helper.ts'

const ORDERS = 'https://orders.example.com'
const OTHER = 'https://other.example.com'
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

const secretOf = (clientId: string): string => `${clientId}-secret`

interface ClientColumns {
  scopes?: string[]
  defaultScopes?: string[]
  audiences?: string[]
  /** raw JSON text, stored as it is in the jsonb column */
  claims?: string
}

/**
 * A client inserted the historical way, then given its new columns. Done
 * before its first token request, so that no cached record hides the change.
 */
async function addClient (databaseUrl: string, id: string, columns: ClientColumns = {}): Promise<void> {
  await insertClient(databaseUrl, { id, secret: secretOf(id) })
  await sql(databaseUrl,
    'UPDATE clients SET scopes = $2, default_scopes = $3, audiences = $4, claims = $5::jsonb WHERE client_id = $1',
    [id, columns.scopes ?? [], columns.defaultScopes ?? [], columns.audiences ?? [], columns.claims ?? '{}'])
}

async function grant (app: FastifyInstance, clientId: string, fields: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return await tokenRequest(app, { grant_type: 'client_credentials', ...fields }, { authorization: basicAuth(clientId, secretOf(clientId)) })
}

async function refresh (app: FastifyInstance, clientId: string, refreshToken: string, fields: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: refreshToken, ...fields }, { authorization: basicAuth(clientId, secretOf(clientId)) })
}

async function verifyFor (app: FastifyInstance, token: string, audience: string): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/oauth/verify', payload: { token, audience } })
}

interface Granted {
  body: Record<string, unknown>
  accessToken: string
  refreshToken: string
  claims: Record<string, unknown>
}

/**
 * A successful token answer. `scope`: the `scope` field the response must
 * carry, or undefined when it must have none (granted as requested).
 */
function assertGranted (t: Test, res: LightMyRequestResponse, scope: string | undefined): Granted {
  t.equal(res.statusCode, 200, 'status 200', { body: res.body })
  const body = res.json() as Record<string, unknown>
  const expected = ['access_token', 'expires_in', 'refresh_token', 'token_type', ...(scope === undefined ? [] : ['scope'])].sort()
  t.same(Object.keys(body).sort(), expected, scope === undefined ? 'no scope field' : 'a scope field')
  if (scope !== undefined) t.equal(body.scope, scope, 'the scope field names the granted scope')
  t.equal(body.token_type, 'Bearer')
  t.equal(res.headers['cache-control'], 'no-store')
  const accessToken = body.access_token as string
  return { body, accessToken, refreshToken: body.refresh_token as string, claims: decodeJwt(accessToken).payload }
}

test('a client inserted the original way gets no scope, the default audience, and column defaults', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'legacy', secret: secretOf('legacy') })

  const [row] = await sql(databaseUrl,
    'SELECT scopes, default_scopes, audiences, claims, jwks_uri, jwks, client_secret_hash IS NOT NULL AS has_secret FROM clients WHERE client_id = $1', ['legacy'])
  t.same(row, { scopes: [], default_scopes: [], audiences: [], claims: {}, jwks_uri: null, jwks: null, has_secret: true })
  // Compared in SQL too: empty arrays and an empty object, not NULLs.
  const [exact] = await sql(databaseUrl,
    `SELECT scopes = '{}'::text[] AND default_scopes = '{}'::text[] AND audiences = '{}'::text[]
       AND claims = '{}'::jsonb AND jwks_uri IS NULL AND jwks IS NULL AS defaults FROM clients WHERE client_id = $1`, ['legacy'])
  t.equal(exact?.defaults, true)

  const issued = assertGranted(t, await grant(app, 'legacy'), undefined)
  t.notOk('scope' in issued.claims, 'no scope claim')
  t.equal(issued.claims.aud, 'api')
  t.equal(issued.claims.sub, 'legacy')

  const checked = await verify(app, issued.accessToken)
  t.equal(checked.json().valid, true)
  t.notOk('scope' in checked.json().claims)

  // It may not ask for scopes it does not have.
  assertOAuthError(t, await grant(app, 'legacy', { scope: 'read' }), 400, 'invalid_scope')
})

test('scopes: defaults when none is asked for, a subset of the allowed ones otherwise', async (t) => {
  const { app, databaseUrl } = await build(t)
  await addClient(databaseUrl, 'scoped', { scopes: ['read', 'write', 'admin'], defaultScopes: ['read'] })

  // Nothing asked: the defaults, named in the response since they were not requested.
  const defaults = assertGranted(t, await grant(app, 'scoped'), 'read')
  t.equal(defaults.claims.scope, 'read')

  // Granted as asked: RFC 6749 §5.1 lets the response omit it, and it does.
  const asked = assertGranted(t, await grant(app, 'scoped', { scope: 'read write' }), undefined)
  t.equal(asked.claims.scope, 'read write')
  t.equal((await verify(app, asked.accessToken)).json().claims.scope, 'read write', 'verify shows the scope string')

  const everything = assertGranted(t, await grant(app, 'scoped', { scope: 'admin read write' }), undefined)
  t.equal(everything.claims.scope, 'admin read write')

  // The same scope twice is one scope.
  const repeated = await grant(app, 'scoped', { scope: 'read read' })
  t.equal(repeated.statusCode, 200, { body: repeated.body })
  t.equal(decodeJwt(repeated.json().access_token).payload.scope, 'read', 'duplicates removed from the token')
  t.ok(!('scope' in repeated.json()) || repeated.json().scope === 'read', 'a scope field, if any, without the duplicate')

  assertOAuthError(t, await grant(app, 'scoped', { scope: 'read delete' }), 400, 'invalid_scope')
  assertOAuthError(t, await grant(app, 'scoped', { scope: 'delete' }), 400, 'invalid_scope')
  // Outside the scope-token grammar: %x21 / %x23-5B / %x5D-7E only.
  assertOAuthError(t, await grant(app, 'scoped', { scope: 'read "write"' }), 400, 'invalid_scope')
  assertOAuthError(t, await grant(app, 'scoped', { scope: 'read\\write' }), 400, 'invalid_scope')
  assertOAuthError(t, await grant(app, 'scoped', { scope: 'read\twrite' }), 400, 'invalid_scope')
  assertOAuthError(t, await grant(app, 'scoped', { scope: 'read é' }), 400, 'invalid_scope')
})

test('the database refuses default scopes that are not among the allowed scopes', async (t) => {
  const { databaseUrl } = await build(t)
  await addClient(databaseUrl, 'checked', { scopes: ['read', 'write'], defaultScopes: ['read'] })

  const violation = { code: '23514', constraint: 'clients_default_scopes_allowed' }
  await t.rejects(sql(databaseUrl, "UPDATE clients SET default_scopes = '{read,admin}' WHERE client_id = 'checked'"), violation)
  await t.rejects(sql(databaseUrl, "UPDATE clients SET scopes = '{write}' WHERE client_id = 'checked'"), violation,
    'removing a scope that is a default is refused too')
  // A valid bcrypt hash borrowed from the first row, so that only this CHECK can fail.
  await t.rejects(sql(databaseUrl,
    "INSERT INTO clients (client_id, client_secret_hash, scopes, default_scopes) SELECT 'other', client_secret_hash, '{}', '{read}' FROM clients WHERE client_id = 'checked'"), violation)

  const [row] = await sql(databaseUrl, 'SELECT scopes, default_scopes FROM clients WHERE client_id = $1', ['checked'])
  t.same(row, { scopes: ['read', 'write'], default_scopes: ['read'] }, 'the row is unchanged')
  t.same(await sql(databaseUrl, "SELECT 1 FROM clients WHERE client_id = 'other'"), [], 'nothing inserted')
})

test('audiences: JWT_AUDIENCE by default, an allowed one by audience or resource, nothing else', async (t) => {
  const { app, databaseUrl } = await build(t)
  await addClient(databaseUrl, 'aud', { audiences: [ORDERS] })

  const audOf = async (fields: Record<string, string>): Promise<unknown> => assertGranted(t, await grant(app, 'aud', fields), undefined).claims.aud

  t.equal(await audOf({}), 'api', 'JWT_AUDIENCE by default')
  t.equal(await audOf({ audience: 'api' }), 'api', 'JWT_AUDIENCE asked for explicitly')
  t.equal(await audOf({ audience: ORDERS }), ORDERS, 'audience parameter')
  t.equal(await audOf({ resource: ORDERS }), ORDERS, 'RFC 8707 resource parameter')
  t.equal(await audOf({ audience: ORDERS, resource: ORDERS }), ORDERS, 'both, naming the same target')

  assertOAuthError(t, await grant(app, 'aud', { audience: OTHER }), 400, 'invalid_target')
  assertOAuthError(t, await grant(app, 'aud', { resource: OTHER }), 400, 'invalid_target')
  assertOAuthError(t, await grant(app, 'aud', { resource: 'not a uri' }), 400, 'invalid_target')
  assertOAuthError(t, await grant(app, 'aud', { resource: `${ORDERS}#fragment` }), 400, 'invalid_target')
  assertOAuthError(t, await grant(app, 'aud', { audience: 'api', resource: ORDERS }), 400, 'invalid_request')
  assertOAuthError(t, await grant(app, 'aud', { audience: ORDERS, resource: `${ORDERS}/` }), 400, 'invalid_request')

  // Audiences are per client: one without any only gets JWT_AUDIENCE.
  await addClient(databaseUrl, 'plain')
  assertOAuthError(t, await grant(app, 'plain', { audience: ORDERS }), 400, 'invalid_target')
})

test('/oauth/verify checks the audience the caller names, JWT_AUDIENCE when it names none', async (t) => {
  const { app, databaseUrl } = await build(t)
  await addClient(databaseUrl, 'resource-client', { audiences: [ORDERS] })
  const orders = assertGranted(t, await grant(app, 'resource-client', { audience: ORDERS }), undefined)
  t.equal(orders.claims.aud, ORDERS)

  const withoutAudience = await verify(app, orders.accessToken)
  t.equal(withoutAudience.statusCode, 200)
  t.same(withoutAudience.json(), { valid: false, error: 'invalid_audience' })

  const forOrders = await verifyFor(app, orders.accessToken, ORDERS)
  t.equal(forOrders.statusCode, 200)
  t.equal(forOrders.json().valid, true)
  t.equal(forOrders.json().claims.aud, ORDERS)

  t.same((await verifyFor(app, orders.accessToken, 'api')).json(), { valid: false, error: 'invalid_audience' })
  t.same((await verifyFor(app, orders.accessToken, OTHER)).json(), { valid: false, error: 'invalid_audience' })

  // And the other way round: a token for JWT_AUDIENCE is not one for the orders API.
  const api = assertGranted(t, await grant(app, 'resource-client'), undefined)
  t.equal((await verify(app, api.accessToken)).json().valid, true)
  t.same((await verifyFor(app, api.accessToken, ORDERS)).json(), { valid: false, error: 'invalid_audience' })
})

test('custom claims are added to the token, and never replace the registered ones', async (t) => {
  const { app, databaseUrl, config } = await build(t)
  await addClient(databaseUrl, 'tenant-client', {
    claims: '{"tenant":"acme","roles":["a","b"],"iss":"evil","sub":"evil","scope":"admin","sid":"x","client_id":"y","exp":1,"jti":"z","aud":"w"}'
  })
  const issued = assertGranted(t, await grant(app, 'tenant-client'), undefined)
  const { header } = decodeJwt(issued.accessToken)
  const claims = issued.claims
  t.equal(header.typ, 'at+jwt')

  t.equal(claims.tenant, 'acme')
  t.same(claims.roles, ['a', 'b'])
  t.equal(claims.iss, 'session-service')
  t.equal(claims.iss, config.issuer)
  t.equal(claims.sub, 'tenant-client')
  t.equal(claims.client_id, 'tenant-client')
  t.equal(claims.aud, 'api')
  t.notOk('scope' in claims, 'the client has no scopes: a custom "scope" does not give it one')
  t.match(claims.sid, UUID, 'sid is the session, not the custom one')
  t.match(claims.jti, UUID, 'jti is a fresh id, not the custom one')
  t.equal((claims.exp as number) - (claims.iat as number), issued.body.expires_in, 'exp follows the token lifetime')
  t.ok((claims.exp as number) > Date.now() / 1000, 'exp is in the future')
  t.same(Object.keys(claims).sort(), ['aud', 'client_id', 'exp', 'iat', 'iss', 'jti', 'roles', 'sid', 'sub', 'tenant'], 'nothing else')

  const checked = await verify(app, issued.accessToken)
  t.equal(checked.statusCode, 200)
  t.equal(checked.json().valid, true, 'the custom exp did not make it expired')
  t.equal(checked.json().claims.tenant, 'acme')
  t.same(checked.json().claims.roles, ['a', 'b'])
  t.equal(checked.json().claims.sub, 'tenant-client')
  t.equal(checked.json().claims.jti, claims.jti)

  // A refreshed token carries them too.
  const refreshed = assertGranted(t, await refresh(app, 'tenant-client', issued.refreshToken), undefined)
  t.equal(refreshed.claims.tenant, 'acme')
  t.equal(refreshed.claims.sid, claims.sid)
  t.equal(refreshed.claims.iss, 'session-service')
})

test('a refresh may narrow the access token scope, keeps the session scope and audience, never widens', async (t) => {
  const { app, databaseUrl } = await build(t)
  await addClient(databaseUrl, 'narrow', { scopes: ['read', 'write', 'admin'], defaultScopes: ['read'], audiences: [ORDERS] })
  const first = assertGranted(t, await grant(app, 'narrow', { scope: 'read write' }), undefined)
  t.equal(first.claims.scope, 'read write')
  const sid = first.claims.sid

  // Narrowed as asked: no scope field.
  const narrowed = assertGranted(t, await refresh(app, 'narrow', first.refreshToken, { scope: 'read' }), undefined)
  t.equal(narrowed.claims.scope, 'read')
  t.equal(narrowed.claims.sid, sid, 'same session')
  t.equal(narrowed.claims.aud, 'api')

  // The narrowing was the access token's only: the session still has both.
  const restored = assertGranted(t, await refresh(app, 'narrow', narrowed.refreshToken), 'read write')
  t.equal(restored.claims.scope, 'read write')
  t.equal(restored.claims.sid, sid)

  // Refused refreshes leave the refresh token unspent.
  const token = restored.refreshToken
  assertOAuthError(t, await refresh(app, 'narrow', token, { scope: 'read admin' }), 400, 'invalid_scope')
  assertOAuthError(t, await refresh(app, 'narrow', token, { scope: 'delete' }), 400, 'invalid_scope')
  assertOAuthError(t, await refresh(app, 'narrow', token, { audience: ORDERS }), 400, 'invalid_target')
  assertOAuthError(t, await refresh(app, 'narrow', token, { resource: ORDERS }), 400, 'invalid_target')
  assertOAuthError(t, await refresh(app, 'narrow', token, { audience: OTHER }), 400, 'invalid_target')
  const after = assertGranted(t, await refresh(app, 'narrow', token, { scope: 'write' }), undefined)
  t.equal(after.claims.scope, 'write')
  t.equal(after.claims.sid, sid)
  // Had a refusal spent the token, this refresh would have been a replay and revoked the session.
  t.equal((await verify(app, restored.accessToken)).json().valid, true, 'the session was not revoked')

  // A session for the orders API stays one.
  const orders = assertGranted(t, await grant(app, 'narrow', { resource: ORDERS }), 'read')
  t.equal(orders.claims.aud, ORDERS)
  const ordersRefreshed = assertGranted(t, await refresh(app, 'narrow', orders.refreshToken), 'read')
  t.equal(ordersRefreshed.claims.aud, ORDERS, 'the refreshed token keeps the session audience')
  t.equal(ordersRefreshed.claims.sid, orders.claims.sid)
  assertOAuthError(t, await refresh(app, 'narrow', ordersRefreshed.refreshToken, { audience: 'api' }), 400, 'invalid_target')
  const explicit = assertGranted(t, await refresh(app, 'narrow', ordersRefreshed.refreshToken, { audience: ORDERS }), 'read')
  t.equal(explicit.claims.aud, ORDERS, 'naming the session audience is fine')
  t.equal((await verifyFor(app, explicit.accessToken, ORDERS)).json().valid, true)
})

test('a scope taken from the client is not granted again on refresh', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { CLIENT_CACHE_TTL: '1s' } })
  await addClient(databaseUrl, 'shrinking', { scopes: ['read', 'write', 'admin'], defaultScopes: ['read'] })
  const first = assertGranted(t, await grant(app, 'shrinking', { scope: 'read write' }), undefined)
  t.equal(first.claims.scope, 'read write')

  await sql(databaseUrl, "UPDATE clients SET scopes = '{read,admin}' WHERE client_id = 'shrinking'")
  await sleep(1200) // past CLIENT_CACHE_TTL, so the change is seen

  // Not asked for: dropped without an error, and the response says what was granted.
  const next = assertGranted(t, await refresh(app, 'shrinking', first.refreshToken), 'read')
  t.equal(next.claims.scope, 'read')
  t.equal(next.claims.sid, first.claims.sid)

  // Asked for: refused, and the refresh token survives the refusal.
  assertOAuthError(t, await refresh(app, 'shrinking', next.refreshToken, { scope: 'read write' }), 400, 'invalid_scope')
  assertOAuthError(t, await refresh(app, 'shrinking', next.refreshToken, { scope: 'write' }), 400, 'invalid_scope')
  const still = assertGranted(t, await refresh(app, 'shrinking', next.refreshToken, { scope: 'read' }), undefined)
  t.equal(still.claims.scope, 'read')

  // Nor can a new session get it.
  assertOAuthError(t, await grant(app, 'shrinking', { scope: 'write' }), 400, 'invalid_scope')
})

test('an audience taken from the client ends its sessions for that audience at the next refresh', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { CLIENT_CACHE_TTL: '1s' } })
  await addClient(databaseUrl, 'moving', { scopes: ['read'], defaultScopes: ['read'], audiences: [ORDERS, OTHER] })
  const orders = assertGranted(t, await grant(app, 'moving', { audience: ORDERS }), 'read')
  const other = assertGranted(t, await grant(app, 'moving', { audience: OTHER }), 'read')
  const plain = assertGranted(t, await grant(app, 'moving'), 'read')

  await sql(databaseUrl, 'UPDATE clients SET audiences = $2 WHERE client_id = $1', ['moving', [OTHER]])
  await sleep(1200) // past CLIENT_CACHE_TTL, so the change is seen

  assertOAuthError(t, await refresh(app, 'moving', orders.refreshToken), 400, 'invalid_grant')
  // Still refused after the first attempt, and never as a replay: the session was not revoked.
  assertOAuthError(t, await refresh(app, 'moving', orders.refreshToken), 400, 'invalid_grant')
  t.equal((await verifyFor(app, orders.accessToken, ORDERS)).json().valid, true, 'the access token already issued lives out its lifetime')
  // Audiences the client keeps, and JWT_AUDIENCE, refresh as before.
  t.equal(assertGranted(t, await refresh(app, 'moving', other.refreshToken), 'read').claims.aud, OTHER)
  t.equal(assertGranted(t, await refresh(app, 'moving', plain.refreshToken), 'read').claims.aud, 'api')
  // And a new grant for the lost audience is refused.
  assertOAuthError(t, await grant(app, 'moving', { audience: ORDERS }), 400, 'invalid_target')
})

test('wrong credentials are answered 401 before anything is said about scope or audience', async (t) => {
  const { app, databaseUrl } = await build(t)
  await addClient(databaseUrl, 'guarded', { scopes: ['read'], defaultScopes: ['read'] })
  const wrong = { authorization: basicAuth('guarded', 'not-the-secret') }
  const attempts: Array<Record<string, string>> = [{ scope: 'read "bad' }, { scope: 'admin' }, { resource: 'not a uri' }, { audience: OTHER }]
  for (const fields of attempts) {
    const res = await tokenRequest(app, { grant_type: 'client_credentials', ...fields }, wrong)
    assertOAuthError(t, res, 401, 'invalid_client')
  }
  // With the right secret, the same requests get their own errors.
  assertOAuthError(t, await grant(app, 'guarded', { scope: 'read "bad' }), 400, 'invalid_scope')
  assertOAuthError(t, await grant(app, 'guarded', { resource: 'not a uri' }), 400, 'invalid_target')
})
