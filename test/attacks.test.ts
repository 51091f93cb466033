// Hostile input at every endpoint, and what it must not do. Forged tokens are
// refused with the reason the service documents and make it fetch nothing;
// a failed client authentication answers the same whatever failed; malformed,
// ambiguous and oversized bodies are 4xx OAuth errors; SQL and Redis
// metacharacters in any parameter are mere data. After each attack the state
// is checked: nothing was revoked, the clients table holds exactly the
// clients inserted, no Redis key appeared outside the test's prefix, and a
// genuine client still gets tokens.
//
// What test/verify.test.ts, test/token.test.ts and test/keys.test.ts already
// assert (each forged token at /oauth/verify, the Basic decoding at the token
// endpoint, the 72-byte limit with client_secret_post, ...) is not repeated:
// this file covers the other endpoints, the attacker's own keys, and the
// state the attacks leave behind.
import { createHmac, createPublicKey, randomBytes, randomUUID, sign } from 'node:crypto'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { Redis } from 'ioredis'
import { clientCacheKey, insertClientRow, MAX_SECRET_BYTES } from '../plugins/clients.js'
import { MAX_TOKEN_LENGTH } from '../plugins/keys.js'
import {
  backends,
  basicAuth,
  build,
  decodeJwt,
  form,
  FORM,
  generateRsaKeyPair,
  insertClient,
  issueTokens,
  sql,
  TEST_REDIS_URL,
  testKeys
} from './helper.js'

type Fields = Record<string, string>
type Headers = Record<string, string>
type Claims = Record<string, unknown>

const CLIENT = 'svc-attacked'
const SECRET = 'attacked-secret'
const REALM = 'Basic realm="session-service"'
const JSON_TYPE = { 'content-type': 'application/json' }

/** The attacker's RSA key pair: a real key, not one the service publishes. */
const attackerKeys = generateRsaKeyPair()

// ---------------------------------------------------------------- requests

// Every request comes from an address of its own. These tests fail many
// client authentications on purpose, and the per-address failure throttle
// (AUTH_FAILURE_LIMIT, AUTH_FAILURE_LIMIT_PER_ADDRESS) would otherwise turn
// later answers into 429s, hiding what each input gets by itself.
let sent = 0
function nextAddress (): string {
  sent++
  return `10.${(sent >> 16) & 255}.${(sent >> 8) & 255}.${sent & 255}`
}

/** POST a form (fields or a raw body) to one of the form endpoints. */
async function postForm (app: FastifyInstance, url: string, body: Fields | string | Readable, headers: Headers = {}): Promise<LightMyRequestResponse> {
  const payload = typeof body === 'string' || body instanceof Readable ? body : form(body)
  return await app.inject({ method: 'POST', url, headers: { ...FORM, ...headers }, payload, remoteAddress: nextAddress() })
}

/** POST a raw JSON body to /oauth/verify. */
async function postVerify (app: FastifyInstance, body: string | Readable, headers: Headers = JSON_TYPE): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/oauth/verify', headers, payload: body, remoteAddress: nextAddress() })
}

async function verifyToken (app: FastifyInstance, token: string, audience?: string): Promise<LightMyRequestResponse> {
  return await postVerify(app, JSON.stringify(audience === undefined ? { token } : { token, audience }))
}

const basicOf = (clientId: string, secret: string): Headers => ({ authorization: basicAuth(clientId, secret) })
/** An Authorization header carrying `decoded` as it is, without the form-encoding RFC 6749 §2.3.1 asks for. */
const rawBasic = (decoded: string | Buffer): Headers => ({ authorization: 'Basic ' + Buffer.from(decoded).toString('base64') })

// ---------------------------------------------------------------- answers

