// DPoP (RFC 9449) as a client and a resource server see it: proofs signed
// with real keys by jose (never by the service's own code), bound tokens,
// every refusal with its RFC code, nonces, bound refreshes, /oauth/verify,
// introspection and discovery.
import { createHash, generateKeyPairSync, randomUUID, sign, type JsonWebKey, type KeyObject } from 'node:crypto'
import { test, type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { calculateJwkThumbprint, SignJWT } from 'jose'
import { insertClientRow } from '../storage/clients.ts'
import { basicAuth, build, decodeJwt, form, FORM, insertClient, sample, scrapeMetrics, sql, tokenRequest } from './helper.ts'
import { migratedDataDir, start } from './embedded/apps.ts'

type ProofAlgorithm = 'ES256' | 'EdDSA' | 'RS256'

interface ProofKey {
  alg: ProofAlgorithm
  privateKey: KeyObject
  /** the public JWK, as the proof's header carries it */
  jwk: JsonWebKey
}

function proofKey (alg: ProofAlgorithm = 'ES256'): ProofKey {
  const pair = alg === 'ES256'
    ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : alg === 'EdDSA' ? generateKeyPairSync('ed25519') : generateKeyPairSync('rsa', { modulusLength: 2048 })
  return { alg, privateKey: pair.privateKey, jwk: pair.publicKey.export({ format: 'jwk' }) }
}

const nowSeconds = (): number => Math.floor(Date.now() / 1000)

/** A proof signed by jose: the claims of a token request to `htu` unless overridden; header members likewise. */
async function makeProof (key: ProofKey, htu: string, claims: Record<string, unknown> = {}, header: Record<string, unknown> = {}): Promise<string> {
  return await new SignJWT({ jti: randomUUID(), htm: 'POST', htu, iat: nowSeconds(), ...claims })
    .setProtectedHeader({ alg: key.alg, typ: 'dpop+jwt', jwk: key.jwk as Record<string, string>, ...header })
    .sign(key.privateKey)
}

const thumbprintOf = async (key: ProofKey): Promise<string> => await calculateJwkThumbprint(key.jwk as Record<string, string>)

const ath = (token: string): string => createHash('sha256').update(token).digest('base64url')

const CLIENT = 'svc-dpop'
const SECRET = 'dpop-secret'
const AUTH = { authorization: basicAuth(CLIENT, SECRET) }

interface DpopApp {
  app: FastifyInstance
  databaseUrl: string
  /** the token endpoint as PUBLIC_URL names it: what htu must be */
  tokenUrl: string
}

async function setup (t: Test, env: Record<string, string> = {}): Promise<DpopApp> {
  const { app, databaseUrl, config } = await build(t, { env })
  await insertClient(databaseUrl, { id: CLIENT, secret: SECRET })
  return { app, databaseUrl, tokenUrl: `${config.publicUrl}/oauth/token` }
}

async function clientCredentials (app: FastifyInstance, proof?: string | string[]): Promise<LightMyRequestResponse> {
  return await app.inject({
    method: 'POST',
    url: '/oauth/token',
    headers: { ...FORM, ...AUTH, ...(proof === undefined ? {} : { dpop: proof }) },
    payload: 'grant_type=client_credentials'
  })
}

async function refresh (app: FastifyInstance, refreshToken: string, proof?: string): Promise<LightMyRequestResponse> {
  return await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: refreshToken }, { ...AUTH, ...(proof === undefined ? {} : { dpop: proof }) })
}

function assertDpopError (t: Test, res: LightMyRequestResponse, error: string, what: string): void {
  t.equal(res.statusCode, 400, `${what}: 400`)
  t.equal(res.json().error, error, `${what}: ${error}`)
}

function assertBound (t: Test, res: LightMyRequestResponse, jkt: string, what: string): { access_token: string, refresh_token: string } {
  t.equal(res.statusCode, 200, `${what}: 200`, { body: res.body })
  const body = res.json()
  t.equal(body.token_type, 'DPoP', `${what}: token_type DPoP`)
  t.strictSame(decodeJwt(body.access_token).payload.cnf, { jkt }, `${what}: cnf.jkt is the proof key's thumbprint`)
  return body
}

