// POST /oauth/verify against hostile tokens. Every forged token is built here
// with node:crypto, so each one differs from a genuine token in exactly one
// respect: a control token built the same way (our key, our kid, our claims)
// must verify, which shows that the rejection comes from that one respect.
import { createHmac, randomUUID, sign } from 'node:crypto'
import { test, type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { Cluster } from 'ioredis'
import { backends, basicAuth, build, createRedisPrefix, decodeJwt, FORM, form, generateRsaKeyPair, insertClient, issueTokens, jwtSegment, openTestRedis, signRs256, testKeys, verify } from './helper.ts'

const CLIENT_ID = 'svc-verify'
const CLIENT_SECRET = 'verify-secret'
/** The assertion object tap hands to a test function. */
type Tap = Parameters<Parameters<typeof test>[0]>[0]

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

/** Another RSA key than the service's, for forged signatures. */
const attackerKeys = generateRsaKeyPair()

/** Claims as the service issues them, valid for five minutes from now. */
function claims (overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000)
  return {
    iss: 'session-service',
    sub: CLIENT_ID,
    aud: 'api',
    iat: now,
    exp: now + 300,
    jti: randomUUID(),
    client_id: CLIENT_ID,
    ...overrides
  }
}

function without (object: Record<string, unknown>, name: string): Record<string, unknown> {
  const copy = { ...object }
  delete copy[name]
  return copy
}

/** Replaces the character at `index` by another base64url character. */
function flipChar (text: string, index: number): string {
  const current = text[index]
  const replacement = current === 'A' ? 'B' : 'A'
  return text.slice(0, index) + replacement + text.slice(index + 1)
}

async function ourKid (app: FastifyInstance): Promise<string> {
  const res = await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })
  const kid: unknown = res.json().keys[0]?.kid
  if (typeof kid !== 'string') throw new Error(`no kid in the JWKS: ${res.body}`)
  return kid
}

function assertInvalid (t: Tap, res: LightMyRequestResponse, error: string): void {
  t.equal(res.statusCode, 200, 'status 200')
  t.match(res.headers['content-type'], /^application\/json/)
  t.strictSame(res.json(), { valid: false, error }, `{"valid":false,"error":"${error}"}`)
}

function assertValid (t: Tap, res: LightMyRequestResponse, expectedClaims: Record<string, unknown>): void {
  t.equal(res.statusCode, 200, 'status 200')
  t.strictSame(res.json(), { valid: true, claims: expectedClaims })
}

function assertInvalidRequest (t: Tap, res: LightMyRequestResponse): void {
  t.equal(res.statusCode, 400, 'status 400')
  const body = res.json()
  t.strictSame(Object.keys(body).sort(), ['error', 'error_description'], 'exactly error and error_description')
  t.equal(body.error, 'invalid_request')
  t.type(body.error_description, 'string')
  t.ok(body.error_description.length > 0, 'a description')
}

async function postRaw (app: FastifyInstance, contentType: string | undefined, payload: string): Promise<LightMyRequestResponse> {
  const headers: Record<string, string> = contentType === undefined ? {} : { 'content-type': contentType }
  return await app.inject({ method: 'POST', url: '/oauth/verify', headers, payload })
}