// What an error body must never carry: stack frames, file paths, the names
// of internal errors, database or Redis messages.
const LEAKS = [
  /\bat \S+ \(/, /node_modules/, /\.[cm]?[jt]s:\d+/, /\/work\//, /\w*Error\b/, /\b(?:ECONN\w+|FST_ERR\w*|ERR_[A-Z_]+)\b/,
  /SQLSTATE|syntax error at|violates|duplicate key|relation "|ReplyError|WRONGTYPE|FAST_JWT/i
]

function parse (body: string): Record<string, unknown> {
  try {
    const value: unknown = JSON.parse(body)
    return typeof value === 'object' && value !== null ? value as Record<string, unknown> : { value }
  } catch {
    return { unparsable: body.slice(0, 200) }
  }
}

/** Asserts that an answer is an RFC 6749 §5.2 error, and nothing more. */
function assertOAuthError (t: Test, res: LightMyRequestResponse, status: number, error: string, what: string): void {
  t.equal(res.statusCode, status, `${what}: status ${status}`, { body: res.body })
  t.match(res.headers['content-type'], /^application\/json/, `${what}: a JSON answer`)
  const body = parse(res.body)
  t.strictSame(Object.keys(body).sort(), ['error', 'error_description'], `${what}: the body has error and error_description only`)
  t.equal(body.error, error, `${what}: error ${error}`)
  const description = body.error_description
  t.ok(typeof description === 'string' && description.length > 0 && description.length <= 200, `${what}: a short error_description`)
  const leak = LEAKS.find((pattern) => pattern.test(res.body))
  t.equal(leak, undefined, `${what}: no stack trace or internal detail in the answer`)
}

/** 401 invalid_client with the Basic challenge. */
function assertInvalidClient (t: Test, res: LightMyRequestResponse, what: string): void {
  assertOAuthError(t, res, 401, 'invalid_client', what)
  t.equal(res.headers['www-authenticate'], REALM, `${what}: WWW-Authenticate names the realm`)
}

/** What a caller can tell two answers apart by: the status, the body and every header but Date. */
function observable (res: LightMyRequestResponse): { status: number, body: string, headers: Record<string, unknown> } {
  const headers: Record<string, unknown> = { ...res.headers }
  delete headers.date
  return { status: res.statusCode, body: res.body, headers }
}

function assertVerifyRefuses (t: Test, res: LightMyRequestResponse, error: string, what: string): void {
  t.equal(res.statusCode, 200, `${what}: verify answers 200`, { body: res.body })
  t.strictSame(parse(res.body), { valid: false, error }, `${what}: {"valid":false,"error":"${error}"}`)
}

function assertInactive (t: Test, res: LightMyRequestResponse, what: string): void {
  t.equal(res.statusCode, 200, `${what}: introspection answers 200`, { body: res.body })
  t.strictSame(parse(res.body), { active: false }, `${what}: exactly {"active":false}`)
}

function assertRevokeIgnored (t: Test, res: LightMyRequestResponse, what: string): void {
  t.equal(res.statusCode, 200, `${what}: revocation answers 200`, { body: res.body })
  t.equal(res.body, '', `${what}: with an empty body`)
}

// ---------------------------------------------------------------- tokens

function segment (value: unknown): string {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url')
}

/** A compact JWS signed RS256 by `privateKey` (node:crypto only). */
function signRs256 (header: Claims, payload: Claims, privateKey: string): string {
  const input = `${segment(header)}.${segment(payload)}`
  return `${input}.${sign('sha256', Buffer.from(input), privateKey).toString('base64url')}`
}

/** Replaces the character at `index` by another base64url character. */
function flipChar (text: string, index: number): string {
  return text.slice(0, index) + (text[index] === 'A' ? 'B' : 'A') + text.slice(index + 1)
}

async function countRows (databaseUrl: string, table: 'clients' | 'revocations'): Promise<number> {
  const rows = await sql<{ n: number }>(databaseUrl, `SELECT count(*)::int AS n FROM ${table}`)
  return rows[0]?.n ?? -1
}

/**
 * The genuine token still verifies and is active: none of the attacks
 * revoked it, and no revocation was recorded besides the `revoked` the test
 * made on purpose.
 */
async function assertUntouched (t: Test, app: FastifyInstance, databaseUrl: string, accessToken: string, revoked = 0): Promise<void> {
  t.equal(parse((await verifyToken(app, accessToken)).body).valid, true, 'the genuine access token still verifies')
  const introspected = await postForm(app, '/oauth/introspect', { token: accessToken }, basicOf(CLIENT, SECRET))
  t.equal(parse(introspected.body).active, true, 'and is still active at introspection')
  t.equal(await countRows(databaseUrl, 'revocations'), revoked, revoked === 0 ? 'no revocation was recorded' : `only the ${revoked} revocation made on purpose was recorded`)
}

/**
 * A real HTTP server of the attacker's, serving a JWK Set with the attacker's
 * public key at any path, and counting the requests it gets.
 */
async function attackerServer (t: Test): Promise<{ url: string, hits: string[], jwk: Claims }> {
  const hits: string[] = []
  const jwk: Claims = { ...createPublicKey(attackerKeys.publicKey).export({ format: 'jwk' }), kid: 'attacker-key', alg: 'RS256', use: 'sig' }
  const server = createServer((request, response) => {
    hits.push(request.url ?? '')
    response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, hits, jwk }
}

// ---------------------------------------------------------------- 1. tokens

test('key-locating headers with the attacker\'s own key: refused everywhere, and nothing is fetched', async (t) => {
  const server = await attackerServer(t)
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: CLIENT, secret: SECRET })
  const genuine = await issueTokens(app, CLIENT, SECRET)
  const { header, payload } = decodeJwt(genuine.access_token)
  const ourKid = String(header.kid)
  // The forgeries carry the genuine token's claims (its jti, its sid, our
  // issuer and audience): accepted, any of them would be that token.
  const claims = { ...payload }

  // Control: the server answers and counts, so a fetch by the service would show.
  const control = await fetch(`${server.url}/control`)
  t.equal(control.status, 200, 'control: the attacker\'s server answers')
  t.strictSame(server.hits, ['/control'], 'control: and counts the requests it gets')
  server.hits.length = 0

  const base = { alg: 'RS256', typ: 'at+jwt' }
  const { jwk } = server
  const cases: Array<[string, Claims, string]> = [
    ['jku naming the attacker\'s JWK Set, with the attacker\'s kid', { ...base, kid: jwk.kid, jku: `${server.url}/jwks.json` }, 'invalid_header'],
    ['jku naming the attacker\'s JWK Set, with our kid', { ...base, kid: ourKid, jku: `${server.url}/jwks.json` }, 'invalid_header'],
    ['x5u naming the attacker\'s certificate', { ...base, kid: jwk.kid, x5u: `${server.url}/cert.pem` }, 'invalid_header'],
    ['jwk embedding the attacker\'s public key, no kid', { ...base, jwk }, 'invalid_header'],
    ['jwk embedding the attacker\'s public key and its kid', { ...base, kid: jwk.kid, jwk }, 'invalid_header'],
    ['jwk embedding the attacker\'s public key under our kid', { ...base, kid: ourKid, jwk }, 'invalid_header'],
    ['a kid that is the URL of the attacker\'s JWK Set', { ...base, kid: `${server.url}/jwks.json` }, 'unknown_key'],
    ['a kid that is a relative path', { ...base, kid: '../../.well-known/jwks.json' }, 'unknown_key'],
    ['a kid with SQL in it', { ...base, kid: '\' OR 1=1 --' }, 'unknown_key']
  ]
  for (const [what, forgedHeader, error] of cases) {
    const token = signRs256(forgedHeader, claims, attackerKeys.privateKey)
    assertVerifyRefuses(t, await verifyToken(app, token), error, what)
    assertInactive(t, await postForm(app, '/oauth/introspect', { token }, basicOf(CLIENT, SECRET)), what)
    assertRevokeIgnored(t, await postForm(app, '/oauth/revoke', { token }, basicOf(CLIENT, SECRET)), what)
  }

  await sleep(300) // a fetch started in the background would have arrived by now
  t.strictSame(server.hits, [], 'the attacker\'s server was never contacted')
  await assertUntouched(t, app, databaseUrl, genuine.access_token)
})

