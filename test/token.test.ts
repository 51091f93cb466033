// POST /oauth/token with grant_type=client_credentials: client authentication
// (HTTP Basic per RFC 6749 §2.3.1 and client_secret_post), the token response
// and the access token it carries, every error the endpoint answers, the
// client cache lifetime and per-client rate limiting.
import { createPublicKey, randomUUID, verify as verifySignature, type JsonWebKey } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import bcrypt from 'bcryptjs'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { FORM, basicAuth, build, decodeJwt, form, insertClient, issueTokens, needs, sql, tokenRequest, verify } from './helper.js'

const CLIENT_CREDENTIALS = { grant_type: 'client_credentials' }
const DEFAULT_REALM = 'Basic realm="session-service"'
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const BASE64URL = /^[A-Za-z0-9_-]+$/

/** An Authorization header carrying `decoded` as it is (no form-encoding). */
function rawBasic (decoded: string): string {
  return 'Basic ' + Buffer.from(decoded, 'utf8').toString('base64')
}

/** Asserts an RFC 6749 §5.2 error: status, code, and a body of exactly error and error_description. */
function assertOAuthError (t: Test, res: LightMyRequestResponse, status: number, error: string, what: string): void {
  t.equal(res.statusCode, status, `${what}: status`)
  t.match(res.headers['content-type'], /^application\/json/, `${what}: JSON content type`)
  const body = res.json()
  t.equal(body.error, error, `${what}: error code`)
  t.same(Object.keys(body).sort(), ['error', 'error_description'], `${what}: body has exactly error and error_description`)
  t.type(body.error_description, 'string', `${what}: error_description is a string`)
}

/** invalid_client: 401 with the Basic challenge naming the issuer as realm. */
function assertInvalidClient (t: Test, res: LightMyRequestResponse, what: string, challenge = DEFAULT_REALM): void {
  assertOAuthError(t, res, 401, 'invalid_client', what)
  t.equal(res.headers['www-authenticate'], challenge, `${what}: WWW-Authenticate`)
}

/** POST /oauth/token with a raw payload and headers (no defaults added). */
async function postToken (app: FastifyInstance, headers: Record<string, string>, payload?: string | Record<string, unknown>): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/oauth/token', headers, ...(payload === undefined ? {} : { payload }) })
}

async function publishedKey (app: FastifyInstance): Promise<JsonWebKey & { kid: string }> {
  const res = await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })
  const key = res.json().keys[0]
  if (key === undefined) throw new Error(`no key in the JWKS: ${res.body}`)
  return key
}

test('client_secret_post: a client inserted by SQL gets a token response', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-post', secret: 'post-secret' })
  const res = await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-post', client_secret: 'post-secret' })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^application\/json/)
  const body = res.json()
  t.same(Object.keys(body).sort(), ['access_token', 'expires_in', 'refresh_token', 'token_type'], 'exactly the four token response fields')
  t.type(body.access_token, 'string')
  t.equal(body.access_token.split('.').length, 3, 'access_token is a compact JWS')
  t.equal(body.token_type, 'Bearer')
  t.equal(body.expires_in, 3600, 'expires_in is the default JWT_EXPIRY in seconds')
  t.ok(Number.isInteger(body.expires_in), 'expires_in is an integer')
  t.type(body.refresh_token, 'string')
  t.match(body.refresh_token, BASE64URL, 'refresh_token is base64url')
  t.ok(body.refresh_token.length >= 43, 'refresh_token carries at least 32 random bytes')
  const checked = await verify(app, body.access_token)
  t.equal(checked.json().valid, true, 'the access token verifies')
})

