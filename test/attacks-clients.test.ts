// Hostile input at every endpoint, and what it must not do (2: client
// authentication, 3: request bodies). A failed client authentication answers
// the same whatever failed; malformed, ambiguous and oversized bodies are 4xx
// OAuth errors.
import { createPublicKey } from 'node:crypto'
import { Readable } from 'node:stream'
import { test } from 'tap'
import { MAX_SECRET_BYTES } from '../plugins/clients.ts'
import { assertInvalidClient, assertOAuthError, build, insertClient, issueTokens, parseBody, sql } from './helper.ts'
import { type Fields, type Headers, CLIENT, SECRET, attackerKeys, postForm, verifyToken, basicOf, rawBasic, observable, assertVerifyRefuses, assertRevokeIgnored, assertUntouched } from './attacks/common.ts'

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
  t.equal(parseBody(introspected.body).active, true, 'introspection with the encoded id and secret: active')
  t.equal(parseBody(introspected.body).client_id, id, 'the decoded client id')
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
    'urn:ietf:params:oauth:grant-type:jwt-bearer', 'URN:IETF:PARAMS:OAUTH:GRANT-TYPE:TOKEN-EXCHANGE', 'urn:ietf:params:oauth:grant-type:token-exchange ',
    'implicit', '__proto__', 'constructor', 'toString']
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
  t.equal(parseBody(introspected.body).active, true, 'so is an introspection')
  t.equal((({}) as Record<string, unknown>).polluted, undefined, 'Object.prototype is not polluted')
  await assertUntouched(t, app, databaseUrl, genuine.access_token)
})