test('forged and altered tokens are inactive at introspection and revoke nothing', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: CLIENT, secret: SECRET })
  const genuine = await issueTokens(app, CLIENT, SECRET)
  const { header, payload } = decodeJwt(genuine.access_token)
  const [h, p, s] = genuine.access_token.split('.') as [string, string, string]
  const now = Math.floor(Date.now() / 1000)
  const ours = (claims: Claims, extraHeader: Claims = {}): string => signRs256({ ...header, ...extraHeader }, claims, testKeys.privateKey)
  const caller = basicOf(CLIENT, SECRET)

  // Controls: built the same way with our key and the genuine claims, a token
  // is active; so what makes each case below inactive is its one difference.
  const control = await postForm(app, '/oauth/introspect', { token: ours(payload) }, caller)
  t.equal(parse(control.body).active, true, 'control: our key, our header, the genuine claims: active')
  const padded = await postForm(app, '/oauth/introspect', { token: ours({ ...payload, pad: 'x'.repeat(1000) }) }, caller)
  t.equal(parse(padded.body).active, true, 'control: the same with a 1000-character claim: active')

  const cases: Array<[string, string]> = [
    ['alg none, no signature', `${segment({ alg: 'none', typ: 'at+jwt' })}.${segment(payload)}.`],
    ['alg none naming our kid', `${segment({ alg: 'none', typ: 'at+jwt', kid: header.kid })}.${segment(payload)}.`],
    ['HS256 keyed with our public key PEM', (() => {
      const input = `${segment({ ...header, alg: 'HS256' })}.${segment(payload)}`
      return `${input}.${createHmac('sha256', testKeys.publicKey).update(input).digest('base64url')}`
    })()],
    ['signed by another key under our kid', signRs256(header, payload, attackerKeys.privateKey)],
    ['signed by another key under a kid we do not publish', signRs256({ ...header, kid: randomUUID() }, payload, attackerKeys.privateKey)],
    ['our key, another issuer', ours({ ...payload, iss: 'https://evil.example' })],
    ['our key, expired', ours({ ...payload, iat: now - 7200, exp: now - 3600 })],
    ['our key, not yet valid (nbf in the future)', ours({ ...payload, nbf: now + 3600 })],
    ['our key, typ JWT', ours(payload, { typ: 'JWT' })],
    ['our key, over MAX_TOKEN_LENGTH', ours({ ...payload, pad: 'x'.repeat(MAX_TOKEN_LENGTH) })],
    ['the genuine token with a scope added to its payload', `${h}.${segment({ ...payload, scope: 'admin' })}.${s}`],
    ['the genuine token with its sub changed', `${h}.${segment({ ...payload, sub: 'svc-admin' })}.${s}`],
    ['the genuine token with one signature character changed', `${h}.${p}.${flipChar(s, 10)}`],
    ['the genuine token without its signature', `${h}.${p}.`]
  ]
  for (const [what, token] of cases) {
    assertInactive(t, await postForm(app, '/oauth/introspect', { token }, caller), what)
    assertRevokeIgnored(t, await postForm(app, '/oauth/revoke', { token, token_type_hint: 'access_token' }, caller), what)
  }
  // Each forgery names the genuine token's jti and sid: had revocation
  // believed one, the genuine token would now be revoked.
  await assertUntouched(t, app, databaseUrl, genuine.access_token)
})

test('a token signed with our key but of another type than at+jwt is invalid_type', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: CLIENT, secret: SECRET })
  const genuine = await issueTokens(app, CLIENT, SECRET)
  const { header, payload } = decodeJwt(genuine.access_token)
  const typed = (typ: unknown): string => signRs256({ ...header, typ }, { ...payload, jti: randomUUID() }, testKeys.privateKey)

  t.equal(parse((await verifyToken(app, typed('at+jwt'))).body).valid, true, 'control: typ at+jwt, built the same way, is valid')
  // test/keys.test.ts covers "JWT" and a missing typ; these are the near misses.
  const types: unknown[] = ['application/jwt', 'jwt', 'dpop+jwt', 'secevent+jwt', 'logout+jwt', 'at+jwt ', ' at+jwt', 'at+jwt; charset=utf-8',
    'at+jwt\u0000', 'application/at+jwt+json', ['at+jwt'], { 'at+jwt': true }, null, 1, true]
  for (const typ of types) {
    const what = `typ ${JSON.stringify(typ)}`
    assertVerifyRefuses(t, await verifyToken(app, typed(typ)), 'invalid_type', what)
  }
  assertInactive(t, await postForm(app, '/oauth/introspect', { token: typed('dpop+jwt') }, basicOf(CLIENT, SECRET)), 'typ dpop+jwt')
  assertInactive(t, await postForm(app, '/oauth/introspect', { token: typed(['at+jwt']) }, basicOf(CLIENT, SECRET)), 'typ ["at+jwt"]')
})

