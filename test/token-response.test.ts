// POST /oauth/token with grant_type=client_credentials: client authentication
// (HTTP Basic per RFC 6749 §2.3.1 and client_secret_post), the token response
// and the access token it carries.
import { createPublicKey, verify as verifySignature } from 'node:crypto'
import { test } from 'tap'
import { assertInvalidClient, basicAuth, build, decodeJwt, insertClient, issueTokens, tokenRequest, verify } from './helper.ts'
import { CLIENT_CREDENTIALS, UUID, BASE64URL, publishedKey } from './token/requests.ts'

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
