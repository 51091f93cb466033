// GET /.well-known/jwks.json: the document a gateway fetches to verify our
// access tokens. The kid is checked against an RFC 7638 thumbprint computed
// here, independently of the service's code.
import { createHash, createPrivateKey, createPublicKey, verify as verifySignature, type JsonWebKey } from 'node:crypto'
import { test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import app, { options } from '../app.ts'
import { loadConfig } from '../plugins/config.ts'
import {
  build,
  createDatabase,
  createRedisPrefix,
  decodeJwt,
  generateRsaKeyPair,
  insertClient,
  issueTokens,
  testEnv,
  testKeys,
  type TestContext
} from './helper.ts'

const CLIENT_ID = 'svc-jwks'
const CLIENT_SECRET = 'jwks-secret'

/** RFC 7638 §3.1: the JSON of the required members in lexicographic order, SHA-256, base64url. */
function rfc7638Thumbprint (jwk: { e?: unknown, kty?: unknown, n?: unknown }): string {
  const canonical = `{"e":${JSON.stringify(jwk.e)},"kty":${JSON.stringify(jwk.kty)},"n":${JSON.stringify(jwk.n)}}`
  return createHash('sha256').update(canonical, 'utf8').digest('base64url')
}

/** The public JWK (kty, n, e) of a PEM public key, as node exports it. */
function exportedJwk (publicKeyPem: string): JsonWebKey {
  return createPublicKey(publicKeyPem).export({ format: 'jwk' })
}

// The example key of RFC 7638 §3.1 and the thumbprint the RFC gives for it:
// proves the function above is the RFC's algorithm.
const RFC_7638_EXAMPLE = {
  kty: 'RSA',
  n: '0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw',
  e: 'AQAB',
  alg: 'RS256',
  kid: '2011-04-29'
}
const RFC_7638_EXAMPLE_THUMBPRINT = 'NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs'

interface Jwks {
  keys: Array<Record<string, unknown>>
}

async function fetchJwks (instance: FastifyInstance): Promise<{ body: Jwks, raw: string, headers: Record<string, unknown>, statusCode: number }> {
  const res = await instance.inject({ method: 'GET', url: '/.well-known/jwks.json' })
  return { body: res.json(), raw: res.body, headers: res.headers, statusCode: res.statusCode }
}

async function publishedKey (instance: FastifyInstance): Promise<Record<string, unknown>> {
  const { body } = await fetchJwks(instance)
  const key = body.keys[0]
  if (key === undefined) throw new Error('the JWKS has no key')
  return key
}

/**
 * Like build() from the helper, but with some variables left out of the
 * environment entirely (build() always sets JWT_PUBLIC_KEY).
 */
async function buildWithout (t: TestContext, omit: string[]): Promise<FastifyInstance> {
  const databaseUrl = await createDatabase(t)
  const redisPrefix = createRedisPrefix(t)
  const env = testEnv(databaseUrl, redisPrefix)
  for (const name of omit) Reflect.deleteProperty(env, name)
  const config = loadConfig(env)
  const instance = Fastify({ ...options, logger: false })
  await instance.register(app, { config })
  t.teardown(async () => await instance.close())
  await instance.ready()
  return instance
}

test('the test thumbprint is RFC 7638', async (t) => {
  t.equal(rfc7638Thumbprint(RFC_7638_EXAMPLE), RFC_7638_EXAMPLE_THUMBPRINT)
})

test('one RSA signing key with public parameters only', async (t) => {
  const { app: instance } = await build(t)
  const { body, headers, statusCode } = await fetchJwks(instance)
  t.equal(statusCode, 200)
  t.match(headers['content-type'], /^application\/json(;|$)/, 'content-type application/json')
  t.equal(headers['cache-control'], 'public, max-age=300')
  t.strictSame(Object.keys(body), ['keys'], 'only "keys" at the top level')
  t.equal(body.keys.length, 1, 'exactly one key')
  const key = body.keys[0] ?? {}
  t.strictSame(Object.keys(key).sort(), ['alg', 'e', 'kid', 'kty', 'n', 'use'], 'exactly kty, use, alg, kid, n, e')
  t.equal(key.kty, 'RSA')
  t.equal(key.use, 'sig')
  t.equal(key.alg, 'RS256')
  for (const name of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k', 'oth']) {
    t.notOk(name in key, `no private parameter ${name}`)
  }
  const expected = exportedJwk(testKeys.publicKey)
  t.equal(key.n, expected.n, 'n of our public key')
  t.equal(key.e, expected.e, 'e of our public key')
  t.match(key.kid, /^[A-Za-z0-9_-]{43}$/, 'kid is a base64url SHA-256')
})

test('JWKS_MAX_AGE sets the Cache-Control max-age', async (t) => {
  const { app: instance } = await build(t, { env: { JWKS_MAX_AGE: '10m' } })
  const { headers, statusCode } = await fetchJwks(instance)
  t.equal(statusCode, 200)
  t.equal(headers['cache-control'], 'public, max-age=600')
})

test('kid is the RFC 7638 thumbprint of the public key', async (t) => {
  const { app: instance } = await build(t)
  const key = await publishedKey(instance)
  const expected = rfc7638Thumbprint(exportedJwk(testKeys.publicKey))
  t.equal(key.kid, expected)
  t.equal(rfc7638Thumbprint(key), expected, 'the published n and e give the same thumbprint')
})

test('kid is stable across instances and changes with the key', async (t) => {
  const first = await build(t)
  const second = await build(t)
  const firstJwks = await fetchJwks(first.app)
  const secondJwks = await fetchJwks(second.app)
  t.equal(firstJwks.body.keys[0]?.kid, secondJwks.body.keys[0]?.kid, 'same key, same kid on another instance')
  t.equal(firstJwks.raw, secondJwks.raw, 'the whole document is identical')

  // the same key in other PEM encodings (PKCS#1) is the same key
  const pkcs1 = await build(t, {
    env: {
      JWT_PRIVATE_KEY: createPrivateKey(testKeys.privateKey).export({ type: 'pkcs1', format: 'pem' }).toString(),
      JWT_PUBLIC_KEY: createPublicKey(testKeys.publicKey).export({ type: 'pkcs1', format: 'pem' }).toString()
    }
  })
  t.equal((await publishedKey(pkcs1.app)).kid, firstJwks.body.keys[0]?.kid, 'same kid from a PKCS#1 encoding')

  const otherKeys = generateRsaKeyPair()
  const other = await build(t, { env: { JWT_PRIVATE_KEY: otherKeys.privateKey, JWT_PUBLIC_KEY: otherKeys.publicKey } })
  const otherKey = await publishedKey(other.app)
  t.not(otherKey.kid, firstJwks.body.keys[0]?.kid, 'another key, another kid')
  t.equal(otherKey.kid, rfc7638Thumbprint(exportedJwk(otherKeys.publicKey)), 'the thumbprint of the other key')

  // tokens carry the kid of the key that signed them
  await insertClient(other.databaseUrl, { id: CLIENT_ID, secret: CLIENT_SECRET })
  const token = (await issueTokens(other.app, CLIENT_ID, CLIENT_SECRET)).access_token
  t.equal(decodeJwt(token).header.kid, otherKey.kid)
})

test('a gateway verifies a token with the published JWK and node:crypto alone', async (t) => {
  const { app: instance, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: CLIENT_ID, secret: CLIENT_SECRET })
  const token = (await issueTokens(instance, CLIENT_ID, CLIENT_SECRET)).access_token
  const { body } = await fetchJwks(instance)

  const [h, p, s] = token.split('.') as [string, string, string]
  const header = decodeJwt(token).header
  const jwk = body.keys.find((key) => key.kid === header.kid)
  if (jwk === undefined) {
    t.fail(`no published key has the token's kid ${String(header.kid)}`)
    return
  }
  t.equal(header.alg, jwk.alg, 'the token alg is the key alg')
  const publicKey = createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' })
  const signature = Buffer.from(s, 'base64url')
  t.equal(verifySignature('sha256', Buffer.from(`${h}.${p}`), publicKey, signature), true, 'the signature verifies')

  const forged = Buffer.from(JSON.stringify({ ...decodeJwt(token).payload, sub: 'svc-admin' })).toString('base64url')
  t.equal(verifySignature('sha256', Buffer.from(`${h}.${forged}`), publicKey, signature), false, 'a changed payload does not')

  const strangerJwk = exportedJwk(generateRsaKeyPair().publicKey)
  const stranger = createPublicKey({ key: strangerJwk, format: 'jwk' })
  t.equal(verifySignature('sha256', Buffer.from(`${h}.${p}`), stranger, signature), false, 'another key does not verify it')
})

test('without JWT_PUBLIC_KEY the public key is derived from the private key', async (t) => {
  const withPublic = await build(t)
  const derived = await buildWithout(t, ['JWT_PUBLIC_KEY'])
  const expectedKid = rfc7638Thumbprint(exportedJwk(testKeys.publicKey))
  t.equal((await publishedKey(withPublic.app)).kid, expectedKid)
  const derivedKey = await publishedKey(derived)
  t.equal(derivedKey.kid, expectedKid, 'same kid with the public key omitted')
  t.equal((await fetchJwks(derived)).raw, (await fetchJwks(withPublic.app)).raw, 'the same document')

  const empty = await build(t, { env: { JWT_PUBLIC_KEY: '' } })
  t.equal((await publishedKey(empty.app)).kid, expectedKid, 'same kid with JWT_PUBLIC_KEY empty')
})