test('verify: hostile JSON bodies are 400 or 413 invalid_request', async (t) => {
  const { app } = await build(t)
  const now = Math.floor(Date.now() / 1000)
  const jwks = await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })
  const kid: unknown = jwks.json().keys[0]?.kid
  const otherAudience = signRs256({ alg: 'RS256', typ: 'at+jwt', kid },
    { iss: 'session-service', sub: CLIENT, aud: 'other-api', iat: now, exp: now + 300, jti: randomUUID(), client_id: CLIENT },
    testKeys.privateKey)

  // The audience parameter: a token for another audience is valid only when
  // that audience is asked for; no value of another type may widen the check.
  const control = await verifyToken(app, otherAudience, 'other-api')
  t.equal(parse(control.body).valid, true, 'control: the token is valid for the audience it names')
  assertVerifyRefuses(t, await verifyToken(app, otherAudience), 'invalid_audience', 'no audience parameter')
  for (const audience of ['null', '""', '[]', '["other-api"]', '{}', '123', 'true', '{"$ne":"api"}']) {
    const res = await postVerify(app, `{"token":${JSON.stringify(otherAudience)},"audience":${audience}}`)
    assertOAuthError(t, res, 400, 'invalid_request', `audience ${audience}`)
  }

  // Prototype poisoning: refused, and nothing of it reaches Object.prototype.
  for (const body of ['{"token":"a.b.c","__proto__":{"polluted":"yes"}}', '{"token":"a.b.c","constructor":{"prototype":{"polluted":"yes"}}}']) {
    assertOAuthError(t, await postVerify(app, body), 400, 'invalid_request', body)
  }
  t.equal((({}) as Record<string, unknown>).polluted, undefined, 'Object.prototype is not polluted')

  // BODY_LIMIT (16384 bytes): declared, streamed without a length, or under-declared.
  const oversized = JSON.stringify({ token: 'x'.repeat(16_384) })
  assertOAuthError(t, await postVerify(app, oversized), 413, 'invalid_request', 'a JSON body over BODY_LIMIT')
  assertOAuthError(t, await postVerify(app, Readable.from([Buffer.from(oversized)])), 413, 'invalid_request', 'the same body streamed without Content-Length')
  const lying = await postVerify(app, oversized, { ...JSON_TYPE, 'content-length': '20' })
  assertOAuthError(t, lying, 413, 'invalid_request', 'the same body under a Content-Length of 20')
  const short = await postVerify(app, '{"token":"a.b.c"}', { ...JSON_TYPE, 'content-length': '5' })
  assertOAuthError(t, short, 400, 'invalid_request', 'a Content-Length shorter than the body')
})

// ---------------------------------------------------------------- 2. client authentication

test('every failed client authentication answers exactly alike, at every endpoint', async (t) => {
  const { app, databaseUrl } = await build(t)
  const secret72 = 'K'.repeat(MAX_SECRET_BYTES)
  await insertClient(databaseUrl, { id: CLIENT, secret: SECRET })
  await insertClient(databaseUrl, { id: 'svc-72', secret: secret72 })
  // A client that authenticates with keys only: a secret for it never works.
  const jwk = createPublicKey(attackerKeys.publicKey).export({ format: 'jwk' })
  await sql(databaseUrl, 'INSERT INTO clients (client_id, jwks) VALUES ($1, $2)', ['svc-keys-only', JSON.stringify({ keys: [{ ...jwk, kid: 'k1' }] })])
  const genuine = await issueTokens(app, CLIENT, SECRET)

  const endpoints: Array<[string, Fields]> = [
    ['/oauth/token', { grant_type: 'client_credentials' }],
    ['/oauth/introspect', { token: genuine.access_token }],
    ['/oauth/revoke', { token: genuine.access_token }]
  ]
  const failures: Array<[string, string, string]> = [
    ['an unknown client', 'svc-nobody', SECRET],
    ['a client with keys only', 'svc-keys-only', SECRET],
    ['a 73-byte secret whose first 72 bytes are right', 'svc-72', `${secret72}x`],
    ['a secret of 1024 bytes', CLIENT, SECRET.repeat(100).slice(0, 1024)]
  ]
  for (const [url, fields] of endpoints) {
    const reference = await postForm(app, url, { ...fields, client_id: CLIENT, client_secret: 'wrong-secret' })
    assertInvalidClient(t, reference, `${url}, a wrong secret`)
    for (const [what, clientId, secret] of failures) {
      const viaPost = await postForm(app, url, { ...fields, client_id: clientId, client_secret: secret })
      t.strictSame(observable(viaPost), observable(reference), `${url}, ${what} (client_secret_post): the same status, body and headers as a wrong secret`)
      const viaBasic = await postForm(app, url, fields, basicOf(clientId, secret))
      t.strictSame(observable(viaBasic), observable(reference), `${url}, ${what} (Basic): the same status, body and headers as a wrong secret`)
    }
  }
  t.equal((await postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, basicOf('svc-72', secret72))).statusCode, 200,
    'control: the 72-byte secret itself authenticates')
  await assertUntouched(t, app, databaseUrl, genuine.access_token)
})

