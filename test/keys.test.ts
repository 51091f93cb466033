// Signing keys: the three algorithms and the key types they need, kid as the
// RFC 7638 thumbprint, additional published keys, the rotation procedure of
// the README with real instances side by side, and the header checks that
// tie a kid to its algorithm and a token to the access token type.
import { createHash, createPublicKey, generateKeyPairSync, randomUUID, sign, verify as verifySignature, type KeyObject } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { ConfigError, loadConfig } from '../plugins/config.ts'
import { backends, basicAuth, build, buildLogged, decodeJwt, FORM, form, generateRsaKeyPair, insertClient, issueTokens, jwtSegment, type KeyPair, needs, testEnv, testKeys, tokenRequest, verify } from './helper.ts'
import { configError as configErrorOf } from './helpers/config-error.ts'

const CLIENT_ID = 'svc-keys'
const CLIENT_SECRET = 'keys-secret'

type Jwk = Record<string, string>

function pemPair (pair: { privateKey: KeyObject, publicKey: KeyObject }): KeyPair {
  return {
    privateKey: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKey: pair.publicKey.export({ type: 'spki', format: 'pem' }).toString()
  }
}

const p256 = pemPair(generateKeyPairSync('ec', { namedCurve: 'P-256' }))
const p384 = pemPair(generateKeyPairSync('ec', { namedCurve: 'P-384' }))
const ed25519 = pemPair(generateKeyPairSync('ed25519'))

/** The environment that makes `pair` the signing key with `algorithm`. */
function signingEnv (pair: KeyPair, algorithm: string, extra: Record<string, string> = {}): Record<string, string> {
  return { JWT_ALGORITHM: algorithm, JWT_PRIVATE_KEY: pair.privateKey, JWT_PUBLIC_KEY: pair.publicKey, ...extra }
}

// loadConfig never connects, so these placeholders are enough for it.
function configFor (env: Record<string, string>): ReturnType<typeof loadConfig> {
  return loadConfig(testEnv('postgres://postgres@127.0.0.1:5432/unused', 'unused:', env))
}

const configError = (env: Record<string, string>): ConfigError => configErrorOf(env, configFor)

/**
 * RFC 7638 §3.2: the required members of the key type, in lexicographic
 * order, as JSON without whitespace; SHA-256; base64url.
 */
function thumbprint (jwk: Jwk): string {
  const required: Record<string, string[]> = { RSA: ['e', 'kty', 'n'], EC: ['crv', 'kty', 'x', 'y'], OKP: ['crv', 'kty', 'x'] }
  const names = required[jwk.kty ?? '']
  if (names === undefined) throw new Error(`no thumbprint members for ${String(jwk.kty)}`)
  const members = names.map((name) => `${JSON.stringify(name)}:${JSON.stringify(jwk[name])}`)
  return createHash('sha256').update(`{${members.join(',')}}`, 'utf8').digest('base64url')
}

/** The JWK of a PEM public key as node exports it, independent of the service. */
function nodeJwk (publicKeyPem: string): Jwk {
  return createPublicKey(publicKeyPem).export({ format: 'jwk' }) as Jwk
}

async function publishedKeys (instance: FastifyInstance): Promise<Jwk[]> {
  const res = await instance.inject({ method: 'GET', url: '/.well-known/jwks.json' })
  if (res.statusCode !== 200) throw new Error(`jwks: ${res.statusCode}`)
  return res.json().keys
}

function kids (keys: Jwk[]): string[] {
  return keys.map((key) => key.kid ?? '')
}

/** Does the token's signature verify with this published JWK (node:crypto only)? */
function signatureVerifies (token: string, jwk: Jwk): boolean {
  const [header, payload, signature] = token.split('.')
  const input = Buffer.from(`${header ?? ''}.${payload ?? ''}`)
  const key = createPublicKey({ key: jwk, format: 'jwk' })
  const bytes = Buffer.from(signature ?? '', 'base64url')
  switch (jwk.alg) {
    case 'RS256': return verifySignature('sha256', input, key, bytes)
    // JWS carries ECDSA signatures as r || s (RFC 7518 §3.4), not DER.
    case 'ES256': return verifySignature('sha256', input, { key, dsaEncoding: 'ieee-p1363' }, bytes)
    case 'EdDSA': return verifySignature(null, input, key, bytes)
    default: throw new Error(`unexpected alg ${String(jwk.alg)}`)
  }
}