test('a genuine token verifies with exactly its claims', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: CLIENT_ID, secret: CLIENT_SECRET })
  const kid = await ourKid(app)
  const tokens = await issueTokens(app, CLIENT_ID, CLIENT_SECRET)
  const { header, payload } = decodeJwt(tokens.access_token)
  t.strictSame(header, { alg: 'RS256', typ: 'at+jwt', kid }, 'header {alg, typ, kid}')

  const res = await verify(app, tokens.access_token)
  assertValid(t, res, payload)
  const returned = res.json().claims
  t.strictSame(Object.keys(returned).sort(), ['aud', 'client_id', 'exp', 'iat', 'iss', 'jti', 'sid', 'sub'])
  t.equal(returned.iss, 'session-service')
  t.equal(returned.sub, CLIENT_ID)
  t.equal(returned.client_id, CLIENT_ID)
  t.equal(returned.aud, 'api')
  t.match(returned.jti, UUID)
  t.equal(returned.exp - returned.iat, 3600, 'exp = iat + JWT_EXPIRY (3600s)')
  const now = Math.floor(Date.now() / 1000)
  t.ok(Math.abs(returned.iat - now) <= 60, 'iat is now')

  const other = await issueTokens(app, CLIENT_ID, CLIENT_SECRET)
  t.not(decodeJwt(other.access_token).payload.jti, returned.jti, 'each token has its own jti')

  const res2 = await app.inject({ method: 'POST', url: '/oauth/verify', headers: { 'content-type': 'application/json; charset=utf-8' }, payload: JSON.stringify({ token: tokens.access_token }) })
  t.equal(res2.statusCode, 200, 'application/json with a charset parameter is JSON')
  t.equal(res2.json().valid, true)
})

/** The app with its client, and the header of a token of ours. */
async function hostileScene (t: Test): Promise<{ app: FastifyInstance, kid: string, header: Record<string, unknown> }> {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: CLIENT_ID, secret: CLIENT_SECRET })
  const kid = await ourKid(app)
  return { app, kid, header: { alg: 'RS256', typ: 'at+jwt', kid } }
}

test('hostile tokens: algorithms, keys and key-locating headers', async (t) => {
  const { app, kid, header } = await hostileScene(t)

  t.test('control: a token forged the way the others are, but right in every respect, is valid', async (t) => {
    const payload = claims()
    assertValid(t, await verify(app, signRs256(header, payload)), payload)
  })

  t.test('alg none with an empty signature', async (t) => {
    const payload = claims()
    assertInvalid(t, await verify(app, `${jwtSegment({ alg: 'none', typ: 'JWT', kid })}.${jwtSegment(payload)}.`), 'invalid_algorithm')
    assertInvalid(t, await verify(app, `${jwtSegment({ alg: 'none', typ: 'JWT' })}.${jwtSegment(payload)}.`), 'invalid_algorithm')
    for (const alg of ['None', 'NONE', 'nOnE']) {
      assertInvalid(t, await verify(app, `${jwtSegment({ alg, typ: 'JWT', kid })}.${jwtSegment(payload)}.`), 'invalid_algorithm')
    }
  })

  t.test('HS256 keyed with our public key PEM (key confusion)', async (t) => {
    const input = `${jwtSegment({ alg: 'HS256', typ: 'JWT', kid })}.${jwtSegment(claims())}`
    const mac = createHmac('sha256', testKeys.publicKey).update(input).digest('base64url')
    assertInvalid(t, await verify(app, `${input}.${mac}`), 'invalid_algorithm')
    const macTrimmed = createHmac('sha256', testKeys.publicKey.trim()).update(input).digest('base64url')
    assertInvalid(t, await verify(app, `${input}.${macTrimmed}`), 'invalid_algorithm')
  })

  t.test('other algorithms than RS256, even with a valid RS256 signature', async (t) => {
    for (const alg of ['RS512', 'PS256', 'ES256', 'rs256']) {
      assertInvalid(t, await verify(app, signRs256({ ...header, alg }, claims())), 'invalid_algorithm')
    }
    assertInvalid(t, await verify(app, signRs256(without(header, 'alg'), claims())), 'invalid_algorithm')
  })

  t.test('RS256 signed by another key', async (t) => {
    const payload = claims()
    assertInvalid(t, await verify(app, signRs256(header, payload, attackerKeys.privateKey)), 'invalid_signature')
    assertInvalid(t, await verify(app, signRs256({ ...header, kid: randomUUID() }, payload, attackerKeys.privateKey)), 'unknown_key')
    assertInvalid(t, await verify(app, signRs256(without(header, 'kid'), payload, attackerKeys.privateKey)), 'unknown_key')
  })

  t.test('our key but an unknown or missing kid', async (t) => {
    assertInvalid(t, await verify(app, signRs256({ ...header, kid: 'another-kid' }, claims())), 'unknown_key')
    assertInvalid(t, await verify(app, signRs256(without(header, 'kid'), claims())), 'unknown_key')
  })

  t.test('key-locating headers, signed with our real key', async (t) => {
    const attackerJwk = { kty: 'RSA', n: 'AQAB', e: 'AQAB' }
    const cases: Record<string, unknown> = {
      jku: 'https://attacker.example/jwks.json',
      x5u: 'https://attacker.example/cert.pem',
      jwk: attackerJwk,
      x5c: ['MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA'],
      crit: ['exp']
    }
    for (const [name, value] of Object.entries(cases)) {
      assertInvalid(t, await verify(app, signRs256({ ...header, [name]: value }, claims())), 'invalid_header')
    }
  })
})