test('a proof of each algorithm binds the access token to its key', async (t) => {
  const { app, tokenUrl } = await setup(t)
  for (const alg of ['ES256', 'EdDSA', 'RS256'] as const) {
    const key = proofKey(alg)
    assertBound(t, await clientCredentials(app, await makeProof(key, tokenUrl)), await thumbprintOf(key), alg)
  }
  const bearer = await clientCredentials(app)
  t.equal(bearer.json().token_type, 'Bearer', 'without a proof: a bearer token')
  t.notOk('cnf' in decodeJwt(bearer.json().access_token).payload, 'with no cnf')
})

test('each check of the proof refuses with invalid_dpop_proof', async (t) => {
  const { app, tokenUrl } = await setup(t)
  const key = proofKey()
  const other = proofKey()

  const used = await makeProof(key, tokenUrl)
  t.equal((await clientCredentials(app, used)).statusCode, 200, 'a proof, once')
  assertDpopError(t, await clientCredentials(app, used), 'invalid_dpop_proof', 'the same proof again')

  const base = new URL(tokenUrl)
  t.equal((await clientCredentials(app, await makeProof(key, `${tokenUrl}?x=1#f`))).statusCode, 200, 'htu with a query and fragment: they do not count')
  const normalized = `${base.protocol.toUpperCase()}//${base.host.toUpperCase()}${base.pathname.replace('token', '%74oken')}`
  t.equal((await clientCredentials(app, await makeProof(key, normalized))).statusCode, 200, 'htu differing only in case and percent-encoding')

  const refusals: Array<[string, Promise<string>]> = [
    ['htu of another path', makeProof(key, tokenUrl.replace('/oauth/token', '/oauth/revoke'))],
    ['htu of another host', makeProof(key, tokenUrl.replace(base.hostname, 'evil.example'))],
    ['htu of another scheme', makeProof(key, tokenUrl.replace(/^http:/, 'https:'))],
    ['htm GET', makeProof(key, tokenUrl, { htm: 'GET' })],
    ['iat two minutes old', makeProof(key, tokenUrl, { iat: nowSeconds() - 120 })],
    ['iat a minute ahead', makeProof(key, tokenUrl, { iat: nowSeconds() + 60 })],
    ['no jti', makeProof(key, tokenUrl, { jti: undefined })],
    ['a private key in the jwk header', makeProof(key, tokenUrl, {}, { jwk: key.privateKey.export({ format: 'jwk' }) })],
    ['no typ', makeProof(key, tokenUrl, {}, { typ: undefined })],
    ['typ JWT', makeProof(key, tokenUrl, {}, { typ: 'JWT' })],
    ['a signature of another key', makeProof({ ...other, jwk: key.jwk }, tokenUrl)],
    ['a 1024-bit RSA key', Promise.resolve(shortRsaProof(tokenUrl))],
    ['HS256', new SignJWT({ jti: randomUUID(), htm: 'POST', htu: tokenUrl, iat: nowSeconds() })
      .setProtectedHeader({ alg: 'HS256', typ: 'dpop+jwt', jwk: key.jwk as Record<string, string> }).sign(new Uint8Array(32))],
    ['alg none', Promise.resolve(unsigned({ alg: 'none', typ: 'dpop+jwt', jwk: key.jwk }, { jti: randomUUID(), htm: 'POST', htu: tokenUrl, iat: nowSeconds() }))],
    ['not a JWS', Promise.resolve('not-a-proof')],
    ['htu with user information', makeProof(key, tokenUrl.replace('://', '://user@'))],
    ['htu of another scheme than http(s)', makeProof(key, tokenUrl.replace(/^http:/, 'ftp:'))],
    ['iat as a string', makeProof(key, tokenUrl, { iat: String(nowSeconds()) })],
    ['a nonce that is not a string', makeProof(key, tokenUrl, { nonce: 42 })],
    ['a crit header', Promise.resolve(unsigned({ alg: 'ES256', typ: 'dpop+jwt', jwk: key.jwk, crit: ['exp'], exp: 1 }, { jti: randomUUID(), htm: 'POST', htu: tokenUrl, iat: nowSeconds() }) + 'c2ln')],
    ['a jwk that is not an object', Promise.resolve(unsigned({ alg: 'ES256', typ: 'dpop+jwt', jwk: 'key' }, { jti: randomUUID(), htm: 'POST', htu: tokenUrl, iat: nowSeconds() }) + 'c2ln')],
    ['an Ed25519 jwk with ES256', makeProof({ ...key, jwk: proofKey('EdDSA').jwk }, tokenUrl)],
    ['an EC jwk without y', makeProof({ ...key, jwk: { ...key.jwk, y: undefined } }, tokenUrl)],
    ['an EC jwk off the curve', makeProof({ ...key, jwk: { ...key.jwk, y: key.jwk.x } }, tokenUrl)]
  ]
  for (const [what, proof] of refusals) {
    const res = await clientCredentials(app, await proof)
    assertDpopError(t, res, 'invalid_dpop_proof', what)
    t.notMatch(res.json().error_description, /eyJ/, `${what}: the description does not quote the proof`)
  }
})