test('the 72-byte limit applies to the decoded secret, not to its encoded form', async (t) => {
  const { app, databaseUrl } = await build(t)
  // 6 bytes a round ('%', '+', ':', ' ', 'é' in UTF-8), 16 characters once form-encoded.
  const secret = '%+: é'.repeat(12)
  t.equal(Buffer.byteLength(secret), MAX_SECRET_BYTES, 'the secret is 72 bytes')
  await insertClient(databaseUrl, { id: 'svc-encoded', secret })
  const header = basicOf('svc-encoded', secret)
  t.ok(Buffer.from(header.authorization?.slice(6) ?? '', 'base64').length > 200, 'its Basic form is over 200 bytes')

  const ok = await postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, header)
  t.equal(ok.statusCode, 200, 'Basic with the form-encoded 72-byte secret: tokens', { body: ok.body })
  const wrong = await postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, basicOf('svc-encoded', 'wrong'))
  assertInvalidClient(t, wrong, 'a wrong secret')
  for (const extra of ['!', ' ', '%']) {
    const res = await postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, basicOf('svc-encoded', secret + extra))
    t.strictSame(observable(res), observable(wrong), `the 72 right bytes and ${JSON.stringify(extra)}: answered as a wrong secret`)
  }
})

test('Basic (RFC 6749 §2.3.1) at revocation and introspection; raw reserved characters fail', async (t) => {
  const { app, databaseUrl } = await build(t)
  const id = 'tenant:billing +%/ü'
  const secret = 'p:w+d %41/ö'
  await insertClient(databaseUrl, { id, secret })
  await insertClient(databaseUrl, { id: 'tenant:svc', secret: 'plain-secret' })
  await insertClient(databaseUrl, { id: 'a+b', secret: 'plain-secret' })
  await insertClient(databaseUrl, { id: CLIENT, secret: SECRET })
  const ownTokens = await issueTokens(app, id, secret)
  const genuine = await issueTokens(app, CLIENT, SECRET)

  // Form-encoded, reserved and non-ASCII characters authenticate at both endpoints.
  const introspected = await postForm(app, '/oauth/introspect', { token: ownTokens.access_token }, basicOf(id, secret))
  t.equal(parse(introspected.body).active, true, 'introspection with the encoded id and secret: active')
  t.equal(parse(introspected.body).client_id, id, 'the decoded client id')
  assertRevokeIgnored(t, await postForm(app, '/oauth/revoke', { token: ownTokens.access_token }, basicOf(id, secret)), 'revocation with the encoded id and secret')
  assertVerifyRefuses(t, await verifyToken(app, ownTokens.access_token), 'revoked', 'the token revoked with the encoded credentials')

  // Not encoded: a raw ':' in the id ends the id there; a raw '+' is a space.
  const unknown = await postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, basicOf('svc-nobody', 'plain-secret'))
  assertInvalidClient(t, unknown, 'an unknown client')
  const raw: Array<[string, string, string]> = [
    ['a raw ":" in the id', 'tenant:svc:plain-secret', 'tenant:svc'],
    ['a raw "+" in the id', 'a+b:plain-secret', 'a+b']
  ]
  for (const [what, decoded, clientId] of raw) {
    for (const url of ['/oauth/token', '/oauth/introspect', '/oauth/revoke']) {
      const res = await postForm(app, url, { grant_type: 'client_credentials', token: genuine.access_token }, rawBasic(decoded))
      t.strictSame(observable(res), observable(unknown), `${url}, ${what}: answered as an unknown client`)
    }
    const encoded = await postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, basicOf(clientId, 'plain-secret'))
    t.equal(encoded.statusCode, 200, `control: ${clientId} form-encoded authenticates`)
  }

  // Malformed Basic, or Basic with a secret in the body too.
  const malformed: Array<[string, Headers, Fields]> = [
    ['no colon', rawBasic(`${CLIENT}${SECRET}`), {}],
    ['characters outside base64', { authorization: 'Basic ****' }, {}],
    ['base64 of nothing', { authorization: 'Basic' }, {}],
    ['a bad percent-escape in the id', rawBasic(`svc%zz:${SECRET}`), {}],
    ['a truncated percent-escape in the secret', rawBasic(`${CLIENT}:secret%4`), {}],
    ['Basic and client_secret in the body', basicOf(CLIENT, SECRET), { client_secret: SECRET }],
    ['Basic and another client_id in the body', basicOf(CLIENT, SECRET), { client_id: id }]
  ]
  for (const url of ['/oauth/introspect', '/oauth/revoke']) {
    for (const [what, headers, fields] of malformed) {
      assertOAuthError(t, await postForm(app, url, { token: genuine.access_token, ...fields }, headers), 400, 'invalid_request', `${url}, ${what}`)
    }
  }
  // Bytes that are no UTF-8 decode to replacement characters: an unknown client.
  const notUtf8 = await postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, rawBasic(Buffer.from([0xff, 0xfe, 0x3a, 0xc3, 0x28])))
  t.strictSame(observable(notUtf8), observable(unknown), 'Basic credentials that are not UTF-8: answered as an unknown client')
  await assertUntouched(t, app, databaseUrl, genuine.access_token, 1)
})

