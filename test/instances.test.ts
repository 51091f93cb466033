// Two instances on one PostgreSQL and Redis behave as one service: what one
// issues, the other refreshes, introspects, revokes and verifies; limits and
// client changes are shared.
import { test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { basicAuth, build, form, FORM, insertClient, issueTokens, needs, sql, tokenRequest, verify } from './helper.ts'

const CLIENT = { id: 'svc-pair', secret: 'pair-secret' }
const AUTH = { authorization: basicAuth(CLIENT.id, CLIENT.secret) }

async function post (app: FastifyInstance, url: string, fields: Record<string, string>): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url, headers: { ...FORM, ...AUTH }, payload: form(fields) })
}

test('a token from one instance is refreshed, introspected, revoked and verified through the other', { skip: needs.postgres || needs.redis }, async (t) => {
  const one = await build(t)
  const two = await build(t, { databaseUrl: one.databaseUrl, redisPrefix: one.redisPrefix })
  await insertClient(one.databaseUrl, CLIENT)

  const issued = await issueTokens(one.app, CLIENT.id, CLIENT.secret)
  t.match((await verify(two.app, issued.access_token)).json(), { valid: true }, 'issued by one, verified by two')
  t.match((await post(two.app, '/oauth/introspect', { token: issued.refresh_token })).json(), { active: true, token_type: 'refresh_token' },
    'its refresh token is active at two')

  const refreshed = await tokenRequest(two.app, { grant_type: 'refresh_token', refresh_token: issued.refresh_token }, AUTH)
  t.equal(refreshed.statusCode, 200, 'refreshed through two')
  const next = refreshed.json()
  const replay = await tokenRequest(one.app, { grant_type: 'refresh_token', refresh_token: issued.refresh_token }, AUTH)
  t.equal(replay.json().error, 'invalid_grant', 'the used refresh token is refused by one too')
  t.same((await verify(one.app, next.access_token)).json(), { valid: false, error: 'revoked' },
    'and its reuse revoked the session for both')

  const fresh = await issueTokens(two.app, CLIENT.id, CLIENT.secret)
  t.equal((await post(one.app, '/oauth/revoke', { token: fresh.access_token })).statusCode, 200, 'revoked through one')
  t.same((await verify(two.app, fresh.access_token)).json(), { valid: false, error: 'revoked' }, 'revoked at two')
  t.same((await post(two.app, '/oauth/introspect', { token: fresh.access_token })).json(), { active: false }, 'inactive at two')
  t.match((await post(one.app, '/oauth/introspect', { token: fresh.refresh_token })).json(), { active: true },
    'revoking an access token leaves its refresh token alone, as seen from one')
})

test('a disabled client is refused by both instances within the cache lifetime', { skip: needs.postgres || needs.redis }, async (t) => {
  const one = await build(t, { env: { CLIENT_CACHE_TTL: '1s' } })
  const two = await build(t, { databaseUrl: one.databaseUrl, redisPrefix: one.redisPrefix, env: { CLIENT_CACHE_TTL: '1s' } })
  await insertClient(one.databaseUrl, CLIENT)
  await issueTokens(one.app, CLIENT.id, CLIENT.secret)
  await issueTokens(two.app, CLIENT.id, CLIENT.secret)
  await sql(one.databaseUrl, "UPDATE clients SET status = 'disabled' WHERE client_id = $1", [CLIENT.id])
  await new Promise((resolve) => setTimeout(resolve, 1100))
  for (const [name, instance] of [['one', one.app], ['two', two.app]] as const) {
    const res = await tokenRequest(instance, { grant_type: 'client_credentials' }, AUTH)
    t.equal(res.json().error, 'unauthorized_client', `${name} refuses the disabled client after CLIENT_CACHE_TTL`)
  }
})