test('htu is compared with PUBLIC_URL, never with Host or X-Forwarded-*', async (t) => {
  const { app, tokenUrl } = await setup(t, { TRUST_PROXY: 'true' })
  const key = proofKey()
  const forged = 'https://evil.example/oauth/token'
  const res = await app.inject({
    method: 'POST',
    url: '/oauth/token',
    headers: { ...FORM, ...AUTH, host: 'evil.example', 'x-forwarded-host': 'evil.example', 'x-forwarded-proto': 'https', dpop: await makeProof(key, forged) },
    payload: 'grant_type=client_credentials'
  })
  assertDpopError(t, res, 'invalid_dpop_proof', 'a proof for the host the request names')
  t.equal((await clientCredentials(app, await makeProof(key, tokenUrl))).statusCode, 200, 'a proof for PUBLIC_URL')
})

test('a DPoP header sent twice is refused', async (t) => {
  const { app, tokenUrl } = await setup(t)
  const key = proofKey()
  const [first, second] = [await makeProof(key, tokenUrl), await makeProof(key, tokenUrl)]
  const twice = await clientCredentials(app, [first, second])
  assertDpopError(t, twice, 'invalid_dpop_proof', 'two DPoP headers')
  t.match(twice.json().error_description, /once/, 'told as such')
  // As Node hands two headers on: joined with ", ".
  const joined = await clientCredentials(app, `${first}, ${second}`)
  assertDpopError(t, joined, 'invalid_dpop_proof', 'two proofs in one header')
  t.match(joined.json().error_description, /once/, 'told as such')
  t.equal((await clientCredentials(app, first)).statusCode, 200, 'neither proof was used up')
})

const segment = (value: object): string => Buffer.from(JSON.stringify(value)).toString('base64url')

function unsigned (header: object, claims: object): string {
  return `${segment(header)}.${segment(claims)}.`
}

/** A proof signed with a 1024-bit RSA key, which jose refuses to make: signed with node:crypto. */
function shortRsaProof (htu: string): string {
  const pair = generateKeyPairSync('rsa', { modulusLength: 1024 })
  const input = unsigned({ alg: 'RS256', typ: 'dpop+jwt', jwk: pair.publicKey.export({ format: 'jwk' }) }, { jti: randomUUID(), htm: 'POST', htu, iat: nowSeconds() }).slice(0, -1)
  return `${input}.${sign('sha256', Buffer.from(input), pair.privateKey).toString('base64url')}`
}