// ---------------------------------------------------------------- 3. request bodies

test('form bodies: repeated parameters, wrong media types, oversized and prototype-polluting bodies', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: CLIENT, secret: SECRET })
  const genuine = await issueTokens(app, CLIENT, SECRET)
  const creds = `client_id=${CLIENT}&client_secret=${SECRET}`
  const basic = basicOf(CLIENT, SECRET)

  // RFC 6749 §3.2: request parameters must not be included more than once.
  const repeated: Array<[string, string, string, Headers]> = [
    ['/oauth/token', 'scope twice', `grant_type=client_credentials&scope=read&scope=read&${creds}`, {}],
    ['/oauth/token', 'scope twice, with Basic', 'grant_type=client_credentials&scope=read&scope=write', basic],
    ['/oauth/token', 'client_id twice', `grant_type=client_credentials&${creds}&client_id=${CLIENT}`, {}],
    ['/oauth/token', 'client_id twice, another client second', `grant_type=client_credentials&${creds}&client_id=svc-other`, {}],
    ['/oauth/token', 'grant_type twice, two grants', `grant_type=client_credentials&grant_type=refresh_token&${creds}`, {}],
    ['/oauth/token', 'audience twice', `grant_type=client_credentials&audience=api&audience=api&${creds}`, {}],
    ['/oauth/token', 'resource twice', `grant_type=client_credentials&resource=https://a.example&resource=https://b.example&${creds}`, {}],
    ['/oauth/token', 'refresh_token twice', `grant_type=refresh_token&refresh_token=${genuine.refresh_token}&refresh_token=x`, basic],
    ['/oauth/revoke', 'client_id twice', `token=${genuine.access_token}&${creds}&client_id=${CLIENT}`, {}],
    ['/oauth/revoke', 'token_type_hint twice', `token=${genuine.access_token}&token_type_hint=access_token&token_type_hint=refresh_token`, basic],
    ['/oauth/introspect', 'client_secret twice', `token=${genuine.access_token}&${creds}&client_secret=${SECRET}`, {}]
  ]
  for (const [url, what, body, headers] of repeated) {
    assertOAuthError(t, await postForm(app, url, body, headers), 400, 'invalid_request', `${url}, ${what}`)
  }

  // Anything but application/x-www-form-urlencoded.
  const mediaTypes = ['multipart/form-data; boundary=x', 'text/plain', 'application/x-www-form-urlencodedx', 'application/x-www-form-urlencoded, application/json', 'application/xml']
  for (const url of ['/oauth/token', '/oauth/revoke', '/oauth/introspect']) {
    for (const type of mediaTypes) {
      const res = await postForm(app, url, `grant_type=client_credentials&token=${genuine.access_token}&${creds}`, { 'content-type': type })
      assertOAuthError(t, res, 400, 'invalid_request', `${url}, content type ${type}`)
    }
    const oversized = `token=${genuine.access_token}&${creds}&padding=${'x'.repeat(16_384)}`
    assertOAuthError(t, await postForm(app, url, oversized), 413, 'invalid_request', `${url}, a body over BODY_LIMIT`)
    assertOAuthError(t, await postForm(app, url, Readable.from([Buffer.from(oversized)])), 413, 'invalid_request', `${url}, the same body streamed without Content-Length`)
  }

  // Grant types that are not ours, or look almost like one.
  const grants = ['Client_Credentials', 'client_credentials ', ' client_credentials', 'client_credentials\u0000', 'refresh_token,client_credentials',
    'urn:ietf:params:oauth:grant-type:jwt-bearer', 'urn:ietf:params:oauth:grant-type:token-exchange', 'implicit', '__proto__', 'constructor', 'toString']
  for (const grant of grants) {
    const res = await postForm(app, '/oauth/token', { grant_type: grant, client_id: CLIENT, client_secret: SECRET })
    assertOAuthError(t, res, 400, 'unsupported_grant_type', `grant_type ${JSON.stringify(grant)}`)
  }
  assertOAuthError(t, await postForm(app, '/oauth/token', { grant_type: 'x'.repeat(101), client_id: CLIENT, client_secret: SECRET }), 400, 'invalid_request',
    'a grant_type over 100 characters')

  // Parameter names that would pollute a naive parser's prototypes are unknown parameters, ignored.
  const polluting = `__proto__[polluted]=yes&__proto__=yes&constructor[prototype][polluted]=yes&constructor=yes&toString=yes&hasOwnProperty=yes&grant_type=client_credentials&${creds}`
  const granted = await postForm(app, '/oauth/token', polluting)
  t.equal(granted.statusCode, 200, 'a token request with __proto__, constructor and toString parameters is answered as without them', { body: granted.body })
  const introspected = await postForm(app, '/oauth/introspect', `__proto__=yes&constructor=yes&token=${genuine.access_token}`, basic)
  t.equal(parse(introspected.body).active, true, 'so is an introspection')
  t.equal((({}) as Record<string, unknown>).polluted, undefined, 'Object.prototype is not polluted')
  await assertUntouched(t, app, databaseUrl, genuine.access_token)
})

// ---------------------------------------------------------------- 4. injection