test('client_secret_basic: a client inserted by SQL gets a token response', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-basic', secret: 'basic-secret' })
  const res = await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: basicAuth('svc-basic', 'basic-secret') })
  t.equal(res.statusCode, 200)
  const body = res.json()
  t.equal(body.token_type, 'Bearer')
  t.equal(body.expires_in, 3600)
  t.type(body.refresh_token, 'string')
  t.equal(decodeJwt(body.access_token).payload.sub, 'svc-basic', 'the token is issued to the Basic client')
  // The scheme name is case-insensitive (RFC 7235 §2.1).
  const lower = await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: basicAuth('svc-basic', 'basic-secret').replace(/^Basic/, 'basic') })
  t.equal(lower.statusCode, 200, 'lower-case "basic" scheme accepted')
})

test('the token response is not cacheable', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-cache-headers', secret: 'secret' })
  const post = await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-cache-headers', client_secret: 'secret' })
  t.equal(post.statusCode, 200)
  t.equal(post.headers['cache-control'], 'no-store')
  t.equal(post.headers.pragma, 'no-cache')
  const basic = await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: basicAuth('svc-cache-headers', 'secret') })
  t.equal(basic.statusCode, 200)
  t.equal(basic.headers['cache-control'], 'no-store')
  t.equal(basic.headers.pragma, 'no-cache')
})

test('the access token header names RS256 and the kid published in the JWKS', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-header', secret: 'secret' })
  const tokens = await issueTokens(app, 'svc-header', 'secret')
  const jwk = await publishedKey(app)
  const { header } = decodeJwt(tokens.access_token)
  t.same(header, { alg: 'RS256', typ: 'at+jwt', kid: jwk.kid }, 'header is exactly alg, typ and the published kid')

  // The signature verifies with the published public key.
  const [h, p, s] = tokens.access_token.split('.')
  const publicKey = createPublicKey({ key: jwk, format: 'jwk' })
  const signed = Buffer.from(`${h ?? ''}.${p ?? ''}`)
  t.ok(verifySignature('RSA-SHA256', signed, publicKey, Buffer.from(s ?? '', 'base64url')), 'RS256 signature valid under the JWKS key')
})

test('the access token claims: iss, sub, aud, iat, exp = iat + expires_in, jti, client_id', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-claims', secret: 'secret' })
  const before = Math.floor(Date.now() / 1000)
  const tokens = await issueTokens(app, 'svc-claims', 'secret')
  const after = Math.ceil(Date.now() / 1000)
  const { payload } = decodeJwt(tokens.access_token)
  t.equal(payload.iss, 'session-service')
  t.equal(payload.sub, 'svc-claims')
  t.equal(payload.aud, 'api')
  t.equal(payload.client_id, 'svc-claims')
  t.ok(Number.isInteger(payload.iat), 'iat is an integer')
  const iat = payload.iat as number
  t.ok(iat >= before - 1 && iat <= after + 1, 'iat is the time of issue')
  t.equal(payload.exp, iat + tokens.expires_in, 'exp = iat + expires_in')
  t.match(payload.jti, UUID, 'jti is a UUID')
})

test('JWT_ISSUER, JWT_AUDIENCE and JWT_EXPIRY shape the token and the response', async (t) => {
  const issuer = 'https://auth.example.test'
  const { app, databaseUrl } = await build(t, { env: { JWT_ISSUER: issuer, JWT_AUDIENCE: 'orders', JWT_EXPIRY: '15m' } })
  await insertClient(databaseUrl, { id: 'svc-configured', secret: 'secret' })
  const tokens = await issueTokens(app, 'svc-configured', 'secret')
  t.equal(tokens.expires_in, 900)
  const { payload } = decodeJwt(tokens.access_token)
  t.equal(payload.iss, issuer)
  t.equal(payload.aud, 'orders')
  t.equal(payload.exp, (payload.iat as number) + 900)
  const rejected = await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-configured', client_secret: 'wrong' })
  assertInvalidClient(t, rejected, 'wrong secret', `Basic realm="${issuer}"`)
})

test('two grants give different jti and different refresh tokens', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-twice', secret: 'secret' })
  const first = await issueTokens(app, 'svc-twice', 'secret')
  const second = await issueTokens(app, 'svc-twice', 'secret')
  t.not(decodeJwt(first.access_token).payload.jti, decodeJwt(second.access_token).payload.jti, 'different jti')
  t.not(first.refresh_token, second.refresh_token, 'different refresh tokens')
  t.not(first.access_token, second.access_token, 'different access tokens')
})