/** A compact JWS made here with node:crypto, signed per `header.alg`. */
function signJwt (header: Record<string, unknown>, payload: Record<string, unknown>, privateKeyPem: string): string {
  const input = `${jwtSegment(header)}.${jwtSegment(payload)}`
  const data = Buffer.from(input)
  let signature: Buffer
  if (header.alg === 'ES256') signature = sign('sha256', data, { key: privateKeyPem, dsaEncoding: 'ieee-p1363' })
  else if (header.alg === 'EdDSA') signature = sign(null, data, privateKeyPem)
  else signature = sign('sha256', data, privateKeyPem)
  return `${input}.${signature.toString('base64url')}`
}

/** Claims as the service puts them in an access token, valid for five minutes. */
function tokenClaims (): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000)
  return { iss: 'session-service', sub: CLIENT_ID, aud: 'api', iat: now, exp: now + 300, jti: randomUUID(), client_id: CLIENT_ID, sid: randomUUID() }
}

async function verifyResult (instance: FastifyInstance, token: string): Promise<Record<string, unknown>> {
  const res = await verify(instance, token)
  if (res.statusCode !== 200) throw new Error(`verify: ${res.statusCode} ${res.body}`)
  return res.json()
}

async function refresh (instance: FastifyInstance, refreshToken: string): Promise<LightMyRequestResponse> {
  return await tokenRequest(instance, { grant_type: 'refresh_token', refresh_token: refreshToken }, { authorization: basicAuth(CLIENT_ID, CLIENT_SECRET) })
}

const ALGORITHMS = [
  { algorithm: 'ES256', pair: p256, kty: 'EC', crv: 'P-256' },
  { algorithm: 'EdDSA', pair: ed25519, kty: 'OKP', crv: 'Ed25519' }
]

for (const { algorithm, pair, kty, crv } of ALGORITHMS) {
  test(`JWT_ALGORITHM=${algorithm} signs and publishes its ${crv} key`, async (t) => {
    const { app: instance, databaseUrl } = await build(t, { env: signingEnv(pair, algorithm) })
    await insertClient(databaseUrl, { id: CLIENT_ID, secret: CLIENT_SECRET })
    const { access_token: token } = await issueTokens(instance, CLIENT_ID, CLIENT_SECRET)
    const { header } = decodeJwt(token)
    t.equal(header.alg, algorithm)
    t.equal(header.typ, 'at+jwt')

    const keys = await publishedKeys(instance)
    t.equal(keys.length, 1)
    const [jwk] = keys
    if (jwk === undefined) return
    t.equal(jwk.kty, kty)
    t.equal(jwk.crv, crv)
    t.equal(jwk.alg, algorithm)
    t.equal(jwk.use, 'sig')
    t.equal(jwk.kid, header.kid, 'the token names the published key')
    t.notOk('d' in jwk, 'no private parameter')
    t.ok(signatureVerifies(token, jwk), 'the signature verifies with the published key')

    const result = await verifyResult(instance, token)
    t.equal(result.valid, true)

    const discovery = (await instance.inject({ method: 'GET', url: '/.well-known/openid-configuration' })).json()
    t.same(discovery.access_token_signing_alg_values_supported, [algorithm])
  })
}

test('a signing algorithm other than RS256 is warned about at start', async (t) => {
  // HTTP APIs accept RSA signatures only; the operator should hear of it.
  for (const { algorithm, pair } of ALGORITHMS) {
    const { lines } = await buildLogged(t, signingEnv(pair, algorithm, { JWT_ISSUER: 'https://auth.example.com' }))
    const warnings = lines.filter((line) => typeof line.msg === 'string' && /RS256/.test(line.msg))
    t.equal(warnings.length, 1, `${algorithm}: one warning`)
    t.match(warnings[0]?.msg, /API Gateway/)
  }
  const { lines } = await buildLogged(t, { JWT_ISSUER: 'https://auth.example.com' })
  // Without a Redis server the app also says, once, that it runs as a single instance.
  const others = lines.filter((line) => backends.redis || !/no REDIS_URL/.test(String(line.msg)))
  t.same(others, [], 'RS256 with an https issuer: no warning at all')
})

