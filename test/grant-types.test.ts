// The grant registry and each client's allow-list of grant types
// (migrations/005_client_grant_types.sql): a grant the client is not
// registered for is unauthorized_client (RFC 6749 §5.2), checked once the
// client is authenticated, whichever way the grant authenticates it.
import { test, type Test } from 'tap'
import type { LightMyRequestResponse } from 'fastify'
import { GRANT_TYPES } from '../grants/index.ts'
import { build, insertClient, issueTokens, sql, tokenRequest, injectAdmin } from './helper.ts'

const SECRET = 'grant-types-secret'

function assertUnauthorizedClient (t: Test, res: LightMyRequestResponse, grantType: string): void {
  t.equal(res.statusCode, 400, 'status 400', { body: res.body })
  t.strictSame(res.json(), { error: 'unauthorized_client', error_description: `the client may not use the grant type ${grantType}` })
  t.equal(res.headers['cache-control'], 'no-store')
}

async function limitGrantTypes (databaseUrl: string, clientId: string, grantTypes: string[]): Promise<void> {
  await sql(databaseUrl, 'UPDATE clients SET grant_types = $1 WHERE client_id = $2', [grantTypes, clientId])
}

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange'

test('the registry lists every grant; a plain INSERT gets client_credentials and refresh_token', async (t) => {
  t.strictSame(GRANT_TYPES, ['client_credentials', 'refresh_token', TOKEN_EXCHANGE])

  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-default', secret: SECRET })
  const [row] = await sql<{ grant_types: string[] }>(databaseUrl, 'SELECT grant_types FROM clients WHERE client_id = $1', ['svc-default'])
  t.strictSame(row?.grant_types, ['client_credentials', 'refresh_token'], 'the column default: token exchange must be enabled explicitly')

  const issued = await issueTokens(app, 'svc-default', SECRET)
  const refreshed = await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: issued.refresh_token, client_id: 'svc-default', client_secret: SECRET })
  t.equal(refreshed.statusCode, 200, 'refresh_token too', { body: refreshed.body })

  const discovery = await app.inject({ method: 'GET', url: '/.well-known/openid-configuration' })
  t.strictSame(discovery.json().grant_types_supported, GRANT_TYPES, 'discovery lists them all')

  const exchange = await tokenRequest(app, { grant_type: TOKEN_EXCHANGE, subject_token: issued.access_token, subject_token_type: 'urn:ietf:params:oauth:token-type:access_token', client_id: 'svc-default', client_secret: SECRET })
  assertUnauthorizedClient(t, exchange, TOKEN_EXCHANGE)

  const unsupported = await tokenRequest(app, { grant_type: 'password', client_id: 'svc-default', client_secret: SECRET })
  t.equal(unsupported.statusCode, 400)
  t.strictSame(unsupported.json(), { error: 'unsupported_grant_type', error_description: `grant_type password is not supported; use client_credentials or refresh_token or ${TOKEN_EXCHANGE}` })
})

test('a client limited to client_credentials gets unauthorized_client on refresh_token', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-cc-only', secret: SECRET })
  await limitGrantTypes(databaseUrl, 'svc-cc-only', ['client_credentials'])

  const issued = await issueTokens(app, 'svc-cc-only', SECRET)
  t.ok(issued.access_token, 'client_credentials works')
  const refresh = { grant_type: 'refresh_token', refresh_token: issued.refresh_token, client_id: 'svc-cc-only' }
  assertUnauthorizedClient(t, await tokenRequest(app, { ...refresh, client_secret: SECRET }), 'refresh_token')

  const wrongSecret = await tokenRequest(app, { ...refresh, client_secret: 'not-the-secret' })
  t.equal(wrongSecret.statusCode, 401, 'a caller that is not the client learns nothing about its grants')
  t.equal(wrongSecret.json().error, 'invalid_client')

  // Allowed again: the refused request did not consume the refresh token.
  await limitGrantTypes(databaseUrl, 'svc-cc-only', ['client_credentials', 'refresh_token'])
  await app.clients.forget('svc-cc-only')
  const refreshed = await tokenRequest(app, { ...refresh, client_secret: SECRET })
  t.equal(refreshed.statusCode, 200, 'the refresh token is still valid', { body: refreshed.body })
})

test('a client limited to refresh_token gets unauthorized_client on client_credentials', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-refresh-only', secret: SECRET })
  const issued = await issueTokens(app, 'svc-refresh-only', SECRET)
  await limitGrantTypes(databaseUrl, 'svc-refresh-only', ['refresh_token'])
  await app.clients.forget('svc-refresh-only')

  assertUnauthorizedClient(t, await tokenRequest(app, { grant_type: 'client_credentials', client_id: 'svc-refresh-only', client_secret: SECRET }), 'client_credentials')
  const refreshed = await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: issued.refresh_token, client_id: 'svc-refresh-only', client_secret: SECRET })
  t.equal(refreshed.statusCode, 200, 'refresh_token still works', { body: refreshed.body })
})

test('REFRESH_TOKEN_CLIENT_AUTH=optional: the owner of the refresh token is checked alike', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { REFRESH_TOKEN_CLIENT_AUTH: 'optional' } })
  await insertClient(databaseUrl, { id: 'svc-optional', secret: SECRET })
  const issued = await issueTokens(app, 'svc-optional', SECRET)
  await limitGrantTypes(databaseUrl, 'svc-optional', ['client_credentials'])
  await app.clients.forget('svc-optional')

  assertUnauthorizedClient(t, await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: issued.refresh_token }), 'refresh_token')
  const unknown = await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: 'no-such-token' })
  t.strictSame(unknown.json(), { error: 'invalid_grant', error_description: 'the refresh token is invalid, expired, revoked or already used' }, 'an unknown token is invalid_grant, as on the normal path')
})

test('/metrics counts issued tokens by every registered grant type', async (t) => {
  const { app } = await build(t)
  const res = await injectAdmin(app, '/metrics')
  for (const grantType of GRANT_TYPES) {
    t.match(res.body, `session_service_tokens_issued_total{grant_type="${grantType}"} 0`, `a series for ${grantType}`)
  }
})