test('Basic: id and secret with reserved and non-ASCII characters work when form-encoded', async (t) => {
  const { app, databaseUrl } = await build(t)
  const id = 'svc:a%b+c d/é日本'
  const secret = 's3:cr%zz+t p/é日本'
  await insertClient(databaseUrl, { id, secret })

  // '+' for a space (application/x-www-form-urlencoded), as basicAuth does.
  const plus = await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: basicAuth(id, secret) })
  t.equal(plus.statusCode, 200, 'space encoded as +')
  t.equal(decodeJwt(plus.json().access_token).payload.sub, id, 'sub is the decoded client id')

  // %20 for a space is the same value.
  const percent = 'Basic ' + Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')
  const pct = await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: percent })
  t.equal(pct.statusCode, 200, 'space encoded as %20')

  // The same credentials in the body.
  const post = await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: id, client_secret: secret })
  t.equal(post.statusCode, 200, 'client_secret_post with the same id and secret')
  t.equal(decodeJwt(post.json().access_token).payload.client_id, id)

  // A '+' sent un-encoded is a space, so it is a different secret.
  const unencodedPlus = await tokenRequest(app, CLIENT_CREDENTIALS, {
    authorization: 'Basic ' + Buffer.from(`${encodeURIComponent(id)}:${secret.replace('%', '%25')}`).toString('base64')
  })
  assertInvalidClient(t, unencodedPlus, 'raw + decodes as a space')
})

test('Basic: a raw secret with bad percent-encoding (%zz) is invalid_request', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-pct', secret: 'bad%zzsecret' })
  const res = await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: rawBasic('svc-pct:bad%zzsecret') })
  assertOAuthError(t, res, 400, 'invalid_request', 'raw %zz in the secret')
  const truncated = await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: rawBasic('svc-pct:secret%4') })
  assertOAuthError(t, truncated, 400, 'invalid_request', 'truncated %4 escape')
  const badId = await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: rawBasic('svc%G1:secret') })
  assertOAuthError(t, badId, 400, 'invalid_request', 'bad escape in the client id')
  // Properly encoded, the same secret authenticates.
  const ok = await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: basicAuth('svc-pct', 'bad%zzsecret') })
  t.equal(ok.statusCode, 200, 'the encoded form (%25zz) works')
})

test('Basic: bad base64 characters or no colon are invalid_request', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-b64', secret: 'secret' })
  const valid = Buffer.from('svc-b64:secret').toString('base64')
  const cases: Array<[string, string]> = [
    ['characters outside base64', `Basic ${valid.slice(0, -2)}$!`],
    ['base64url alphabet (- and _)', 'Basic c3Zj-_-_LWI2NDpzZWNyZXQ'],
    ['an embedded space', `Basic ${valid.slice(0, 4)} ${valid.slice(4)}`],
    ['no credentials after the scheme', 'Basic '],
    ['no colon', rawBasic('svc-b64secret')]
  ]
  for (const [what, authorization] of cases) {
    const res = await tokenRequest(app, CLIENT_CREDENTIALS, { authorization })
    assertOAuthError(t, res, 400, 'invalid_request', what)
  }
  const ok = await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: `Basic ${valid}` })
  t.equal(ok.statusCode, 200, 'the well-formed header authenticates')
})

test('an Authorization header with the Bearer scheme is invalid_client', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-bearer', secret: 'secret' })
  const tokens = await issueTokens(app, 'svc-bearer', 'secret')
  const res = await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-bearer' }, { authorization: `Bearer ${tokens.access_token}` })
  assertInvalidClient(t, res, 'Bearer scheme')
})