test('DPOP_NONCE_REQUIRED: use_dpop_nonce with a nonce to use, then tokens', async (t) => {
  const { app, tokenUrl } = await setup(t, { DPOP_NONCE_REQUIRED: 'true' })
  const key = proofKey()
  const first = await clientCredentials(app, await makeProof(key, tokenUrl))
  assertDpopError(t, first, 'use_dpop_nonce', 'a proof without a nonce')
  const nonce = first.headers['dpop-nonce']
  t.type(nonce, 'string', 'the answer carries a DPoP-Nonce')

  const ok = await clientCredentials(app, await makeProof(key, tokenUrl, { nonce }))
  assertBound(t, ok, await thumbprintOf(key), 'with the nonce')
  t.type(ok.headers['dpop-nonce'], 'string', 'a success carries a fresh nonce too')

  const forged = `${String(nonce).split('.')[0] ?? ''}.${'A'.repeat(43)}`
  const refused = await clientCredentials(app, await makeProof(key, tokenUrl, { nonce: forged }))
  assertDpopError(t, refused, 'use_dpop_nonce', 'a forged nonce')
  t.type(refused.headers['dpop-nonce'], 'string', 'with a nonce to use')
  assertDpopError(t, await clientCredentials(app, await makeProof(key, tokenUrl, { nonce: 'garbage' })), 'use_dpop_nonce', 'a nonce of no shape')
  t.equal((await clientCredentials(app)).statusCode, 200, 'a request without DPoP is not concerned')
})

test('a client with dpop_bound_access_tokens must send a proof', async (t) => {
  const { app, databaseUrl, tokenUrl } = await setup(t)
  await sql(databaseUrl, 'UPDATE clients SET dpop_bound_access_tokens = true WHERE client_id = $1', [CLIENT])
  await app.clients.forget(CLIENT)
  const refused = await clientCredentials(app)
  assertDpopError(t, refused, 'invalid_dpop_proof', 'no proof')
  const key = proofKey()
  const tokens = assertBound(t, await clientCredentials(app, await makeProof(key, tokenUrl)), await thumbprintOf(key), 'with a proof')
  assertDpopError(t, await refresh(app, tokens.refresh_token), 'invalid_dpop_proof', 'a refresh without a proof')
})

test('refresh of a bound session: its key only, and the token survives a wrong key', async (t) => {
  const { app, tokenUrl } = await setup(t)
  const key = proofKey('EdDSA')
  const jkt = await thumbprintOf(key)
  const first = assertBound(t, await clientCredentials(app, await makeProof(key, tokenUrl)), jkt, 'the grant')

  const wrongKey = await refresh(app, first.refresh_token, await makeProof(proofKey(), tokenUrl))
  assertDpopError(t, wrongKey, 'invalid_dpop_proof', 'a proof of another key')
  t.notMatch(wrongKey.json().error_description, new RegExp(jkt), 'the bound key is not told')
  assertDpopError(t, await refresh(app, first.refresh_token), 'invalid_dpop_proof', 'no proof')

  const second = assertBound(t, await refresh(app, first.refresh_token, await makeProof(key, tokenUrl)), jkt, 'the right key, after both refusals')
  t.equal(decodeJwt(second.access_token).payload.sid, decodeJwt(first.access_token).payload.sid, 'the same session')
  assertBound(t, await refresh(app, second.refresh_token, await makeProof(key, tokenUrl)), jkt, 'and again: still bound')
  assertDpopError(t, await refresh(app, first.refresh_token, await makeProof(proofKey(), tokenUrl)), 'invalid_dpop_proof', 'the used token with another key')
  const alive = await app.inject({ method: 'POST', url: '/oauth/verify', payload: { token: second.access_token } })
  t.equal(alive.json().valid, true, 'which does not end the session: without the key, the token is worthless')
  const reused = await refresh(app, first.refresh_token, await makeProof(key, tokenUrl))
  assertDpopError(t, reused, 'invalid_grant', 'the used token, even with the key')
})