test('hostile tokens: claims and tampering', async (t) => {
  const { app, header } = await hostileScene(t)

  t.test('issuer and audience', async (t) => {
    assertInvalid(t, await verify(app, signRs256(header, claims({ iss: 'evil-issuer' }))), 'invalid_issuer')
    assertInvalid(t, await verify(app, signRs256(header, claims({ aud: 'other-api' }))), 'invalid_audience')
    assertInvalid(t, await verify(app, signRs256(header, claims({ aud: ['other-api', 'billing'] }))), 'invalid_audience')
    const multi = claims({ aud: ['billing', 'api'] })
    assertValid(t, await verify(app, signRs256(header, multi)), multi)
  })

  t.test('time claims', async (t) => {
    const now = Math.floor(Date.now() / 1000)
    assertInvalid(t, await verify(app, signRs256(header, claims({ iat: now - 600, exp: now - 60 }))), 'expired')
    assertInvalid(t, await verify(app, signRs256(header, claims({ nbf: now + 300 }))), 'not_yet_valid')
    const past = claims({ nbf: now - 10 })
    assertValid(t, await verify(app, signRs256(header, past)), past)
  })

  t.test('missing claims', async (t) => {
    assertInvalid(t, await verify(app, signRs256(header, without(claims(), 'jti'))), 'missing_claim')
    assertInvalid(t, await verify(app, signRs256(header, without(claims(), 'exp'))), 'missing_claim')
  })

  t.test('tampered genuine token', async (t) => {
    const genuine = (await issueTokens(app, CLIENT_ID, CLIENT_SECRET)).access_token
    const [h, p, s] = genuine.split('.') as [string, string, string]
    const payload = decodeJwt(genuine).payload
    const forgedPayload = jwtSegment({ ...payload, sub: 'svc-admin' })
    assertInvalid(t, await verify(app, `${h}.${forgedPayload}.${s}`), 'invalid_signature')
    assertInvalid(t, await verify(app, `${h}.${p}.${flipChar(s, Math.floor(s.length / 2))}`), 'invalid_signature')
    assertInvalid(t, await verify(app, `${h}.${p}.${flipChar(s, 0)}`), 'invalid_signature')
    assertInvalid(t, await verify(app, `${h}.${p}.`), 'invalid_signature')
    // the untouched token still verifies: the rejections above are the tampering
    assertValid(t, await verify(app, genuine), payload)
  })
})