test('missing grant_type is invalid_request', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-nogrant', secret: 'secret' })
  const res = await tokenRequest(app, { client_id: 'svc-nogrant', client_secret: 'secret' })
  assertOAuthError(t, res, 400, 'invalid_request', 'no grant_type')
  const basic = await tokenRequest(app, {}, { authorization: basicAuth('svc-nogrant', 'secret') })
  assertOAuthError(t, basic, 400, 'invalid_request', 'no grant_type, Basic credentials')
})

test('an empty grant_type is treated as missing: invalid_request', async (t) => {
  // RFC 6749 §3.2: parameters sent without a value must be treated as if
  // they were omitted (as the spec says for an empty refresh_token).
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-emptygrant', secret: 'secret' })
  const empty = await tokenRequest(app, { grant_type: '', client_id: 'svc-emptygrant', client_secret: 'secret' })
  assertOAuthError(t, empty, 400, 'invalid_request', 'empty grant_type')
})

test('a repeated grant_type is invalid_request', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-repeat', secret: 'secret' })
  const body = 'grant_type=client_credentials&grant_type=client_credentials&client_id=svc-repeat&client_secret=secret'
  const res = await postToken(app, FORM, body)
  assertOAuthError(t, res, 400, 'invalid_request', 'grant_type twice')
  const secretTwice = 'grant_type=client_credentials&client_id=svc-repeat&client_secret=secret&client_secret=secret'
  assertOAuthError(t, await postToken(app, FORM, secretTwice), 400, 'invalid_request', 'client_secret twice')
})

test('an unsupported grant type is unsupported_grant_type', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-password', secret: 'secret' })
  const password = await tokenRequest(app, { grant_type: 'password', username: 'u', password: 'p', client_id: 'svc-password', client_secret: 'secret' })
  assertOAuthError(t, password, 400, 'unsupported_grant_type', 'password grant')
  const code = await tokenRequest(app, { grant_type: 'authorization_code', code: 'x' }, { authorization: basicAuth('svc-password', 'secret') })
  assertOAuthError(t, code, 400, 'unsupported_grant_type', 'authorization_code grant')
})

test('a JSON body is invalid_request', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-json', secret: 'secret' })
  const res = await postToken(app, { 'content-type': 'application/json' }, { grant_type: 'client_credentials', client_id: 'svc-json', client_secret: 'secret' })
  assertOAuthError(t, res, 400, 'invalid_request', 'application/json body')
  const basic = await postToken(app, { 'content-type': 'application/json', authorization: basicAuth('svc-json', 'secret') }, { grant_type: 'client_credentials' })
  assertOAuthError(t, basic, 400, 'invalid_request', 'application/json body with Basic')
})

test('a request without a body is invalid_request', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-nobody', secret: 'secret' })
  const auth = { authorization: basicAuth('svc-nobody', 'secret') }
  assertOAuthError(t, await postToken(app, auth), 400, 'invalid_request', 'no body, no content type')
  assertOAuthError(t, await postToken(app, { ...FORM, ...auth }), 400, 'invalid_request', 'form content type, no body')
  assertOAuthError(t, await postToken(app, { ...FORM, ...auth }, ''), 400, 'invalid_request', 'form content type, empty body')
})

test('Basic together with client_secret in the body is invalid_request', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-both', secret: 'secret' })
  const res = await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-both', client_secret: 'secret' }, { authorization: basicAuth('svc-both', 'secret') })
  assertOAuthError(t, res, 400, 'invalid_request', 'Basic + client_secret')
  const noId = await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_secret: 'secret' }, { authorization: basicAuth('svc-both', 'secret') })
  assertOAuthError(t, noId, 400, 'invalid_request', 'Basic + client_secret without client_id')
})

test('a body client_id differing from the Basic id is invalid_request', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-one', secret: 'secret-one' })
  await insertClient(databaseUrl, { id: 'svc-two', secret: 'secret-two' })
  const res = await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-two' }, { authorization: basicAuth('svc-one', 'secret-one') })
  assertOAuthError(t, res, 400, 'invalid_request', 'client_id differs from Basic id')
  const same = await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-one' }, { authorization: basicAuth('svc-one', 'secret-one') })
  t.equal(same.statusCode, 200, 'the same client_id in the body is accepted')
})

