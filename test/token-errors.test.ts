// POST /oauth/token: the Basic decoding of RFC 6749 §2.3.1 and every error
// the endpoint answers.
import { test } from 'tap'
import type { LightMyRequestResponse } from 'fastify'
import { assertInvalidClient, assertOAuthError, basicAuth, build, decodeJwt, form, FORM, insertClient, issueTokens, tokenRequest } from './helper.ts'
import { CLIENT_CREDENTIALS, rawBasic, postToken } from './token/requests.ts'

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