test('a key of the wrong type for JWT_ALGORITHM stops the configuration', async (t) => {
  const cases: Array<[string, KeyPair, string]> = [
    ['ES256', testKeys, 'an RSA key'],
    ['EdDSA', p256, 'a P-256 key'],
    ['ES256', p384, 'a P-384 key'],
    ['RS256', ed25519, 'an Ed25519 key']
  ]
  for (const [algorithm, pair, what] of cases) {
    const err = configError(signingEnv(pair, algorithm))
    t.equal(err.variable, 'JWT_PRIVATE_KEY', `${algorithm} with ${what}`)
    t.ok(err.message.startsWith('JWT_PRIVATE_KEY'), err.message)
  }
})

test('kid is the RFC 7638 thumbprint of the key, for RSA, EC and OKP keys', async (t) => {
  const cases: Array<[string, KeyPair]> = [['RS256', testKeys], ['ES256', p256], ['EdDSA', ed25519]]
  for (const [algorithm, pair] of cases) {
    const expected = thumbprint(nodeJwk(pair.publicKey))
    const config = configFor(signingEnv(pair, algorithm))
    t.equal(config.algorithm, algorithm)
    const { app: instance, databaseUrl } = await build(t, { env: signingEnv(pair, algorithm) })
    const [jwk] = await publishedKeys(instance)
    t.equal(jwk?.kid, expected, `${algorithm}: kid of the published key`)
    // The published members yield the same thumbprint: nothing was altered.
    t.equal(thumbprint(jwk ?? {}), expected)
    await insertClient(databaseUrl, { id: CLIENT_ID, secret: CLIENT_SECRET })
    const { access_token: token } = await issueTokens(instance, CLIENT_ID, CLIENT_SECRET)
    t.equal(decodeJwt(token).header.kid, expected, `${algorithm}: kid of the token`)
  }
})

test('JWT_ADDITIONAL_PUBLIC_KEYS: published after the signing key, each with its algorithm', async (t) => {
  const extraRsa = generateRsaKeyPair()
  const additional = `${extraRsa.publicKey}${p256.publicKey}`
  const { app: instance } = await build(t, { env: { JWT_ADDITIONAL_PUBLIC_KEYS: additional } })
  const keys = await publishedKeys(instance)
  t.same(kids(keys), [
    thumbprint(nodeJwk(testKeys.publicKey)),
    thumbprint(nodeJwk(extraRsa.publicKey)),
    thumbprint(nodeJwk(p256.publicKey))
  ], 'the signing key first, then the additional keys in order')
  t.same(keys.map((key) => key.alg), ['RS256', 'RS256', 'ES256'])
  for (const key of keys) {
    t.equal(key.use, 'sig')
    t.same(Object.keys(key).filter((name) => ['d', 'p', 'q', 'dp', 'dq', 'qi'].includes(name)), [], `${key.kid ?? ''}: public parameters only`)
  }
})

test('JWT_ADDITIONAL_PUBLIC_KEYS refuses private keys and garbage', async (t) => {
  const withPrivate = configError({ JWT_ADDITIONAL_PUBLIC_KEYS: `${p256.publicKey}${ed25519.privateKey}` })
  t.ok(withPrivate.message.startsWith('JWT_ADDITIONAL_PUBLIC_KEYS'), withPrivate.message)
  t.match(withPrivate.message, /private/)

  const rsaPrivate = configError({ JWT_ADDITIONAL_PUBLIC_KEYS: testKeys.privateKey })
  t.ok(rsaPrivate.message.startsWith('JWT_ADDITIONAL_PUBLIC_KEYS'), rsaPrivate.message)
  t.match(rsaPrivate.message, /private/)

  for (const garbage of ['not a key', '-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n']) {
    const err = configError({ JWT_ADDITIONAL_PUBLIC_KEYS: garbage })
    t.equal(err.variable, 'JWT_ADDITIONAL_PUBLIC_KEYS', err.message)
  }
  // A key no algorithm of ours can verify with.
  const p384Error = configError({ JWT_ADDITIONAL_PUBLIC_KEYS: p384.publicKey })
  t.equal(p384Error.variable, 'JWT_ADDITIONAL_PUBLIC_KEYS', p384Error.message)
})