test('client_secret without client_id is invalid_request', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-secret-only', secret: 'secret' })
  const res = await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_secret: 'secret' })
  assertOAuthError(t, res, 400, 'invalid_request', 'client_secret alone')
})

test('no client credentials is invalid_client', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-nocreds', secret: 'secret' })
  assertInvalidClient(t, await tokenRequest(app, CLIENT_CREDENTIALS), 'no credentials at all')
  assertInvalidClient(t, await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-nocreds' }), 'client_id without secret')
})

test('unknown client and wrong secret answer alike with invalid_client', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-known', secret: 'right-secret' })
  const unknown = await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-unknown', client_secret: 'right-secret' })
  const wrong = await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-known', client_secret: 'wrong-secret' })
  assertInvalidClient(t, unknown, 'unknown client')
  assertInvalidClient(t, wrong, 'wrong secret')
  t.equal(unknown.statusCode, wrong.statusCode, 'same status')
  t.equal(unknown.body, wrong.body, 'same body')
  t.equal(unknown.headers['www-authenticate'], wrong.headers['www-authenticate'], 'same challenge')

  const unknownBasic = await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: basicAuth('svc-unknown', 'right-secret') })
  const wrongBasic = await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: basicAuth('svc-known', 'wrong-secret') })
  assertInvalidClient(t, unknownBasic, 'unknown client (Basic)')
  assertInvalidClient(t, wrongBasic, 'wrong secret (Basic)')
  t.equal(unknownBasic.body, wrongBasic.body, 'same body with Basic')
  t.equal(unknownBasic.body, wrong.body, 'same body whichever the method')
})

test('a secret over 72 bytes never authenticates, even when its 72-byte prefix is right', async (t) => {
  const { app, databaseUrl } = await build(t)
  const ascii = 'A'.repeat(40) + 'b'.repeat(32) // 72 bytes
  const multibyte = 'é'.repeat(36) // 36 characters, 72 bytes in UTF-8
  await insertClient(databaseUrl, { id: 'svc-72', secret: ascii })
  await insertClient(databaseUrl, { id: 'svc-72-utf8', secret: multibyte })

  t.equal((await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-72', client_secret: ascii })).statusCode, 200, 'exactly 72 bytes: 200')
  t.equal((await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: basicAuth('svc-72-utf8', multibyte) })).statusCode, 200, '72 bytes of é: 200')

  // bcrypt only reads 72 bytes: these would match if they were passed on.
  assertInvalidClient(t, await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-72', client_secret: ascii + 'x' }), '73 bytes (post)')
  assertInvalidClient(t, await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: basicAuth('svc-72', ascii + 'extra-bytes') }), '83 bytes (Basic)')
  assertInvalidClient(t, await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-72-utf8', client_secret: multibyte + 'a' }), '37 characters, 73 bytes')
})

test('a disabled client gets unauthorized_client only with its right secret', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-disabled', secret: 'secret', status: 'disabled' })
  const right = await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-disabled', client_secret: 'secret' })
  assertOAuthError(t, right, 400, 'unauthorized_client', 'disabled client, right secret')
  const rightBasic = await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: basicAuth('svc-disabled', 'secret') })
  assertOAuthError(t, rightBasic, 400, 'unauthorized_client', 'disabled client, right secret (Basic)')
  const wrong = await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-disabled', client_secret: 'not-the-secret' })
  assertInvalidClient(t, wrong, 'disabled client, wrong secret')
})

