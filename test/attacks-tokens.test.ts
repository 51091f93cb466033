// Hostile input at every endpoint, and what it must not do (1: tokens).
// Forged tokens are refused with the reason the service documents and make
// it fetch nothing. See attacks/common.ts for what every attack test checks.
import { createHmac, randomUUID } from 'node:crypto'
import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import { MAX_TOKEN_LENGTH } from '../plugins/keys.ts'
import { assertErrorBody, build, jwtSegment, parseBody, signRs256, testKeys } from './helper.ts'
import { type Claims, CLIENT, SECRET, JSON_TYPE, attackerKeys, postForm, postVerify, verifyToken, basicOf, assertVerifyRefuses, assertInactive, assertRevokeIgnored, flipChar, assertUntouched, attackerServer, attackedApp } from './attacks/common.ts'

// ---------------------------------------------------------------- 1. tokens

test('key-locating headers with the attacker\'s own key: refused everywhere, and nothing is fetched', async (t) => {
  const server = await attackerServer(t)
  const { app, databaseUrl, genuine, header, payload } = await attackedApp(t)
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
  const { app, databaseUrl, genuine, header, payload } = await attackedApp(t)
  const [h, p, s] = genuine.access_token.split('.') as [string, string, string]
  const now = Math.floor(Date.now() / 1000)
  const ours = (claims: Claims, extraHeader: Claims = {}): string => signRs256({ ...header, ...extraHeader }, claims, testKeys.privateKey)
  const caller = basicOf(CLIENT, SECRET)

  // Controls: built the same way with our key and the genuine claims, a token
  // is active; so what makes each case below inactive is its one difference.
  const control = await postForm(app, '/oauth/introspect', { token: ours(payload) }, caller)
  t.equal(parseBody(control.body).active, true, 'control: our key, our header, the genuine claims: active')
  const padded = await postForm(app, '/oauth/introspect', { token: ours({ ...payload, pad: 'x'.repeat(1000) }) }, caller)
  t.equal(parseBody(padded.body).active, true, 'control: the same with a 1000-character claim: active')

  const cases: Array<[string, string]> = [
    ['alg none, no signature', `${jwtSegment({ alg: 'none', typ: 'at+jwt' })}.${jwtSegment(payload)}.`],
    ['alg none naming our kid', `${jwtSegment({ alg: 'none', typ: 'at+jwt', kid: header.kid })}.${jwtSegment(payload)}.`],
    ['HS256 keyed with our public key PEM', (() => {
      const input = `${jwtSegment({ ...header, alg: 'HS256' })}.${jwtSegment(payload)}`
      return `${input}.${createHmac('sha256', testKeys.publicKey).update(input).digest('base64url')}`
    })()],
    ['signed by another key under our kid', signRs256(header, payload, attackerKeys.privateKey)],
    ['signed by another key under a kid we do not publish', signRs256({ ...header, kid: randomUUID() }, payload, attackerKeys.privateKey)],
    ['our key, another issuer', ours({ ...payload, iss: 'https://evil.example' })],
    ['our key, expired', ours({ ...payload, iat: now - 7200, exp: now - 3600 })],
    ['our key, not yet valid (nbf in the future)', ours({ ...payload, nbf: now + 3600 })],
    ['our key, typ JWT', ours(payload, { typ: 'JWT' })],
    ['our key, over MAX_TOKEN_LENGTH', ours({ ...payload, pad: 'x'.repeat(MAX_TOKEN_LENGTH) })],
    ['the genuine token with a scope added to its payload', `${h}.${jwtSegment({ ...payload, scope: 'admin' })}.${s}`],
    ['the genuine token with its sub changed', `${h}.${jwtSegment({ ...payload, sub: 'svc-admin' })}.${s}`],
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
  const { app, header, payload } = await attackedApp(t)
  const typed = (typ: unknown): string => signRs256({ ...header, typ }, { ...payload, jti: randomUUID() }, testKeys.privateKey)

  t.equal(parseBody((await verifyToken(app, typed('at+jwt'))).body).valid, true, 'control: typ at+jwt, built the same way, is valid')
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
  t.equal(parseBody(control.body).valid, true, 'control: the token is valid for the audience it names')
  assertVerifyRefuses(t, await verifyToken(app, otherAudience), 'invalid_audience', 'no audience parameter')
  for (const audience of ['null', '""', '[]', '["other-api"]', '{}', '123', 'true', '{"$ne":"api"}']) {
    const res = await postVerify(app, `{"token":${JSON.stringify(otherAudience)},"audience":${audience}}`)
    assertErrorBody(t, res, 400, 'invalid_request', `audience ${audience}`)
  }

  // Prototype poisoning: refused, and nothing of it reaches Object.prototype.
  for (const body of ['{"token":"a.b.c","__proto__":{"polluted":"yes"}}', '{"token":"a.b.c","constructor":{"prototype":{"polluted":"yes"}}}']) {
    assertErrorBody(t, await postVerify(app, body), 400, 'invalid_request', body)
  }
  t.equal((({}) as Record<string, unknown>).polluted, undefined, 'Object.prototype is not polluted')

  // BODY_LIMIT (16384 bytes): declared, streamed without a length, or under-declared.
  const oversized = JSON.stringify({ token: 'x'.repeat(16_384) })
  assertErrorBody(t, await postVerify(app, oversized), 413, 'invalid_request', 'a JSON body over BODY_LIMIT')
  assertErrorBody(t, await postVerify(app, Readable.from([Buffer.from(oversized)])), 413, 'invalid_request', 'the same body streamed without Content-Length')
  const lying = await postVerify(app, oversized, { ...JSON_TYPE, 'content-length': '20' })
  assertErrorBody(t, lying, 413, 'invalid_request', 'the same body under a Content-Length of 20')
  const short = await postVerify(app, '{"token":"a.b.c"}', { ...JSON_TYPE, 'content-length': '5' })
  assertErrorBody(t, short, 400, 'invalid_request', 'a Content-Length shorter than the body')
})