/** Keys of the whole Redis matching a glob, across every prefix. */
async function scanKeys (redis: Redis, pattern: string): Promise<string[]> {
  const found: string[] = []
  let cursor = '0'
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
    found.push(...keys)
    cursor = next
  } while (cursor !== '0')
  return found
}

const globEscape = (value: string): string => value.replace(/[*?[\]\\]/g, '\\$&')

test('SQL and Redis metacharacters in every parameter: OAuth errors, and nothing changes', async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t)
  const marker = randomBytes(6).toString('hex')
  const hostile = ['\' OR 1=1 --', '"; DROP TABLE clients; --', '*', '\r\nFLUSHALL\r\n', 'client:v2:*', '\') OR (\'a\'=\'a', '$1', '\\', '%00%', '*\r\nDEL *\r\n']
  // Each string as it is, and with a marker that only this run's requests can have put in a key.
  const values = hostile.flatMap((value) => [value, `${value} ${marker}`])

  // The known client, allowed enough requests for all of the below; and
  // clients whose ids are themselves hostile, registered legitimately (with
  // a secret of their own: the requests below present the known client's).
  await insertClient(databaseUrl, { id: CLIENT, secret: SECRET, rateLimit: 100_000 })
  const hostileIds = [`client:v2:* ${marker}`, `\r\nFLUSHALL\r\n ${marker}`, `' OR 1=1 -- ${marker}`]
  const hostileSecret = 'hostile-id-secret'
  // At the service's bcrypt cost: a cheaper hash would be replaced at the
  // first success, and its cache entry dropped, under the control below.
  for (const id of hostileIds) await insertClientRow(app.db, { id, secret: hostileSecret })
  const inserted = [CLIENT, ...hostileIds].sort()
  const genuine = await issueTokens(app, CLIENT, SECRET)

  const redis = backends.redis ? new Redis(TEST_REDIS_URL) : undefined
  t.teardown(async () => { await redis?.quit() })
  const patterns = [`*${marker}*`, ...hostile.map((value) => `*${globEscape(value)}*`)]
  const before = new Set<string>()
  if (redis !== undefined) {
    await redis.set(`${redisPrefix}attacks:sentinel`, 'still here')
    for (const pattern of patterns) for (const key of await scanKeys(redis, pattern)) before.add(key)
  }

  const basic = basicOf(CLIENT, SECRET)
  const cc = { grant_type: 'client_credentials' }
  // Ids reach the client cache and PostgreSQL: every value, both ways. A
  // failed authentication costs a bcrypt compare, so the paths that share
  // that code (the secret, the other endpoints) take the plain strings only.
  for (const value of values) {
    const v = JSON.stringify(value)
    assertInvalidClient(t, await postForm(app, '/oauth/token', { ...cc, client_id: value, client_secret: SECRET }), `client_id ${v}`)
    assertInvalidClient(t, await postForm(app, '/oauth/token', cc, basicOf(value, SECRET)), `Basic id ${v}`)
  }
  for (const [index, value] of hostile.entries()) {
    const v = JSON.stringify(value)
    assertInvalidClient(t, await postForm(app, '/oauth/token', { ...cc, client_id: CLIENT, client_secret: value }), `client_secret ${v}`)
    if (index % 2 === 0) {
      assertInvalidClient(t, await postForm(app, '/oauth/introspect', { token: genuine.access_token }, basicOf(value, value)), `introspection, Basic id and secret ${v}`)
    } else {
      assertInvalidClient(t, await postForm(app, '/oauth/revoke', { token: genuine.access_token, client_id: value, client_secret: value }), `revocation, client_id and client_secret ${v}`)
    }
  }
  for (const value of values) {
    const v = JSON.stringify(value)
    assertOAuthError(t, await postForm(app, '/oauth/token', { ...cc, scope: value }, basic), 400, 'invalid_scope', `scope ${v}`)
    assertOAuthError(t, await postForm(app, '/oauth/token', { ...cc, audience: value }, basic), 400, 'invalid_target', `audience ${v}`)
    assertOAuthError(t, await postForm(app, '/oauth/token', { ...cc, resource: value }, basic), 400, 'invalid_target', `resource ${v}`)
    assertOAuthError(t, await postForm(app, '/oauth/token', { grant_type: 'refresh_token', refresh_token: value }, basic), 400, 'invalid_grant', `refresh_token ${v}`)
    const refreshWith = { grant_type: 'refresh_token', refresh_token: genuine.refresh_token }
    assertOAuthError(t, await postForm(app, '/oauth/token', { ...refreshWith, scope: value }, basic), 400, 'invalid_scope', `a real refresh token, scope ${v}`)
    assertOAuthError(t, await postForm(app, '/oauth/token', { ...refreshWith, audience: value }, basic), 400, 'invalid_target', `a real refresh token, audience ${v}`)
    assertOAuthError(t, await postForm(app, '/oauth/token', { grant_type: value }, basic), 400, 'unsupported_grant_type', `grant_type ${v}`)
    assertRevokeIgnored(t, await postForm(app, '/oauth/revoke', { token: value }, basic), `revocation of token ${v}`)
    assertInactive(t, await postForm(app, '/oauth/introspect', { token: value }, basic), `introspection of token ${v}`)
    assertVerifyRefuses(t, await verifyToken(app, value), 'malformed', `verify token ${v}`)
    assertVerifyRefuses(t, await verifyToken(app, genuine.access_token, value), 'invalid_audience', `verify audience ${v}`)
  }

  // Very long ids: over the 255-character bound in a form they are malformed
  // (400); in Basic they are simply unknown (401).
  const longIds = ['x'.repeat(255), '\' OR 1=1 --'.repeat(100), `${'client:v2:*'.repeat(1000)}${marker}`]
  for (const id of longIds) {
    const what = `an id of ${id.length} characters`
    const viaPost = await postForm(app, '/oauth/token', { ...cc, client_id: id, client_secret: SECRET })
    if (id.length <= 255) assertInvalidClient(t, viaPost, `${what} (client_secret_post)`)
    else assertOAuthError(t, viaPost, 400, 'invalid_request', `${what} (client_secret_post)`)
    assertInvalidClient(t, await postForm(app, '/oauth/token', cc, basicOf(id, SECRET)), `${what} (Basic)`)
  }

  // Nothing changed: the same clients, a usable refresh token, a known client served.
  t.equal(await countRows(databaseUrl, 'clients'), inserted.length, 'the clients table holds exactly the clients inserted')
  const ids = await sql<{ client_id: string }>(databaseUrl, 'SELECT client_id FROM clients ORDER BY client_id')
  t.strictSame(ids.map((row) => row.client_id).sort(), inserted, 'and they are the same clients')
  const refreshed = await postForm(app, '/oauth/token', { grant_type: 'refresh_token', refresh_token: genuine.refresh_token }, basic)
  t.equal(refreshed.statusCode, 200, 'the refresh token refused with hostile scopes and audiences still refreshes', { body: refreshed.body })
  const again = await postForm(app, '/oauth/token', cc, basic)
  t.equal(again.statusCode, 200, 'the known client still gets tokens')
  for (const id of hostileIds) {
    const res = await postForm(app, '/oauth/token', cc, basicOf(id, hostileSecret))
    t.equal(res.statusCode, 200, `a client registered as ${JSON.stringify(id)} gets tokens`, { body: res.body })
    t.equal(decodeJwt(String(parse(res.body).access_token)).payload.sub, id, 'issued to exactly that id')
  }
  await assertUntouched(t, app, databaseUrl, String(parse(again.body).access_token))

  if (redis === undefined) {
    t.comment('no Redis server: the Redis checks are skipped (the store is in the database)')
    return
  }
  t.equal(await redis.get(`${redisPrefix}attacks:sentinel`), 'still here', 'Redis was not flushed: a key set before the attacks is still there')
  // Positive control: the hostile ids' cache entries are found, under the
  // prefix. Cached afresh first: the entry made when the attacks began may
  // have outlived CLIENT_CACHE_TTL by now on a slow machine.
  await app.clients.forget(hostileIds[0] ?? '')
  t.equal((await postForm(app, '/oauth/token', cc, basicOf(hostileIds[0] ?? '', hostileSecret))).statusCode, 200)
  const cached = await scanKeys(redis, `${globEscape(redisPrefix)}*${marker}*`)
  t.ok(cached.includes(`${redisPrefix}${clientCacheKey(hostileIds[0] ?? '')}`), 'control: the scan finds the cache entry of a hostile client id, under the prefix')
  const created: string[] = []
  for (const pattern of patterns) {
    for (const key of await scanKeys(redis, pattern)) if (!before.has(key)) created.push(key)
  }
  t.strictSame(created.filter((key) => !key.startsWith(redisPrefix)), [], 'no key holding an injected string was created outside the test\'s prefix')
})