test('a body over 16384 bytes is 413; one of exactly 16384 bytes is accepted', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-large', secret: 'secret' })
  const base = form({ ...CLIENT_CREDENTIALS, client_id: 'svc-large', client_secret: 'secret' }) + '&padding='
  const atLimit = base + 'x'.repeat(16384 - base.length)
  t.equal(Buffer.byteLength(atLimit), 16384)
  const accepted = await postToken(app, FORM, atLimit)
  t.equal(accepted.statusCode, 200, '16384 bytes: 200 (unknown parameters are ignored)')
  const tooLarge = await postToken(app, FORM, atLimit + 'x')
  assertOAuthError(t, tooLarge, 413, 'invalid_request', '16385 bytes')
  const muchTooLarge = await postToken(app, FORM, base + 'x'.repeat(100_000))
  assertOAuthError(t, muchTooLarge, 413, 'invalid_request', '100 KB')
})

test('error responses of the token endpoint are not cacheable either', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { RATE_LIMIT_DEFAULT: '1' } })
  await insertClient(databaseUrl, { id: 'svc-err-cache', secret: 'secret' })
  await insertClient(databaseUrl, { id: 'svc-err-disabled', secret: 'secret', status: 'disabled' })
  const creds = { client_id: 'svc-err-cache', client_secret: 'secret' }
  const cases: Array<[string, () => Promise<LightMyRequestResponse>]> = [
    ['missing grant_type', async () => await tokenRequest(app, creds)],
    ['repeated grant_type', async () => await postToken(app, FORM, 'grant_type=client_credentials&grant_type=client_credentials')],
    ['unsupported grant type', async () => await tokenRequest(app, { grant_type: 'password', ...creds })],
    ['JSON body', async () => await postToken(app, { 'content-type': 'application/json' }, { grant_type: 'client_credentials', ...creds })],
    ['no body', async () => await postToken(app, {})],
    ['malformed Basic header', async () => await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: rawBasic('no-colon') })],
    ['Bearer scheme', async () => await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: 'Bearer abc' })],
    ['wrong secret', async () => await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-err-cache', client_secret: 'wrong' })],
    ['disabled client', async () => await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-err-disabled', client_secret: 'secret' })],
    ['body too large', async () => await postToken(app, FORM, 'grant_type=client_credentials&padding=' + 'x'.repeat(20_000))]
  ]
  for (const [what, send] of cases) {
    const res = await send()
    t.ok(res.statusCode >= 400, `${what}: an error (${res.statusCode})`)
    t.equal(res.headers['cache-control'], 'no-store', `${what}: Cache-Control`)
    t.equal(res.headers.pragma, 'no-cache', `${what}: Pragma`)
  }
  t.equal((await tokenRequest(app, { ...CLIENT_CREDENTIALS, ...creds })).statusCode, 200, 'first request within the limit')
  const limited = await tokenRequest(app, { ...CLIENT_CREDENTIALS, ...creds })
  t.equal(limited.statusCode, 429, 'rate limited')
  t.equal(limited.headers['cache-control'], 'no-store', 'rate limited: Cache-Control')
  t.equal(limited.headers.pragma, 'no-cache', 'rate limited: Pragma')
})

test('CLIENT_CACHE_TTL: disabling a client by SQL takes effect after the TTL', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { CLIENT_CACHE_TTL: '1s' } })
  await insertClient(databaseUrl, { id: 'svc-to-disable', secret: 'secret' })
  const fields = { ...CLIENT_CREDENTIALS, client_id: 'svc-to-disable', client_secret: 'secret' }
  t.equal((await tokenRequest(app, fields)).statusCode, 200, 'enabled: 200 (record now cached)')
  await sql(databaseUrl, "UPDATE clients SET status = 'disabled' WHERE client_id = $1", ['svc-to-disable'])
  const meanwhile = await tokenRequest(app, fields)
  t.ok(meanwhile.statusCode === 200 || meanwhile.statusCode === 400, `right after the UPDATE: cached 200 or already 400 (${meanwhile.statusCode})`)
  await sleep(1200)
  assertOAuthError(t, await tokenRequest(app, fields), 400, 'unauthorized_client', 'after the TTL')
  assertInvalidClient(t, await tokenRequest(app, { ...fields, client_secret: 'wrong' }), 'after the TTL, wrong secret')
})

