// grant_type=urn:ietf:params:oauth:grant-type:token-exchange (RFC 8693),
// end to end through /oauth/token: the narrowed token's claims, the chain of
// actors, each refusal with its RFC code, may_exchange, and revocation of
// the subject's session reaching the exchanged token.
import { generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { calculateJwkThumbprint, SignJWT } from 'jose'
import {
  assertOAuthError, basicAuth, build, decodeJwt, FORM, form, generateRsaKeyPair, insertClient, issueTokens, signRs256, sql, tokenRequest
} from './helper.ts'
import { createClient, migratedDataDir, start } from './embedded/apps.ts'

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange'
const ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token'
const JWT = 'urn:ietf:params:oauth:token-type:jwt'
const ORDERS_API = 'https://orders.example.com'
const SECRET = 'token-exchange-secret'

interface Scene {
  app: FastifyInstance
  databaseUrl: string
  /** a client_credentials token of svc-user, scope orders:read orders:write */
  subject: { access_token: string, refresh_token: string }
}

/**
 * svc-user holds the subject tokens; svc-gateway exchanges them (listed in
 * may_exchange); svc-agent acts; svc-other may exchange but lists no one;
 * svc-plain has only the default grants.
 */
async function scene (t: Test, env: Record<string, string> = {}): Promise<Scene> {
  const { app, databaseUrl } = await build(t, { env })
  for (const id of ['svc-user', 'svc-gateway', 'svc-agent', 'svc-other', 'svc-plain']) await insertClient(databaseUrl, { id, secret: SECRET })
  await sql(databaseUrl, "UPDATE clients SET scopes = '{orders:read,orders:write}', default_scopes = '{orders:read,orders:write}' WHERE client_id IN ('svc-user', 'svc-other')")
  await sql(databaseUrl, `UPDATE clients SET scopes = '{orders:read,orders:write,admin}', audiences = '{${ORDERS_API}}',
    grant_types = '{client_credentials,refresh_token,${TOKEN_EXCHANGE}}', may_exchange = '{svc-user}' WHERE client_id = 'svc-gateway'`)
  await sql(databaseUrl, `UPDATE clients SET grant_types = '{client_credentials,${TOKEN_EXCHANGE}}' WHERE client_id = 'svc-other'`)
  const subject = await issueTokens(app, 'svc-user', SECRET)
  return { app, databaseUrl, subject }
}

/** A token exchange by `clientId` (HTTP Basic) with the given parameters. */
async function exchange (app: FastifyInstance, clientId: string, fields: Record<string, string>): Promise<LightMyRequestResponse> {
  return await tokenRequest(app, { grant_type: TOKEN_EXCHANGE, ...fields }, { authorization: basicAuth(clientId, SECRET) })
}

const asSubject = (token: string): Record<string, string> => ({ subject_token: token, subject_token_type: ACCESS_TOKEN })
const asActor = (token: string): Record<string, string> => ({ actor_token: token, actor_token_type: ACCESS_TOKEN })

interface Exchanged {
  body: Record<string, unknown>
  claims: Record<string, unknown>
  header: Record<string, unknown>
}

function exchanged (t: Test, res: LightMyRequestResponse, what: string): Exchanged {
  t.equal(res.statusCode, 200, `${what}: 200`, { body: res.body })
  t.equal(res.headers['cache-control'], 'no-store', `${what}: not cached`)
  const body = res.json() as Record<string, unknown>
  const { header, payload } = decodeJwt(String(body.access_token))
  return { body, claims: payload, header }
}

/** The error body, and that no token of the request is echoed in its description. */
function refused (t: Test, res: LightMyRequestResponse, error: string, what: string, tokens: string[] = []): string {
  assertOAuthError(t, res, 400, error, what)
  const description = String(res.json().error_description)
  for (const token of tokens) t.notOk(description.includes(token.split('.')[1] ?? token), `${what}: the token is not echoed`)
  return description
}

test('an exchanged token narrows the subject\'s: sub, client_id, aud, scope, sid, exp, no refresh token', async (t) => {
  const { app, subject } = await scene(t)
  const subjectClaims = decodeJwt(subject.access_token).payload
  // A second later, the exchanged token's expiry shows that it is bounded by the subject's.
  await sleep(1100)
  const { body, claims, header } = exchanged(t, await exchange(app, 'svc-gateway', { ...asSubject(subject.access_token), audience: ORDERS_API }), 'exchange')

  t.strictSame(Object.keys(body).sort(), ['access_token', 'expires_in', 'issued_token_type', 'scope', 'token_type'], 'RFC 8693 §2.2.1 fields, no refresh_token')
  t.equal(body.issued_token_type, ACCESS_TOKEN)
  t.equal(body.token_type, 'Bearer')
  t.equal(body.scope, 'orders:read orders:write', 'no scope asked: the subject\'s within the client\'s, named as it differs from the request')
  t.equal(header.typ, 'at+jwt')
  t.equal(claims.sub, 'svc-user', 'the subject is the subject token\'s')
  t.equal(claims.client_id, 'svc-gateway', 'issued to the calling client')
  t.equal(claims.aud, ORDERS_API)
  t.equal(claims.scope, 'orders:read orders:write')
  t.equal(claims.sid, subjectClaims.sid, 'in the subject\'s session')
  t.not(claims.jti, subjectClaims.jti, 'a token of its own')
  t.notOk('act' in claims, 'no actor, none before')
  t.equal(claims.exp, subjectClaims.exp, 'it expires with the subject token, not ACCESS_TOKEN_TTL after now')
  t.ok(Number(body.expires_in) < 3600 && Number(body.expires_in) === Number(claims.exp) - Number(claims.iat), 'expires_in is the real remaining lifetime')

  const narrowed = exchanged(t, await exchange(app, 'svc-gateway', { ...asSubject(subject.access_token), scope: 'orders:read', requested_token_type: ACCESS_TOKEN, subject_token_type: JWT }), 'narrowed, as a jwt')
  t.equal(narrowed.claims.scope, 'orders:read')
  t.notOk('scope' in narrowed.body, 'the scope asked is granted, so not repeated')
  t.equal(narrowed.claims.aud, 'api', 'no audience asked: the default, as for client_credentials')

  const introspected = await app.inject({ method: 'POST', url: '/oauth/introspect', headers: { ...FORM, authorization: basicAuth('svc-gateway', SECRET) }, payload: form({ token: String(body.access_token) }) })
  t.match(introspected.json(), { active: true, sub: 'svc-user', client_id: 'svc-gateway', scope: 'orders:read orders:write', sid: subjectClaims.sid }, 'introspection shows it as the caller\'s token')
  const verified = await app.inject({ method: 'POST', url: '/oauth/verify', payload: { token: body.access_token, audience: ORDERS_API } })
  t.match(verified.json(), { valid: true, claims: { sub: 'svc-user', client_id: 'svc-gateway' } })
})

test('a client may exchange its own tokens without listing itself; the scope stays within its own', async (t) => {
  const { app, databaseUrl } = await scene(t)
  const own = await issueTokens(app, 'svc-other', SECRET)
  const { claims } = exchanged(t, await exchange(app, 'svc-other', { ...asSubject(own.access_token), scope: 'orders:read' }), 'own token')
  t.match(claims, { sub: 'svc-other', client_id: 'svc-other', scope: 'orders:read' })

  // svc-gateway holds admin, the subject does not: the intersection, never the union.
  await sql(databaseUrl, "UPDATE clients SET scopes = '{orders:read,admin}' WHERE client_id = 'svc-gateway'")
  await app.clients.forget('svc-gateway')
  const subject = await issueTokens(app, 'svc-user', SECRET)
  const narrow = exchanged(t, await exchange(app, 'svc-gateway', asSubject(subject.access_token)), 'intersection')
  t.equal(narrow.claims.scope, 'orders:read', 'orders:write is the subject\'s only, admin the client\'s only')
})

test('act: the actor outermost, a chain of exchanges nested, its length bounded', async (t) => {
  const { app, subject } = await scene(t)
  const agent = await issueTokens(app, 'svc-agent', SECRET)
  const plain = await issueTokens(app, 'svc-plain', SECRET)

  const first = exchanged(t, await exchange(app, 'svc-gateway', { ...asSubject(subject.access_token), ...asActor(agent.access_token) }), 'with an actor')
  t.strictSame(first.claims.act, { sub: 'svc-agent', client_id: 'svc-agent' }, 'the actor\'s identity')
  t.equal(first.claims.sub, 'svc-user')

  const second = exchanged(t, await exchange(app, 'svc-gateway', { ...asSubject(String(first.body.access_token)), actor_token: plain.access_token, actor_token_type: JWT }), 'a second exchange')
  t.strictSame(second.claims.act, { sub: 'svc-plain', client_id: 'svc-plain', act: { sub: 'svc-agent', client_id: 'svc-agent' } }, 'current actor outermost, the earlier one nested')
  t.equal(second.claims.sub, 'svc-user', 'still the original subject')

  const kept = exchanged(t, await exchange(app, 'svc-gateway', asSubject(String(second.body.access_token))), 'no actor')
  t.strictSame(kept.claims.act, second.claims.act, 'without an actor the chain is kept')
  const introspected = await app.inject({ method: 'POST', url: '/oauth/introspect', headers: { ...FORM, authorization: basicAuth('svc-gateway', SECRET) }, payload: form({ token: String(kept.body.access_token) }) })
  t.strictSame(introspected.json().act, second.claims.act, 'introspection shows act')

  // Five actors in all are accepted; a sixth is refused.
  let token = String(second.body.access_token)
  for (let actors = 3; actors <= 5; actors++) {
    token = String(exchanged(t, await exchange(app, 'svc-gateway', { ...asSubject(token), ...asActor(agent.access_token) }), `actor ${actors}`).body.access_token)
  }
  const tooLong = await exchange(app, 'svc-gateway', { ...asSubject(token), ...asActor(agent.access_token) })
  t.match(refused(t, tooLong, 'invalid_request', 'a sixth actor'), /chain of actors/)
})

test('each refusal with its RFC 8693 §2.2.2 code, naming the token and why', async (t) => {
  const { app, subject } = await scene(t)
  const subjectParameters = asSubject(subject.access_token)
  const cases: Array<[string, string, Record<string, string>, string, RegExp]> = [
    ['missing subject_token', 'svc-gateway', { subject_token_type: ACCESS_TOKEN }, 'invalid_request', /subject_token is required/],
    ['missing subject_token_type', 'svc-gateway', { subject_token: subject.access_token }, 'invalid_request', /subject_token_type is required/],
    ['unknown subject_token_type', 'svc-gateway', { ...subjectParameters, subject_token_type: 'urn:ietf:params:oauth:token-type:id_token' }, 'invalid_request', /subject_token_type must be/],
    ['requested_token_type refresh_token', 'svc-gateway', { ...subjectParameters, requested_token_type: 'urn:ietf:params:oauth:token-type:refresh_token' }, 'invalid_request', /requested_token_type/],
    ['actor_token without its type', 'svc-gateway', { ...subjectParameters, actor_token: subject.access_token }, 'invalid_request', /actor_token_type is required/],
    ['actor_token_type without a token', 'svc-gateway', { ...subjectParameters, actor_token_type: ACCESS_TOKEN }, 'invalid_request', /without an actor_token/],
    ['an invalid actor token', 'svc-gateway', { ...subjectParameters, ...asActor('not.a.token') }, 'invalid_request', /actor_token is not a valid access token/],
    ['a refresh token as subject', 'svc-gateway', asSubject(subject.refresh_token), 'invalid_request', /subject_token is not a valid access token/],
    ['a subject of a client not in may_exchange', 'svc-other', subjectParameters, 'invalid_request', /may not exchange/],
    ['a scope beyond the subject\'s', 'svc-gateway', { ...subjectParameters, scope: 'orders:read admin' }, 'invalid_scope', /^scope admin is not allowed for this client and the subject_token$/],
    ['an audience the client may not have', 'svc-gateway', { ...subjectParameters, audience: 'https://elsewhere.example.com' }, 'invalid_target', /audience/],
    ['a client without the grant type', 'svc-plain', subjectParameters, 'unauthorized_client', /grant type urn:ietf:params:oauth:grant-type:token-exchange/]
  ]
  for (const [what, clientId, fields, error, description] of cases) {
    t.match(refused(t, await exchange(app, clientId, fields), error, what, [subject.access_token, subject.refresh_token]), description, what)
  }
  const wrongSecret = await tokenRequest(app, { grant_type: TOKEN_EXCHANGE, ...subjectParameters }, { authorization: basicAuth('svc-gateway', 'wrong') })
  t.equal(wrongSecret.statusCode, 401, 'a caller that fails authentication learns nothing more')
})

test('a forged, expired or revoked subject token is invalid_request', async (t) => {
  const { app, subject } = await scene(t)
  const claims = decodeJwt(subject.access_token)
  const forged = signRs256(claims.header, { ...claims.payload, scope: 'orders:read orders:write admin' }, generateRsaKeyPair().privateKey)
  const now = Math.floor(Date.now() / 1000)
  // Ours in every respect but the time: signed with the service's own key.
  const expired = app.keys.sign({ ...claims.payload, iss: 'session-service', sub: 'svc-user', aud: 'session-service', jti: 'expired-jti', iat: now - 600, exp: now - 60 })
  t.match(refused(t, await exchange(app, 'svc-gateway', asSubject(forged)), 'invalid_request', 'forged', [forged]), /subject_token .*\(invalid_signature\)/)
  t.match(refused(t, await exchange(app, 'svc-gateway', asSubject(expired)), 'invalid_request', 'expired', [expired]), /subject_token .*\(expired\)/)
  t.match(refused(t, await exchange(app, 'svc-gateway', { ...asSubject(subject.access_token), ...asActor(expired) }), 'invalid_request', 'expired actor', [expired]), /actor_token .*\(expired\)/)

  const revoke = await app.inject({ method: 'POST', url: '/oauth/revoke', headers: { ...FORM, authorization: basicAuth('svc-user', SECRET) }, payload: form({ token: subject.access_token }) })
  t.equal(revoke.statusCode, 200)
  t.match(refused(t, await exchange(app, 'svc-gateway', asSubject(subject.access_token)), 'invalid_request', 'revoked'), /subject_token .*\(revoked\)/)
})

test('revoking the subject\'s session (its refresh token) revokes the exchanged token', async (t) => {
  const { app, subject } = await scene(t)
  const { body } = exchanged(t, await exchange(app, 'svc-gateway', asSubject(subject.access_token)), 'exchange')
  const before = await app.inject({ method: 'POST', url: '/oauth/verify', payload: { token: body.access_token } })
  t.equal(before.json().valid, true, 'valid while the session lives')
  const revoke = await app.inject({ method: 'POST', url: '/oauth/revoke', headers: { ...FORM, authorization: basicAuth('svc-user', SECRET) }, payload: form({ token: subject.refresh_token }) })
  t.equal(revoke.statusCode, 200)
  const after = await app.inject({ method: 'POST', url: '/oauth/verify', payload: { token: body.access_token } })
  t.strictSame(after.json(), { valid: false, error: 'revoked' }, 'the exchanged token goes with the session')
})

test('a client\'s custom claims never set act', async (t) => {
  const { app, databaseUrl } = await scene(t)
  await sql(databaseUrl, "UPDATE clients SET claims = '{\"act\": {\"sub\": \"root\"}, \"may_act\": {\"sub\": \"root\"}, \"tier\": \"gold\"}' WHERE client_id = 'svc-user'")
  await app.clients.forget('svc-user')
  const subject = await issueTokens(app, 'svc-user', SECRET)
  const subjectClaims = decodeJwt(subject.access_token).payload
  t.equal(subjectClaims.tier, 'gold', 'a custom claim is added')
  t.notOk('act' in subjectClaims || 'may_act' in subjectClaims, 'act and may_act are not')
  const { claims } = exchanged(t, await exchange(app, 'svc-gateway', asSubject(subject.access_token)), 'exchange')
  t.notOk('act' in claims, 'so no forged actor is carried into the exchange')
})

test('embedded backends: a token exchange and the session\'s revocation', async (t) => {
  const app = await start(t, await migratedDataDir(t))
  const user = await createClient(app, 'svc-user', { scopes: ['orders:read'] })
  const gateway = await createClient(app, 'svc-gateway', { scopes: ['orders:read'] })
  await app.db.query('UPDATE clients SET grant_types = $1, may_exchange = $2 WHERE client_id = $3', [['client_credentials', TOKEN_EXCHANGE], ['svc-user'], gateway.id])
  const issued = await tokenRequest(app, { grant_type: 'client_credentials', scope: 'orders:read' }, { authorization: user.authorization })
  t.equal(issued.statusCode, 200, { body: issued.body })
  const subject = issued.json() as { access_token: string, refresh_token: string }
  const res = await tokenRequest(app, { grant_type: TOKEN_EXCHANGE, ...asSubject(subject.access_token) }, { authorization: gateway.authorization })
  const { body, claims } = exchanged(t, res, 'embedded exchange')
  t.match(claims, { sub: 'svc-user', client_id: 'svc-gateway', scope: 'orders:read' })
  await app.inject({ method: 'POST', url: '/oauth/revoke', headers: { ...FORM, authorization: user.authorization }, payload: form({ token: subject.refresh_token }) })
  const after = await app.inject({ method: 'POST', url: '/oauth/verify', payload: { token: body.access_token } })
  t.strictSame(after.json(), { valid: false, error: 'revoked' })
})

interface ProofKey { privateKey: KeyObject, jwk: Record<string, string>, jkt: string }

async function proofKey (): Promise<ProofKey> {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const jwk = publicKey.export({ format: 'jwk' }) as Record<string, string>
  return { privateKey, jwk, jkt: await calculateJwkThumbprint(jwk) }
}

/** A DPoP proof for a token request, signed by jose (RFC 9449 §4.2). */
async function proof (key: ProofKey, htu: string): Promise<string> {
  return await new SignJWT({ jti: randomUUID(), htm: 'POST', htu, iat: Math.floor(Date.now() / 1000) })
    .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk: key.jwk })
    .sign(key.privateKey)
}