test('a NUL character in a client id is refused like any unknown client', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: CLIENT, secret: SECRET })
  const genuine = await issueTokens(app, CLIENT, SECRET)
  const unknown = await postForm(app, '/oauth/token', { grant_type: 'client_credentials', client_id: 'svc-nobody', client_secret: SECRET })
  assertInvalidClient(t, unknown, 'an unknown client')
  const unknownIntrospection = await postForm(app, '/oauth/introspect', { token: genuine.access_token }, basicOf('svc-nobody', SECRET))

  const cases: Array<[string, () => Promise<LightMyRequestResponse>, LightMyRequestResponse]> = [
    ['client_secret_post, client_id "svc\\u0000"', async () => await postForm(app, '/oauth/token', { grant_type: 'client_credentials', client_id: `${CLIENT}\u0000`, client_secret: SECRET }), unknown],
    ['Basic, id "\\u0000"', async () => await postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, basicOf('\u0000', SECRET)), unknown],
    ['introspection, Basic id "svc\\u0000"', async () => await postForm(app, '/oauth/introspect', { token: genuine.access_token }, basicOf(`${CLIENT}\u0000`, SECRET)), unknownIntrospection]
  ]
  for (const [what, send, reference] of cases) {
    const res = await send()
    // PostgreSQL text cannot hold a NUL: asked, it would fail, and the answer
    // would be a 503 claiming the database is down.
    t.not(res.statusCode, 503, `${what}: not 503 (the database is not unavailable)`)
    t.strictSame(observable(res), observable(reference), `${what}: answered exactly as an unknown client`)
  }
  // Whatever the answer, the service is still there for everyone else.
  t.equal((await postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, basicOf(CLIENT, SECRET))).statusCode, 200, 'the known client still gets tokens')
  t.equal(await countRows(databaseUrl, 'clients'), 1, 'the clients table holds the one client inserted')
})