test('CLIENT_CACHE_TTL: a secret hash changed by SQL takes effect after the TTL', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { CLIENT_CACHE_TTL: '1s' } })
  await insertClient(databaseUrl, { id: 'svc-rotate', secret: 'old-secret' })
  const oldFields = { ...CLIENT_CREDENTIALS, client_id: 'svc-rotate', client_secret: 'old-secret' }
  const newFields = { ...CLIENT_CREDENTIALS, client_id: 'svc-rotate', client_secret: 'new-secret' }
  t.equal((await tokenRequest(app, oldFields)).statusCode, 200, 'old secret: 200 (record now cached)')
  const hash = await bcrypt.hash('new-secret', 10)
  await sql(databaseUrl, 'UPDATE clients SET client_secret_hash = $1 WHERE client_id = $2', [hash, 'svc-rotate'])
  const meanwhile = await tokenRequest(app, oldFields)
  t.ok(meanwhile.statusCode === 200 || meanwhile.statusCode === 401, `right after the UPDATE: cached 200 or already 401 (${meanwhile.statusCode})`)
  await sleep(1200)
  assertInvalidClient(t, await tokenRequest(app, oldFields), 'old secret after the TTL')
  const renewed = await tokenRequest(app, newFields)
  t.equal(renewed.statusCode, 200, 'new secret after the TTL: 200')
  t.equal(decodeJwt(renewed.json().access_token).payload.sub, 'svc-rotate')
})

test('rate limit: the client\'s rate_limit requests, then 429 with Retry-After', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-limited', secret: 'secret', rateLimit: 3 })
  const fields = { ...CLIENT_CREDENTIALS, client_id: 'svc-limited', client_secret: 'secret' }
  for (const remaining of ['2', '1', '0']) {
    const res = await tokenRequest(app, fields)
    t.equal(res.statusCode, 200, `200 with ${remaining} left`)
    t.equal(String(res.headers['x-ratelimit-limit']), '3', 'x-ratelimit-limit is the client\'s rate_limit')
    t.equal(String(res.headers['x-ratelimit-remaining']), remaining, 'x-ratelimit-remaining counts down')
    const reset = Number(res.headers['x-ratelimit-reset'])
    t.ok(Number.isInteger(reset) && reset >= 1 && reset <= 60, `x-ratelimit-reset within the minute (${String(res.headers['x-ratelimit-reset'])})`)
  }
  const limited = await tokenRequest(app, fields)
  assertOAuthError(t, limited, 429, 'rate_limit_exceeded', 'fourth request')
  const retryAfter = String(limited.headers['retry-after'])
  t.match(retryAfter, /^\d+$/, 'Retry-After is delay-seconds')
  t.ok(Number(retryAfter) >= 1 && Number(retryAfter) <= 60, `Retry-After within the minute (${retryAfter})`)
  t.equal(String(limited.headers['x-ratelimit-limit']), '3')
  t.equal(String(limited.headers['x-ratelimit-remaining']), '0')
  t.match(String(limited.headers['x-ratelimit-reset']), /^\d+$/)
  const viaBasic = await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: basicAuth('svc-limited', 'secret') })
  assertOAuthError(t, viaBasic, 429, 'rate_limit_exceeded', 'the limit is per client, whatever the auth method')
})

test('rate limit: a client with NULL rate_limit uses RATE_LIMIT_DEFAULT', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { RATE_LIMIT_DEFAULT: '2' } })
  await insertClient(databaseUrl, { id: 'svc-default-limit', secret: 'secret', rateLimit: null })
  const rows = await sql<{ rate_limit: number | null }>(databaseUrl, 'SELECT rate_limit FROM clients WHERE client_id = $1', ['svc-default-limit'])
  t.equal(rows[0]?.rate_limit, null, 'rate_limit column is NULL')
  const fields = { ...CLIENT_CREDENTIALS, client_id: 'svc-default-limit', client_secret: 'secret' }
  for (const remaining of ['1', '0']) {
    const res = await tokenRequest(app, fields)
    t.equal(res.statusCode, 200)
    t.equal(String(res.headers['x-ratelimit-limit']), '2', 'x-ratelimit-limit is RATE_LIMIT_DEFAULT')
    t.equal(String(res.headers['x-ratelimit-remaining']), remaining)
  }
  const limited = await tokenRequest(app, fields)
  assertOAuthError(t, limited, 429, 'rate_limit_exceeded', 'third request')
  t.match(String(limited.headers['retry-after']), /^\d+$/)
})