test('JWT_ADDITIONAL_PUBLIC_KEYS with literal \\n, and from a file', async (t) => {
  const expected = [thumbprint(nodeJwk(testKeys.publicKey)), thumbprint(nodeJwk(p256.publicKey)), thumbprint(nodeJwk(ed25519.publicKey))]
  const pems = `${p256.publicKey}${ed25519.publicKey}`

  // Secret stores often flatten newlines into the two characters \ and n.
  const flattened = pems.replace(/\n/g, '\\n')
  t.notMatch(flattened, /\n/)
  const inline = await build(t, { env: { JWT_ADDITIONAL_PUBLIC_KEYS: flattened } })
  t.same(kids(await publishedKeys(inline.app)), expected, 'literal \\n accepted')

  const dir = mkdtempSync(join(tmpdir(), 'keys-test-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = join(dir, 'additional.pem')
  writeFileSync(file, pems)
  const fromFile = await build(t, { env: { JWT_ADDITIONAL_PUBLIC_KEYS_FILE: file } })
  t.same(kids(await publishedKeys(fromFile.app)), expected, 'read from JWT_ADDITIONAL_PUBLIC_KEYS_FILE')

  const missing = configError({ JWT_ADDITIONAL_PUBLIC_KEYS_FILE: join(dir, 'missing.pem') })
  t.equal(missing.variable, 'JWT_ADDITIONAL_PUBLIC_KEYS_FILE', missing.message)
})

test('rotation: announce, switch and retire with instances sharing one database and Redis', { skip: needs.postgres }, async (t) => {
  const keyA = testKeys
  const keyB = generateRsaKeyPair()
  const kidA = thumbprint(nodeJwk(keyA.publicKey))
  const kidB = thumbprint(nodeJwk(keyB.publicKey))

  // (a) Key A signs.
  const before = await build(t, { env: signingEnv(keyA, 'RS256') })
  const shared = { databaseUrl: before.databaseUrl, redisPrefix: before.redisPrefix }
  await insertClient(shared.databaseUrl, { id: CLIENT_ID, secret: CLIENT_SECRET })
  const tokensA = await issueTokens(before.app, CLIENT_ID, CLIENT_SECRET)
  t.equal(decodeJwt(tokensA.access_token).header.kid, kidA)
  t.same(kids(await publishedKeys(before.app)), [kidA])

  // (b) Announce: A still signs, B is published.
  const announce = await build(t, { ...shared, env: signingEnv(keyA, 'RS256', { JWT_ADDITIONAL_PUBLIC_KEYS: keyB.publicKey }) })
  t.same(kids(await publishedKeys(announce.app)), [kidA, kidB], 'A and B are published')
  const tokensAnnounce = await issueTokens(announce.app, CLIENT_ID, CLIENT_SECRET)
  t.equal(decodeJwt(tokensAnnounce.access_token).header.kid, kidA, 'tokens are still signed by A')
  t.equal((await verifyResult(announce.app, tokensA.access_token)).valid, true)

  // (c) Switch: B signs, A stays published.
  const switched = await build(t, { ...shared, env: signingEnv(keyB, 'RS256', { JWT_ADDITIONAL_PUBLIC_KEYS: keyA.publicKey }) })
  t.same(kids(await publishedKeys(switched.app)), [kidB, kidA], 'B first, A still published')
  const tokensB = await issueTokens(switched.app, CLIENT_ID, CLIENT_SECRET)
  t.equal(decodeJwt(tokensB.access_token).header.kid, kidB, 'new tokens carry the kid of B')
  t.equal((await verifyResult(switched.app, tokensA.access_token)).valid, true, 'a token signed by A in (a) still verifies')
  t.equal((await verifyResult(switched.app, tokensAnnounce.access_token)).valid, true, 'a token signed by A in (b) still verifies')
  // During a rolling update the announcing instance must accept B's tokens too.
  t.equal((await verifyResult(announce.app, tokensB.access_token)).valid, true, "B's token verifies on the announcing instance")

  const refreshed = await refresh(switched.app, tokensA.refresh_token)
  t.equal(refreshed.statusCode, 200, 'the refresh token from (a) still refreshes')
  const tokensRefreshed: { access_token: string, refresh_token: string } = refreshed.json()
  t.equal(decodeJwt(tokensRefreshed.access_token).header.kid, kidB, 'and yields a token signed by B')
  t.equal(decodeJwt(tokensRefreshed.access_token).payload.sid, decodeJwt(tokensA.access_token).payload.sid, 'in the same session')

  // (d) Retire: only B.
  const retired = await build(t, { ...shared, env: signingEnv(keyB, 'RS256') })
  t.same(kids(await publishedKeys(retired.app)), [kidB], 'only B is published')
  t.same(await verifyResult(retired.app, tokensA.access_token), { valid: false, error: 'unknown_key' }, "A's token no longer verifies")
  t.same(await verifyResult(retired.app, tokensAnnounce.access_token), { valid: false, error: 'unknown_key' })
  t.equal((await verifyResult(retired.app, tokensB.access_token)).valid, true, "B's token verifies")
  t.equal((await verifyResult(retired.app, tokensRefreshed.access_token)).valid, true)

  const introspection = await retired.app.inject({
    method: 'POST',
    url: '/oauth/introspect',
    headers: { ...FORM, authorization: basicAuth(CLIENT_ID, CLIENT_SECRET) },
    payload: form({ token: tokensA.access_token })
  })
  t.equal(introspection.statusCode, 200)
  t.same(introspection.json(), { active: false }, "A's token is not active once A is retired")

  // Refresh tokens are opaque: retiring a key does not touch them.
  const afterRetire = await refresh(retired.app, tokensRefreshed.refresh_token)
  t.equal(afterRetire.statusCode, 200, 'the session goes on refreshing')
  t.equal(decodeJwt(afterRetire.json().access_token).header.kid, kidB)
})

test('the header must name the algorithm of the kid and the access token type', async (t) => {
  const extraEc = p256
  const { app: instance } = await build(t, { env: { JWT_ADDITIONAL_PUBLIC_KEYS: extraEc.publicKey } })
  const ourKid = thumbprint(nodeJwk(testKeys.publicKey))
  const ecKid = thumbprint(nodeJwk(extraEc.publicKey))

  // Control: a token signed by the additional key with its own algorithm verifies,
  // so the rejections below come from the header alone.
  const ecToken = signJwt({ alg: 'ES256', typ: 'at+jwt', kid: ecKid }, tokenClaims(), extraEc.privateKey)
  t.equal((await verifyResult(instance, ecToken)).valid, true, 'the additional key verifies its own algorithm')

  const wrongAlg = signJwt({ alg: 'RS256', typ: 'at+jwt', kid: ecKid }, tokenClaims(), testKeys.privateKey)
  t.same(await verifyResult(instance, wrongAlg), { valid: false, error: 'invalid_algorithm' }, 'RS256 under the kid of an ES256 key')
  const wrongAlgOurs = signJwt({ alg: 'ES256', typ: 'at+jwt', kid: ourKid }, tokenClaims(), extraEc.privateKey)
  t.same(await verifyResult(instance, wrongAlgOurs), { valid: false, error: 'invalid_algorithm' }, 'ES256 under the kid of the RS256 key')

  const plainJwt = signJwt({ alg: 'RS256', typ: 'JWT', kid: ourKid }, tokenClaims(), testKeys.privateKey)
  t.same(await verifyResult(instance, plainJwt), { valid: false, error: 'invalid_type' }, 'typ JWT is not an access token')
  const untyped = signJwt({ alg: 'RS256', kid: ourKid }, tokenClaims(), testKeys.privateKey)
  t.same(await verifyResult(instance, untyped), { valid: false, error: 'invalid_type' }, 'no typ is not an access token')

  // RFC 7515 §4.1.9: the "application/" prefix may be given, in any case.
  for (const typ of ['at+jwt', 'application/at+jwt', 'Application/AT+JWT']) {
    const token = signJwt({ alg: 'RS256', typ, kid: ourKid }, tokenClaims(), testKeys.privateKey)
    t.equal((await verifyResult(instance, token)).valid, true, `typ ${typ} is accepted`)
  }
})