test('a session keeps the binding it began with: a proof on the refresh of a bearer session binds that access token only', async (t) => {
  const { app, tokenUrl } = await setup(t)
  const key = proofKey()
  const jkt = await thumbprintOf(key)
  const session = (await clientCredentials(app)).json()
  const bound = assertBound(t, await refresh(app, session.refresh_token, await makeProof(key, tokenUrl)), jkt, 'the refresh with a proof')
  const next = await refresh(app, bound.refresh_token)
  t.equal(next.statusCode, 200, 'its successor is refreshed without a proof: the session is a bearer one')
  t.equal(next.json().token_type, 'Bearer')
  t.notOk('cnf' in decodeJwt(next.json().access_token).payload, 'and that access token is not bound')

  // A thief who refreshes a stolen bearer refresh token with a key of its
  // own does not take the session out of reuse detection: when the client
  // presents the token the thief used, the session is revoked, the thief's
  // tokens with it.
  const stolen = (await clientCredentials(app)).json()
  const thief = proofKey()
  const taken = assertBound(t, await refresh(app, stolen.refresh_token, await makeProof(thief, tokenUrl)), await thumbprintOf(thief), 'the thief\'s refresh')
  assertDpopError(t, await refresh(app, stolen.refresh_token), 'invalid_grant', 'the client presents the used token: reuse')
  assertDpopError(t, await refresh(app, taken.refresh_token, await makeProof(thief, tokenUrl)), 'invalid_grant', 'the thief\'s refresh token is dead')
  const verified = await app.inject({ method: 'POST', url: '/oauth/verify', payload: { token: taken.access_token } })
  t.strictSame(verified.json(), { valid: false, error: 'revoked' }, 'and so is the thief\'s access token')
})

/** POST /oauth/verify with a JSON body. */
async function verifyWith (app: FastifyInstance, body: Record<string, unknown>): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/oauth/verify', payload: body })
}

test('/oauth/verify checks a proof presented with a bound token', async (t) => {
  const { app, tokenUrl } = await setup(t)
  const key = proofKey()
  const jkt = await thumbprintOf(key)
  const token = assertBound(t, await clientCredentials(app, await makeProof(key, tokenUrl)), jkt, 'the grant').access_token
  const url = 'https://api.example.com/orders/42'
  const presented = async (claims: Record<string, unknown> = {}, signer: ProofKey = key): Promise<string> =>
    await makeProof(signer, url, { htm: 'GET', ath: ath(token), ...claims })

  const alone = await verifyWith(app, { token })
  t.equal(alone.json().valid, true, 'without a proof: valid')
  t.strictSame(alone.json().claims.cnf, { jkt }, 'with the binding for the caller to see')

  const proof = await presented()
  const ok = await verifyWith(app, { token, dpop: proof, method: 'GET', url: `${url}?page=2` })
  t.equal(ok.statusCode, 200)
  t.equal(ok.json().valid, true, 'proof, method and url that match: valid')
  t.equal(ok.json().error, undefined)

  const cases: Array<[string, Record<string, unknown>, string]> = [
    ['the same proof again', { dpop: proof, method: 'GET', url }, 'dpop_replayed'],
    ['another method', { dpop: await presented(), method: 'POST', url }, 'dpop_method_mismatch'],
    ['another url', { dpop: await presented(), method: 'GET', url: 'https://api.example.com/orders/43' }, 'dpop_url_mismatch'],
    ['the hash of another token', { dpop: await presented({ ath: ath('other') }), method: 'GET', url }, 'dpop_ath_mismatch'],
    ['no ath', { dpop: await presented({ ath: undefined }), method: 'GET', url }, 'dpop_ath_mismatch'],
    ['a proof of another key', { dpop: await presented({}, proofKey()), method: 'GET', url }, 'dpop_key_mismatch'],
    ['a stale proof', { dpop: await presented({ iat: nowSeconds() - 600 }), method: 'GET', url }, 'dpop_iat_out_of_range']
  ]
  for (const [what, fields, error] of cases) {
    const res = await verifyWith(app, { token, ...fields })
    t.equal(res.statusCode, 200, `${what}: 200`)
    t.strictSame(res.json(), { valid: false, error }, `${what}: ${error}`)
  }

  const bearer = (await clientCredentials(app)).json().access_token
  const unbound = await verifyWith(app, { token: bearer, dpop: await makeProof(key, url, { htm: 'GET', ath: ath(bearer) }), method: 'GET', url })
  t.strictSame(unbound.json(), { valid: false, error: 'dpop_unbound_token' }, 'a proof with a bearer token')

  for (const partial of [{ dpop: proof }, { method: 'GET', url }, { dpop: proof, method: 'GET' }, { dpop: proof, method: 'GET', url: 'not a url' }, { dpop: proof, method: 'get', url }]) {
    const res = await verifyWith(app, { token, ...partial })
    t.equal(res.statusCode, 400, `${JSON.stringify(Object.keys(partial))}: 400`)
    t.equal(res.json().error, 'invalid_request')
  }
})