test('rate limit: the default RATE_LIMIT_DEFAULT is 60', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-sixty', secret: 'secret' })
  const res = await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-sixty', client_secret: 'secret' })
  t.equal(res.statusCode, 200)
  t.equal(String(res.headers['x-ratelimit-limit']), '60')
  t.equal(String(res.headers['x-ratelimit-remaining']), '59')
})

test('rate limit: one client\'s exhaustion does not affect another client', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-noisy', secret: 'secret', rateLimit: 1 })
  await insertClient(databaseUrl, { id: 'svc-quiet', secret: 'secret', rateLimit: 2 })
  const noisy = { ...CLIENT_CREDENTIALS, client_id: 'svc-noisy', client_secret: 'secret' }
  t.equal((await tokenRequest(app, noisy)).statusCode, 200)
  assertOAuthError(t, await tokenRequest(app, noisy), 429, 'rate_limit_exceeded', 'noisy client over its limit')
  const quiet = await tokenRequest(app, { ...CLIENT_CREDENTIALS, client_id: 'svc-quiet', client_secret: 'secret' })
  t.equal(quiet.statusCode, 200, 'the other client is served')
  t.equal(String(quiet.headers['x-ratelimit-limit']), '2')
  t.equal(String(quiet.headers['x-ratelimit-remaining']), '1', 'its own budget is untouched')
})

test('rate limit: two instances sharing the database and Redis prefix share the counter', { skip: needs.postgres || needs.redis }, async (t) => {
  const first = await build(t)
  const second = await build(t, { databaseUrl: first.databaseUrl, redisPrefix: first.redisPrefix })
  await insertClient(first.databaseUrl, { id: 'svc-shared', secret: 'secret', rateLimit: 3 })
  const fields = { ...CLIENT_CREDENTIALS, client_id: 'svc-shared', client_secret: 'secret' }
  t.equal((await tokenRequest(first.app, fields)).statusCode, 200, 'instance 1: first request')
  t.equal((await tokenRequest(first.app, fields)).statusCode, 200, 'instance 1: second request')
  const third = await tokenRequest(second.app, fields)
  t.equal(third.statusCode, 200, 'instance 2: third request')
  t.equal(String(third.headers['x-ratelimit-remaining']), '0', 'instance 2 sees the requests made on instance 1')
  assertOAuthError(t, await tokenRequest(second.app, fields), 429, 'rate_limit_exceeded', 'instance 2: fourth request')
  assertOAuthError(t, await tokenRequest(first.app, fields), 429, 'rate_limit_exceeded', 'instance 1: fifth request')

  // A third instance with a Redis prefix of its own counts separately.
  const separate = await build(t, { databaseUrl: first.databaseUrl })
  const own = await tokenRequest(separate.app, fields)
  t.equal(own.statusCode, 200, 'another Redis prefix: a counter of its own')
  t.equal(String(own.headers['x-ratelimit-remaining']), '2')
})

test('an unknown route is 404 not_found in JSON', async (t) => {
  const { app } = await build(t)
  const res = await app.inject({ method: 'GET', url: `/no-such-route/${randomUUID()}?x=1` })
  assertOAuthError(t, res, 404, 'not_found', 'GET unknown route')
  const post = await app.inject({ method: 'POST', url: '/oauth/tokens', headers: FORM, payload: form(CLIENT_CREDENTIALS) })
  assertOAuthError(t, post, 404, 'not_found', 'POST to a near-miss path')
})
