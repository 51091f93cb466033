// private_key_jwt client authentication (RFC 7523 §2.2 and §3): clients
// registered with a jwks_uri served by a real HTTP server on loopback, or
// with an inline JWK Set; assertions signed here with node:crypto.
import { createHmac, generateKeyPairSync, randomUUID, sign, type KeyObject } from 'node:crypto'
import { createServer, type Server } from 'node:http'
import { test, type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { basicAuth, build, form, FORM, insertClient, sql, tokenRequest, type TestContext } from './helper.ts'

const ISSUER = 'https://auth.example.com'
const TOKEN_ENDPOINT = `${ISSUER}/oauth/token`
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'
// The JWKS servers here are plain http on loopback, which a jwks_uri may
// name only with JWKS_URI_ALLOW_PRIVATE (test/jwks-fetch.test.ts shows the
// refusals). Some tests fail many assertions from one address on purpose:
// the failure throttle (test/throttle.test.ts) must not answer them first.
const LOCAL_JWKS_ENV = { JWT_ISSUER: ISSUER, JWKS_URI_ALLOW_PRIVATE: 'true', AUTH_FAILURE_LIMIT: '1000', AUTH_FAILURE_LIMIT_PER_ADDRESS: '1000' }

interface Signer {
  alg: string
  kid?: string
  privateKey: KeyObject
  jwk: Record<string, unknown>
}

function signer (type: 'rsa' | 'ec' | 'ed25519', kid?: string): Signer {
  const pair = type === 'rsa'
    ? generateKeyPairSync('rsa', { modulusLength: 2048 })
    : type === 'ec' ? generateKeyPairSync('ec', { namedCurve: 'P-256' }) : generateKeyPairSync('ed25519')
  const alg = type === 'rsa' ? 'RS256' : type === 'ec' ? 'ES256' : 'EdDSA'
  const jwk: Record<string, unknown> = { ...pair.publicKey.export({ format: 'jwk' }), alg, use: 'sig' }
  if (kid !== undefined) jwk.kid = kid
  return { alg, privateKey: pair.privateKey, jwk, ...(kid === undefined ? {} : { kid }) }
}

const segment = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')

/** A client assertion; `claims` and `header` override the defaults. */
function assertion (key: Signer, clientId: string, claims: Record<string, unknown> = {}, header: Record<string, unknown> = {}): string {
  const now = Math.floor(Date.now() / 1000)
  const head = { alg: key.alg, typ: 'JWT', ...(key.kid === undefined ? {} : { kid: key.kid }), ...header }
  const body = { iss: clientId, sub: clientId, aud: TOKEN_ENDPOINT, iat: now, exp: now + 60, jti: randomUUID(), ...claims }
  const input = `${segment(head)}.${segment(body)}`
  const digest = key.alg === 'EdDSA' ? null : 'sha256'
  const signature = sign(digest, Buffer.from(input), key.alg === 'ES256' ? { key: key.privateKey, dsaEncoding: 'ieee-p1363' } : key.privateKey)
  return `${input}.${signature.toString('base64url')}`
}

/** A JWKS server on loopback: path -> keys (or a status), with a request count per path. */
async function jwksServer (t: TestContext): Promise<{ url: string, sets: Map<string, unknown[] | number>, hits: Map<string, number> }> {
  const sets = new Map<string, unknown[] | number>()
  const hits = new Map<string, number>()
  const server: Server = createServer((request, response) => {
    const path = request.url ?? ''
    hits.set(path, (hits.get(path) ?? 0) + 1)
    const set = sets.get(path)
    if (set === undefined || typeof set === 'number') {
      response.writeHead(typeof set === 'number' ? set : 404, { 'content-type': 'application/json' }).end('{}')
      return
    }
    response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: set }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => await new Promise((resolve) => server.close(resolve)))
  const address = server.address()
  return { url: `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`, sets, hits }
}

async function withAssertion (app: FastifyInstance, clientAssertion: string, fields: Record<string, string> = { grant_type: 'client_credentials' }, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return await tokenRequest(app, { ...fields, client_assertion_type: ASSERTION_TYPE, client_assertion: clientAssertion }, headers)
}

function assertRefused (t: Test, res: LightMyRequestResponse, what: string): void {
  t.equal(res.statusCode, 401, `${what}: 401`)
  t.equal(res.json().error, 'invalid_client', `${what}: invalid_client`)
  t.ok(res.headers['www-authenticate'], `${what}: a challenge`)
}

test('a jwks_uri client gets tokens with a signed assertion; each assertion once', async (t) => {
  const keys = await jwksServer(t)
  const rsaKey = signer('rsa', 'rsa-1')
  keys.sets.set('/clients/a/jwks.json', [rsaKey.jwk])
  const { app, databaseUrl } = await build(t, { env: LOCAL_JWKS_ENV })
  await sql(databaseUrl, 'INSERT INTO clients (client_id, jwks_uri) VALUES ($1, $2)', ['svc-keys', `${keys.url}/clients/a/jwks.json`])

  const first = assertion(rsaKey, 'svc-keys')
  const res = await withAssertion(app, first)
  t.equal(res.statusCode, 200, res.body)
  const claims = JSON.parse(Buffer.from(res.json().access_token.split('.')[1], 'base64url').toString())
  t.equal(claims.sub, 'svc-keys')
  t.equal(claims.client_id, 'svc-keys')

  assertRefused(t, await withAssertion(app, first), 'a replayed assertion')
  t.equal((await withAssertion(app, assertion(rsaKey, 'svc-keys'), { grant_type: 'client_credentials', client_id: 'svc-keys' })).statusCode, 200, 'with a matching client_id')
  t.equal((await withAssertion(app, assertion(rsaKey, 'svc-keys', { aud: ISSUER }))).statusCode, 200, 'aud = the issuer')
  t.equal((await withAssertion(app, assertion(rsaKey, 'svc-keys', { aud: ['https://elsewhere.example.com', TOKEN_ENDPOINT] }))).statusCode, 200, 'aud array naming the token endpoint')
  t.equal(keys.hits.get('/clients/a/jwks.json'), 1, 'the keys were fetched once and cached')

  // A secret-only client cannot use an assertion, and a keys-only client has no secret.
  await insertClient(databaseUrl, { id: 'svc-secret', secret: 'secret-secret' })
  assertRefused(t, await withAssertion(app, assertion(rsaKey, 'svc-secret')), 'a client without keys')
  assertRefused(t, await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-keys', 'anything') }), 'a secret for a keys-only client')
  assertRefused(t, await withAssertion(app, assertion(rsaKey, 'svc-nobody')), 'an unknown client')
})

test('assertions that fail a check are refused alike', async (t) => {
  const keys = await jwksServer(t)
  const key = signer('rsa', 'k1')
  const stranger = signer('rsa', 'k1')
  keys.sets.set('/jwks', [key.jwk])
  const { app, databaseUrl } = await build(t, { env: LOCAL_JWKS_ENV })
  await sql(databaseUrl, 'INSERT INTO clients (client_id, jwks_uri) VALUES ($1, $2), ($3, $2)', ['svc-a', `${keys.url}/jwks`, 'svc-b'])
  const now = Math.floor(Date.now() / 1000)

  const unsigned = `${segment({ alg: 'none', kid: 'k1' })}.${segment({ iss: 'svc-a', sub: 'svc-a', aud: TOKEN_ENDPOINT, exp: now + 60, jti: randomUUID() })}.`
  const hmacInput = `${segment({ alg: 'HS256', kid: 'k1' })}.${segment({ iss: 'svc-a', sub: 'svc-a', aud: TOKEN_ENDPOINT, exp: now + 60, jti: randomUUID() })}`
  const hmac = `${hmacInput}.${createHmac('sha256', 'guess').update(hmacInput).digest('base64url')}`
  const cases: Array<[string, string]> = [
    ['expired', assertion(key, 'svc-a', { exp: now - 10 })],
    ['expiring more than 600 s ahead', assertion(key, 'svc-a', { exp: now + 3600 })],
    ['another audience', assertion(key, 'svc-a', { aud: 'https://elsewhere.example.com' })],
    ['iss differs from sub', assertion(key, 'svc-a', { iss: 'svc-b' })],
    ['the subject is another client', assertion(key, 'svc-b', { iss: 'svc-a' })],
    ['signed by an unregistered key with a registered kid', assertion(stranger, 'svc-a')],
    ['a kid that is not published', assertion(key, 'svc-a', {}, { kid: 'k2' })],
    ['no kid with a jwks_uri', assertion(key, 'svc-a', {}, { kid: undefined })],
    ['alg none', unsigned],
    ['HMAC', hmac],
    ['no jti', assertion(key, 'svc-a', { jti: undefined })],
    ['not a JWT', 'not-a-jwt']
  ]
  for (const [what, value] of cases) assertRefused(t, await withAssertion(app, value), what)
  t.equal((await withAssertion(app, assertion(key, 'svc-a'))).statusCode, 200, 'control: a correct assertion')
})

test('ambiguous or malformed client authentication is invalid_request', async (t) => {
  const key = signer('ec', 'e1')
  const { app, databaseUrl } = await build(t, { env: { JWT_ISSUER: ISSUER } })
  await sql(databaseUrl, 'INSERT INTO clients (client_id, jwks) VALUES ($1, $2)', ['svc-inline', JSON.stringify({ keys: [key.jwk] })])
  const value = assertion(key, 'svc-inline')
  const cases: Array<[string, Record<string, string>, Record<string, string>]> = [
    ['with client_secret too', { grant_type: 'client_credentials', client_assertion_type: ASSERTION_TYPE, client_assertion: value, client_secret: 'x' }, {}],
    ['with a Basic header', { grant_type: 'client_credentials', client_assertion_type: ASSERTION_TYPE, client_assertion: value }, { authorization: basicAuth('svc-inline', 'x') }],
    ['a wrong assertion type', { grant_type: 'client_credentials', client_assertion_type: 'urn:example:other', client_assertion: value }, {}],
    ['a type without an assertion', { grant_type: 'client_credentials', client_assertion_type: ASSERTION_TYPE }, {}],
    ['a client_id other than the subject', { grant_type: 'client_credentials', client_assertion_type: ASSERTION_TYPE, client_assertion: value, client_id: 'svc-other' }, {}]
  ]
  for (const [what, fields, headers] of cases) {
    const res = await tokenRequest(app, fields, headers)
    t.equal(res.statusCode, 400, what)
    t.equal(res.json().error, 'invalid_request', what)
  }
  t.equal((await withAssertion(app, value)).statusCode, 200, 'none of that spent the assertion')
})

test('inline keys: ES256 and EdDSA; a single key needs no kid', async (t) => {
  const ec = signer('ec', 'ec-1')
  const ed = signer('ed25519', 'ed-1')
  const ec2 = signer('ec', 'ec-2')
  const lone = signer('rsa')
  const { app, databaseUrl } = await build(t, { env: { JWT_ISSUER: ISSUER } })
  await sql(databaseUrl, 'INSERT INTO clients (client_id, jwks) VALUES ($1, $2), ($3, $4)', [
    'svc-multi', JSON.stringify({ keys: [ec.jwk, ed.jwk, ec2.jwk] }), 'svc-lone', JSON.stringify({ keys: [lone.jwk] })
  ])
  t.equal((await withAssertion(app, assertion(ec, 'svc-multi'))).statusCode, 200, 'ES256')
  t.equal((await withAssertion(app, assertion(ec2, 'svc-multi'))).statusCode, 200, 'the other ES256 key')
  t.equal((await withAssertion(app, assertion(ed, 'svc-multi'))).statusCode, 200, 'EdDSA')
  t.equal((await withAssertion(app, assertion(ed, 'svc-multi', {}, { kid: undefined }))).statusCode, 200, 'no kid, but one key of the algorithm')
  assertRefused(t, await withAssertion(app, assertion(ec, 'svc-multi', {}, { kid: undefined })), 'no kid among two keys of the algorithm')
  t.equal((await withAssertion(app, assertion(lone, 'svc-lone'))).statusCode, 200, 'one key, no kid')
  assertRefused(t, await withAssertion(app, assertion(ec, 'svc-multi', {}, { alg: 'ES384' })), 'an algorithm the key is not for')
})

test('an unreachable or failing jwks_uri is a refused authentication, not a server error', async (t) => {
  const keys = await jwksServer(t)
  const key = signer('rsa', 'k')
  keys.sets.set('/broken', 500)
  const { app, databaseUrl } = await build(t, { env: LOCAL_JWKS_ENV })
  await sql(databaseUrl, 'INSERT INTO clients (client_id, jwks_uri) VALUES ($1, $2), ($3, $4)', ['svc-broken', `${keys.url}/broken`, 'svc-down', 'http://127.0.0.1:9/jwks'])
  assertRefused(t, await withAssertion(app, assertion(key, 'svc-broken')), 'the JWKS answers 500')
  assertRefused(t, await withAssertion(app, assertion(key, 'svc-down')), 'nothing listens')
})

test('private_key_jwt works for refresh, revocation and introspection too', async (t) => {
  const key = signer('ec', 'e')
  const { app, databaseUrl } = await build(t, { env: { JWT_ISSUER: ISSUER } })
  await insertClient(databaseUrl, { id: 'svc-both', secret: 'both-secret' })
  await sql(databaseUrl, 'UPDATE clients SET jwks = $2 WHERE client_id = $1', ['svc-both', JSON.stringify({ keys: [key.jwk] })])

  const tokens = (await withAssertion(app, assertion(key, 'svc-both'))).json()
  const viaSecret = await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-both', 'both-secret') })
  t.equal(viaSecret.statusCode, 200, 'a client with a secret and keys may use either')

  const refreshed = await withAssertion(app, assertion(key, 'svc-both'), { grant_type: 'refresh_token', refresh_token: tokens.refresh_token })
  t.equal(refreshed.statusCode, 200)

  const post = async (url: string, token: string, aud: string): Promise<LightMyRequestResponse> => await app.inject({
    method: 'POST',
    url,
    headers: FORM,
    payload: form({ token, client_assertion_type: ASSERTION_TYPE, client_assertion: assertion(key, 'svc-both', { aud }) })
  })
  const active = await post('/oauth/introspect', refreshed.json().access_token, `${ISSUER}/oauth/introspect`)
  t.equal(active.json().active, true, 'aud = the introspection endpoint')
  t.equal((await post('/oauth/revoke', refreshed.json().access_token, ISSUER)).statusCode, 200, 'aud = the issuer')
  t.equal((await post('/oauth/introspect', refreshed.json().access_token, ISSUER)).json().active, false, 'revoked')
})

test('the audiences an assertion may name come from configuration, never from the Host header', async (t) => {
  const key = signer('ec', 'h1')
  const envs: Array<Record<string, string>> = [{ JWT_ISSUER: ISSUER }, {}]
  for (const env of envs) {
    const { app, databaseUrl, config } = await build(t, { env })
    await sql(databaseUrl, 'INSERT INTO clients (client_id, jwks) VALUES ($1, $2)', ['svc-host', JSON.stringify({ keys: [key.jwk] })])
    const label = `issuer ${config.issuer}`
    const otherHost = { host: 'other-as.example' }

    // An assertion made for another authorization server, replayed here with
    // that server's name in Host, must not pass as one made for us.
    assertRefused(t, await withAssertion(app, assertion(key, 'svc-host', { aud: 'http://other-as.example/oauth/token' }), undefined, otherHost), `${label}: another server's token endpoint`)
    assertRefused(t, await withAssertion(app, assertion(key, 'svc-host', { aud: 'http://other-as.example/oauth/token' }), undefined, { ...otherHost, 'x-forwarded-host': 'other-as.example' }), `${label}: with X-Forwarded-Host too`)
    const introspect = await app.inject({
      method: 'POST',
      url: '/oauth/introspect',
      headers: { ...FORM, ...otherHost },
      payload: form({ token: 'x', client_assertion_type: ASSERTION_TYPE, client_assertion: assertion(key, 'svc-host', { aud: 'http://other-as.example/oauth/introspect' }) })
    })
    assertRefused(t, introspect, `${label}: another server's introspection endpoint`)

    // Our own URLs pass, whatever Host says.
    t.equal((await withAssertion(app, assertion(key, 'svc-host', { aud: `${config.publicUrl}/oauth/token` }), undefined, otherHost)).statusCode, 200, `${label}: ${config.publicUrl}/oauth/token`)
    t.equal((await withAssertion(app, assertion(key, 'svc-host', { aud: config.issuer }), undefined, otherHost)).statusCode, 200, `${label}: the issuer`)
  }

  // PUBLIC_URL is the base; the token endpoint and the endpoint called are accepted.
  const { app, databaseUrl } = await build(t, { env: { JWT_ISSUER: ISSUER, PUBLIC_URL: 'https://public.example.com/base' } })
  await sql(databaseUrl, 'INSERT INTO clients (client_id, jwks) VALUES ($1, $2)', ['svc-host', JSON.stringify({ keys: [key.jwk] })])
  t.equal((await withAssertion(app, assertion(key, 'svc-host', { aud: 'https://public.example.com/base/oauth/token' }), undefined, { host: 'public.example.com' })).statusCode, 200, 'PUBLIC_URL/oauth/token')
  assertRefused(t, await withAssertion(app, assertion(key, 'svc-host', { aud: 'http://public.example.com/oauth/token' }), undefined, { host: 'public.example.com' }), 'the Host-derived URL, not PUBLIC_URL')
  const revoke = await app.inject({
    method: 'POST',
    url: '/oauth/revoke',
    headers: FORM,
    payload: form({ token: 'x', client_assertion_type: ASSERTION_TYPE, client_assertion: assertion(key, 'svc-host', { aud: 'https://public.example.com/base/oauth/revoke' }) })
  })
  t.equal(revoke.statusCode, 200, 'PUBLIC_URL and the path of the endpoint called')
})