test('introspection shows the binding; discovery the proof algorithms', async (t) => {
  const { app, tokenUrl } = await setup(t)
  const key = proofKey('RS256')
  const jkt = await thumbprintOf(key)
  const tokens = assertBound(t, await clientCredentials(app, await makeProof(key, tokenUrl)), jkt, 'the grant')
  const introspect = async (token: string): Promise<Record<string, unknown>> =>
    (await app.inject({ method: 'POST', url: '/oauth/introspect', headers: { ...FORM, ...AUTH }, payload: form({ token }) })).json()
  t.match(await introspect(tokens.access_token), { active: true, token_type: 'DPoP', cnf: { jkt } }, 'the access token: DPoP, with cnf')
  t.match(await introspect(tokens.refresh_token), { active: true, token_type: 'refresh_token', cnf: { jkt } }, 'the refresh token: its cnf')
  const bearer = (await clientCredentials(app)).json()
  const plain = await introspect(bearer.access_token)
  t.equal(plain.token_type, 'Bearer')
  t.notOk('cnf' in plain, 'a bearer token has no cnf')

  const discovery = (await app.inject({ method: 'GET', url: '/.well-known/openid-configuration' })).json()
  t.strictSame(discovery.dpop_signing_alg_values_supported, ['ES256', 'EdDSA', 'RS256'])
})

test('a token request without DPoP costs no Redis call; with it, one (the single-use marker)', async (t) => {
  const { app, tokenUrl } = await setup(t)
  if (app.store.kind !== 'redis') return t.pass('no Redis in this run')
  const redisCalls = async (): Promise<number> => sample(await scrapeMetrics(app), 'session_service_dependency_duration_seconds_count{dependency="redis"}') ?? 0
  await clientCredentials(app) // the client record is cached from here on
  const before = await redisCalls()
  t.equal((await clientCredentials(app)).statusCode, 200)
  const bearer = await redisCalls() - before
  const key = proofKey()
  const middle = await redisCalls()
  t.equal((await clientCredentials(app, await makeProof(key, tokenUrl))).statusCode, 200)
  t.equal(await redisCalls() - middle, bearer + 1, 'a proof adds exactly one call')
})

test('embedded (PGlite, no Redis): a client that must use DPoP, nonces, bound refreshes, single use', async (t) => {
  const app = await start(t, await migratedDataDir(t), undefined, { DPOP_NONCE_REQUIRED: 'true' })
  const tokenUrl = `${app.config.publicUrl}/oauth/token`
  await insertClientRow(app.db, { id: CLIENT, secret: SECRET, dpopBoundAccessTokens: true }, 10)
  assertDpopError(t, await clientCredentials(app), 'invalid_dpop_proof', 'no proof')
  const key = proofKey()
  const jkt = await thumbprintOf(key)
  const first = await clientCredentials(app, await makeProof(key, tokenUrl))
  assertDpopError(t, first, 'use_dpop_nonce', 'no nonce')
  let nonce = first.headers['dpop-nonce']

  const proof = await makeProof(key, tokenUrl, { nonce })
  const issued = await clientCredentials(app, proof)
  const tokens = assertBound(t, issued, jkt, 'with the nonce')
  nonce = issued.headers['dpop-nonce']
  assertDpopError(t, await clientCredentials(app, proof), 'invalid_dpop_proof', 'the same proof again')
  const { rows } = await app.db.query<{ jkt: string | null }>('SELECT jkt FROM refresh_tokens')
  t.strictSame(rows, [{ jkt }], 'the session\'s key is in its row')

  assertDpopError(t, await refresh(app, tokens.refresh_token, await makeProof(proofKey(), tokenUrl, { nonce })), 'invalid_dpop_proof', 'a refresh with another key')
  assertBound(t, await refresh(app, tokens.refresh_token, await makeProof(key, tokenUrl, { nonce })), jkt, 'then with its key')
})