test('DPoP: an exchange with a proof is bound to its key; a bound subject or actor token needs a proof of its own key', async (t) => {
  const { app, subject } = await scene(t)
  const htu = `${app.config.publicUrl}/oauth/token`
  const [holder, other] = await Promise.all([proofKey(), proofKey()])
  const withProof = async (clientId: string, fields: Record<string, string>, key?: ProofKey): Promise<LightMyRequestResponse> =>
    await tokenRequest(app, { grant_type: TOKEN_EXCHANGE, ...fields }, {
      authorization: basicAuth(clientId, SECRET), ...(key === undefined ? {} : { dpop: await proof(key, htu) })
    })

  const bound = exchanged(t, await withProof('svc-gateway', asSubject(subject.access_token), other), 'a bearer subject token, exchanged with a proof')
  t.equal(bound.body.token_type, 'DPoP', 'token_type DPoP (RFC 9449 §5)')
  t.strictSame(bound.claims.cnf, { jkt: other.jkt }, 'cnf.jkt: the thumbprint of the proof\'s key')

  const boundSubject = await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-user', SECRET), dpop: await proof(holder, htu) })
  t.equal(boundSubject.json().token_type, 'DPoP')
  const boundToken = String(boundSubject.json().access_token)
  t.match(refused(t, await withProof('svc-gateway', asSubject(boundToken)), 'invalid_request', 'a bound subject token without a proof', [boundToken]), /subject_token is bound to a DPoP key/)
  refused(t, await withProof('svc-gateway', asSubject(boundToken), other), 'invalid_request', 'a bound subject token with a proof of another key', [boundToken])
  const held = exchanged(t, await withProof('svc-gateway', asSubject(boundToken), holder), 'a bound subject token with a proof of its key')
  t.equal(held.body.token_type, 'DPoP')
  t.strictSame(held.claims.cnf, { jkt: holder.jkt }, 'and the token issued stays bound to that key')

  const actorToken = String((await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-agent', SECRET), dpop: await proof(holder, htu) })).json().access_token)
  t.match(refused(t, await withProof('svc-gateway', { ...asSubject(subject.access_token), ...asActor(actorToken) }, other), 'invalid_request', 'a bound actor token with a proof of another key', [actorToken]), /actor_token is bound to a DPoP key/)
  exchanged(t, await withProof('svc-gateway', { ...asSubject(subject.access_token), ...asActor(actorToken) }, holder), 'a bound actor token with a proof of its key')
})