test('hostile tokens: shape and length', async (t) => {
  const { app, header } = await hostileScene(t)

  t.test('malformed tokens', async (t) => {
    const genuine = (await issueTokens(app, CLIENT_ID, CLIENT_SECRET)).access_token
    const [, p, s] = genuine.split('.') as [string, string, string]
    const cases: Record<string, string> = {
      abc: 'abc',
      'a.b.c': 'a.b.c',
      empty: '',
      'header not JSON': `${jwtSegment('{"alg":"RS256",')}.${p}.${s}`,
      'header a JSON array': `${jwtSegment('["RS256"]')}.${p}.${s}`,
      'header JSON null': `${jwtSegment('null')}.${p}.${s}`,
      'a string of 9000 characters': 'a'.repeat(9000),
      'a genuine token with a fourth segment': `${genuine}.${s}`,
      'payload not JSON, signed with our key': signRs256(header, 'not json')
    }
    for (const [name, token] of Object.entries(cases)) {
      const res = await verify(app, token)
      t.equal(res.statusCode, 200, `${name}: status 200`)
      t.strictSame(res.json(), { valid: false, error: 'malformed' }, `${name}: malformed`)
    }
  })

  t.test('length bound: 8192 characters are looked at, 8193 are not', async (t) => {
    // A token of ours padded with a claim to exactly `length` characters.
    // The signature of a 2048-bit key is always 342 characters, so lengths are
    // measured before signing; base64url cannot reach every length from one
    // claim, so spaces after the header JSON shift it by one or two.
    const signatureLength = signRs256(header, claims()).split('.')[2]?.length ?? 0
    const padded = (length: number): { token: string, payload: Record<string, unknown> } => {
      for (const spaces of ['', ' ', '  ']) {
        const headerSegment = jwtSegment(JSON.stringify(header) + spaces)
        for (let pad = 0; pad < length; pad++) {
          const payload = claims({ pad: 'x'.repeat(pad) })
          const input = `${headerSegment}.${jwtSegment(payload)}`
          const total = input.length + 1 + signatureLength
          if (total > length) break
          if (total === length) {
            return { token: `${input}.${sign('sha256', Buffer.from(input), testKeys.privateKey).toString('base64url')}`, payload }
          }
        }
      }
      throw new Error(`no token of length ${length}`)
    }
    const atLimit = padded(8192)
    t.equal(atLimit.token.length, 8192)
    assertValid(t, await verify(app, atLimit.token), atLimit.payload)
    const overLimit = padded(8193)
    t.equal(overLimit.token.length, 8193)
    assertInvalid(t, await verify(app, overLimit.token), 'malformed')
  })
})

test('a revoked access token is reported revoked; other tokens are not', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: CLIENT_ID, secret: CLIENT_SECRET })
  const revoked = (await issueTokens(app, CLIENT_ID, CLIENT_SECRET)).access_token
  const kept = (await issueTokens(app, CLIENT_ID, CLIENT_SECRET)).access_token
  t.equal((await verify(app, revoked)).json().valid, true, 'valid before revocation')

  const res = await app.inject({
    method: 'POST',
    url: '/oauth/revoke',
    headers: { ...FORM, authorization: basicAuth(CLIENT_ID, CLIENT_SECRET) },
    payload: form({ token: revoked, token_type_hint: 'access_token' })
  })
  t.equal(res.statusCode, 200)
  t.equal(res.body, '')

  assertInvalid(t, await verify(app, revoked), 'revoked')
  assertValid(t, await verify(app, kept), decodeJwt(kept).payload)
})

test('bad requests are 400 invalid_request', async (t) => {
  const { app } = await build(t)
  const json = 'application/json'
  const cases: Record<string, () => Promise<LightMyRequestResponse>> = {
    'missing token': async () => await postRaw(app, json, '{}'),
    'token a number': async () => await postRaw(app, json, '{"token":123}'),
    'token null': async () => await postRaw(app, json, '{"token":null}'),
    'token an array': async () => await postRaw(app, json, '{"token":["x"]}'),
    'token an object': async () => await postRaw(app, json, '{"token":{"a":"b"}}'),
    'token true': async () => await postRaw(app, json, '{"token":true}'),
    'body a JSON string': async () => await postRaw(app, json, '"a.b.c"'),
    'form content type': async () => await postRaw(app, FORM['content-type'], form({ token: 'a.b.c' })),
    'text/plain': async () => await postRaw(app, 'text/plain', '{"token":"a.b.c"}'),
    'no content type': async () => await postRaw(app, undefined, '{"token":"a.b.c"}'),
    'invalid JSON': async () => await postRaw(app, json, '{"token":'),
    'empty JSON body': async () => await postRaw(app, json, '')
  }
  for (const [name, request] of Object.entries(cases)) {
    t.test(name, async (t) => {
      assertInvalidRequest(t, await request())
    })
  }
})

test('tokens of a service with another issuer or audience are refused', async (t) => {
  const main = await build(t)
  const otherIssuer = await build(t, { env: { JWT_ISSUER: 'other-issuer' } })
  const otherAudience = await build(t, { env: { JWT_AUDIENCE: 'other-api' } })
  for (const instance of [main, otherIssuer, otherAudience]) {
    await insertClient(instance.databaseUrl, { id: CLIENT_ID, secret: CLIENT_SECRET })
  }
  const fromMain = (await issueTokens(main.app, CLIENT_ID, CLIENT_SECRET)).access_token
  const fromOtherIssuer = (await issueTokens(otherIssuer.app, CLIENT_ID, CLIENT_SECRET)).access_token
  const fromOtherAudience = (await issueTokens(otherAudience.app, CLIENT_ID, CLIENT_SECRET)).access_token

  t.equal(decodeJwt(fromOtherIssuer).payload.iss, 'other-issuer')
  t.equal(decodeJwt(fromOtherAudience).payload.aud, 'other-api')
  t.equal(decodeJwt(fromOtherIssuer).header.kid, decodeJwt(fromMain).header.kid, 'same signing key, same kid')

  // each is valid where it was issued
  assertValid(t, await verify(otherIssuer.app, fromOtherIssuer), decodeJwt(fromOtherIssuer).payload)
  assertValid(t, await verify(otherAudience.app, fromOtherAudience), decodeJwt(fromOtherAudience).payload)
  assertValid(t, await verify(main.app, fromMain), decodeJwt(fromMain).payload)

  assertInvalid(t, await verify(main.app, fromOtherIssuer), 'invalid_issuer')
  assertInvalid(t, await verify(main.app, fromOtherAudience), 'invalid_audience')
  assertInvalid(t, await verify(otherIssuer.app, fromMain), 'invalid_issuer')
  assertInvalid(t, await verify(otherAudience.app, fromMain), 'invalid_audience')
})

// Without the revocations in memory each check is one Redis script over the
// token's keys. Requests of the same moment share one write per Redis node,
// grouped by each command's first key; a script call that does not declare
// its keys is filed under its key count (`<prefix>2`), and a cluster refuses
// the whole write when that names another node than its keys. In the cluster
// run, the prefix is picked so that the two nodes differ.
async function prefixSeparatingKeyCountFromRevocations (t: Test): Promise<string> {
  if (!backends.redis) return createRedisPrefix(t)
  const redis = await openTestRedis()
  t.teardown(() => redis.disconnect())
  for (;;) {
    const prefix = createRedisPrefix(t)
    if (!(redis instanceof Cluster)) return prefix
    const [count, revocations] = await Promise.all([`${prefix}2`, `${prefix}{revocations}`].map(async (key) => Number(await redis.call('CLUSTER', 'KEYSLOT', key))))
    if (redis.slots[count ?? 0]?.[0] !== redis.slots[revocations ?? 0]?.[0]) return prefix
  }
}

test('checks asked of Redis, many at once beside token requests, all answer', async (t) => {
  const redisPrefix = await prefixSeparatingKeyCountFromRevocations(t)
  const { app, databaseUrl } = await build(t, { redisPrefix, env: { REVOCATIONS_IN_MEMORY_MAX: '0' } })
  await insertClient(databaseUrl, { id: CLIENT_ID, secret: CLIENT_SECRET })
  const tokens = await issueTokens(app, CLIENT_ID, CLIENT_SECRET)
  const answers = await Promise.all(Array.from({ length: 60 }, async (_, i) => i % 2 === 0
    ? await app.inject({ method: 'POST', url: '/oauth/token', headers: { ...FORM, authorization: basicAuth(CLIENT_ID, CLIENT_SECRET) }, payload: form({ grant_type: 'client_credentials' }) })
    : await verify(app, tokens.access_token)))
  const statuses = answers.map((res) => res.statusCode)
  t.ok(statuses.every((status) => status === 200), `every request answered 200 (${[...new Set(statuses)].join(', ')})`)
  t.ok(answers.filter((_, i) => i % 2 === 1).every((res) => res.json().valid === true), 'and every verification says valid')
})
