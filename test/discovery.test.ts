// The discovery documents as an API Gateway JWT authorizer and OAuth client
// libraries read them: the issuer byte for byte as configured and as tokens
// carry it, absolute endpoint URLs, the JWKS reached through jwks_uri, and
// the start-up warning for an issuer a gateway would refuse.
import { createPublicKey, generateKeyPairSync, verify as verifySignature } from 'node:crypto'
import { test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { ConfigError, loadConfig } from '../plugins/config.ts'
import {
  build,
  buildLogged,
  decodeJwt,
  generateRsaKeyPair,
  insertClient,
  issueTokens,
  sql,
  testEnv,
  verify
} from './helper.ts'

const CLIENT_ID = 'svc-discovery'
const CLIENT_SECRET = 'discovery-secret'
const OPENID_PATH = '/.well-known/openid-configuration'
const OAUTH_PATH = '/.well-known/oauth-authorization-server'
const ENDPOINT_FIELDS = ['token_endpoint', 'jwks_uri', 'revocation_endpoint', 'introspection_endpoint']

type Document = Record<string, unknown>

async function getDocument (instance: FastifyInstance, path: string = OPENID_PATH, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return await instance.inject({ method: 'GET', url: path, headers })
}

/** The access token the service issues to a freshly inserted client. */
async function issuedToken (instance: FastifyInstance, databaseUrl: string): Promise<string> {
  await insertClient(databaseUrl, { id: CLIENT_ID, secret: CLIENT_SECRET })
  return (await issueTokens(instance, CLIENT_ID, CLIENT_SECRET)).access_token
}

function isAbsoluteHttpUrl (value: unknown): boolean {
  if (typeof value !== 'string') return false
  try {
    const url = new URL(value)
    return (url.protocol === 'https:' || url.protocol === 'http:') && url.search === '' && url.hash === ''
  } catch {
    return false
  }
}

// A configuration error must name its variable first, so that the one line
// the process stops with tells the operator what to fix.
function configErrorFor (env: Record<string, string>): ConfigError {
  try {
    loadConfig(testEnv('postgres://postgres@127.0.0.1:5432/unused', 'unused:', env))
  } catch (err) {
    if (err instanceof ConfigError) return err
    throw err
  }
  throw new Error('loadConfig accepted the environment')
}

test('both paths serve one document describing the https issuer', async (t) => {
  const issuer = 'https://auth.example.com'
  const { app: instance, databaseUrl } = await build(t, { env: { JWT_ISSUER: issuer, SCOPES_SUPPORTED: 'read write' } })
  const openid = await getDocument(instance, OPENID_PATH)
  const oauth = await getDocument(instance, OAUTH_PATH)
  for (const res of [openid, oauth]) {
    t.equal(res.statusCode, 200)
    t.match(res.headers['content-type'], /^application\/json\b/)
    t.type(res.headers['cache-control'], 'string', 'a Cache-Control header')
    t.match(res.headers['cache-control'], /max-age=\d+/)
  }
  t.equal(openid.body, oauth.body, 'the same bytes on both paths')

  const doc: Document = openid.json()
  t.equal(doc.issuer, issuer, 'issuer is JWT_ISSUER, byte for byte')
  t.equal(doc.token_endpoint, 'https://auth.example.com/oauth/token')
  for (const field of ENDPOINT_FIELDS) t.ok(isAbsoluteHttpUrl(doc[field]), `${field} is an absolute URL: ${String(doc[field])}`)
  t.equal(doc.jwks_uri, 'https://auth.example.com/.well-known/jwks.json')
  t.same(doc.grant_types_supported, ['client_credentials', 'refresh_token', 'urn:ietf:params:oauth:grant-type:token-exchange'], 'token exchange (RFC 8693) too')

  const authMethods = doc.token_endpoint_auth_methods_supported as string[]
  for (const method of ['client_secret_basic', 'client_secret_post', 'private_key_jwt']) {
    t.ok(authMethods.includes(method), `token endpoint accepts ${method}`)
  }
  const assertionAlgorithms = doc.token_endpoint_auth_signing_alg_values_supported as string[]
  t.ok(Array.isArray(assertionAlgorithms) && assertionAlgorithms.length > 0, 'assertion algorithms are listed')
  // A shared-secret or unsigned assertion would defeat private_key_jwt.
  t.notOk(assertionAlgorithms.includes('none'), 'no alg none')
  t.same(assertionAlgorithms.filter((alg) => /^HS/i.test(alg)), [], 'no HMAC algorithm')

  // OpenID Connect Discovery 1.0 §3 requires these.
  for (const field of ['response_types_supported', 'subject_types_supported', 'id_token_signing_alg_values_supported']) {
    t.ok(Array.isArray(doc[field]), `${field} is present`)
  }
  t.same(doc.scopes_supported, ['read', 'write'], 'scopes_supported is SCOPES_SUPPORTED')

  const token = await issuedToken(instance, databaseUrl)
  t.equal(decodeJwt(token).payload.iss, doc.issuer, "the token's iss is the document's issuer, byte for byte")
})

test('without SCOPES_SUPPORTED the document lists no scopes', async (t) => {
  const { app: instance } = await build(t, { env: { JWT_ISSUER: 'https://auth.example.com' } })
  const doc: Document = (await getDocument(instance)).json()
  t.notOk('scopes_supported' in doc, 'scopes_supported is absent')
  t.equal(doc.issuer, 'https://auth.example.com')
})

test('an issuer with a trailing slash is kept as it is; endpoint URLs get no double slash', async (t) => {
  const issuer = 'https://auth.example.com/'
  const { app: instance, databaseUrl } = await build(t, { env: { JWT_ISSUER: issuer } })
  const res = await getDocument(instance)
  t.equal(res.statusCode, 200)
  const doc: Document = res.json()
  // A gateway compares the strings: 'https://auth.example.com' would not match.
  t.equal(doc.issuer, 'https://auth.example.com/')
  t.equal(doc.token_endpoint, 'https://auth.example.com/oauth/token')
  t.equal(doc.jwks_uri, 'https://auth.example.com/.well-known/jwks.json')
  for (const field of ENDPOINT_FIELDS) {
    t.notMatch(String(doc[field]).slice('https://'.length), /\/\//, `${field} has no double slash`)
  }

  const token = await issuedToken(instance, databaseUrl)
  t.equal(decodeJwt(token).payload.iss, 'https://auth.example.com/', 'the token carries the issuer with its slash')
  t.equal((await verify(instance, token)).json().valid, true)
})

test('PUBLIC_URL sets the endpoint base; the issuer stays JWT_ISSUER', async (t) => {
  const { app: instance, databaseUrl } = await build(t, {
    env: { JWT_ISSUER: 'https://auth.example.com', PUBLIC_URL: 'https://public.example.com/base' }
  })
  const doc: Document = (await getDocument(instance)).json()
  t.equal(doc.issuer, 'https://auth.example.com')
  t.equal(doc.token_endpoint, 'https://public.example.com/base/oauth/token')
  t.equal(doc.jwks_uri, 'https://public.example.com/base/.well-known/jwks.json')
  t.equal(doc.revocation_endpoint, 'https://public.example.com/base/oauth/revoke')
  t.equal(doc.introspection_endpoint, 'https://public.example.com/base/oauth/introspect')
  // The Host of the request plays no part once PUBLIC_URL is set.
  const other: Document = (await getDocument(instance, OPENID_PATH, { host: 'elsewhere.internal:9000' })).json()
  t.equal(other.token_endpoint, 'https://public.example.com/base/oauth/token')

  const token = await issuedToken(instance, databaseUrl)
  t.equal(decodeJwt(token).payload.iss, 'https://auth.example.com')

  // A trailing slash on PUBLIC_URL does not double the slash before each path.
  const slashed = await build(t, { env: { JWT_ISSUER: 'https://auth.example.com', PUBLIC_URL: 'https://public.example.com/base/' } })
  const slashedDoc: Document = (await getDocument(slashed.app)).json()
  t.equal(slashedDoc.token_endpoint, 'https://public.example.com/base/oauth/token')
  t.equal(slashedDoc.issuer, 'https://auth.example.com')
})

test('a PUBLIC_URL that is not an absolute http(s) URL stops the configuration', async (t) => {
  for (const value of ['public.example.com', '/base', 'ftp://public.example.com', 'https://public.example.com/?tenant=1', 'https://public.example.com/#top', 'not a url']) {
    const err = configErrorFor({ JWT_ISSUER: 'https://auth.example.com', PUBLIC_URL: value })
    t.ok(err.message.startsWith('PUBLIC_URL'), `${value}: ${err.message}`)
  }
  const accepted = loadConfig(testEnv('postgres://postgres@127.0.0.1:5432/unused', 'unused:', { PUBLIC_URL: 'http://127.0.0.1:8080/' }))
  t.equal(accepted.issuer, 'session-service', 'a valid PUBLIC_URL leaves the issuer alone')
})

test('with neither JWT_ISSUER nor PUBLIC_URL, issuer and endpoints are on http://localhost:SERVER_PORT, whatever Host says', async (t) => {
  const { app: instance, config } = await build(t, { unset: ['JWT_ISSUER'] })
  t.equal(config.issuer, 'http://localhost:8080')
  const res = await getDocument(instance, OPENID_PATH, { host: 'svc.internal:8080' })
  t.equal(res.statusCode, 200)
  const doc: Document = res.json()
  t.equal(doc.issuer, 'http://localhost:8080', 'an issuer that is a URL, as discovery clients require')
  t.equal(doc.token_endpoint, 'http://localhost:8080/oauth/token')
  t.equal(doc.jwks_uri, 'http://localhost:8080/.well-known/jwks.json')
  t.equal(doc.revocation_endpoint, 'http://localhost:8080/oauth/revoke')
  t.equal(doc.introspection_endpoint, 'http://localhost:8080/oauth/introspect')
  const oauth = await getDocument(instance, OAUTH_PATH, { host: 'other.internal' })
  t.equal(oauth.body, res.body, 'both paths serve the same bytes, for any Host')

  const { app: elsewhere } = await build(t, { env: { SERVER_PORT: '9090' }, unset: ['JWT_ISSUER'] })
  const elsewhereDoc: Document = (await getDocument(elsewhere)).json()
  t.equal(elsewhereDoc.token_endpoint, 'http://localhost:9090/oauth/token', 'the port is SERVER_PORT')
  t.equal(elsewhereDoc.issuer, 'http://localhost:9090')
})

test('a Host header never enters the publicly cacheable document', async (t) => {
  const envs: Array<Record<string, string>> = [{}, { JWT_ISSUER: 'https://auth.example.com' }]
  for (const env of envs) {
    const { app: instance } = await build(t, { env })
    const reference = await getDocument(instance)
    t.equal(reference.statusCode, 200)
    t.match(reference.headers['cache-control'], /public/, 'the document is cacheable by anyone in between')
    // RFC 8414 §2: the endpoints are URLs. Whatever a client sends as Host
    // (a name of its choosing, or something that is no host at all), the
    // document is the configured one.
    for (const host of ['evil.example', 'evil.example:443', 'evil.example/x?y', 'a b', 'evil.example#top', 'h:99999']) {
      for (const path of [OPENID_PATH, OAUTH_PATH]) {
        const res = await getDocument(instance, path, { host, 'x-forwarded-host': host, 'x-forwarded-proto': 'https' })
        t.equal(res.statusCode, 200, `${JSON.stringify(host)}: 200`)
        t.equal(res.body, reference.body, `${JSON.stringify(host)}: the configured document, byte for byte`)
        t.notMatch(res.body, /evil/, `${JSON.stringify(host)}: the Host appears nowhere`)
      }
    }
    const doc: Document = reference.json()
    for (const field of ENDPOINT_FIELDS) t.ok(isAbsoluteHttpUrl(doc[field]), `${field} is an absolute URL: ${String(doc[field])}`)
  }
})

function issuerWarnings (lines: Array<Record<string, unknown>>): Array<Record<string, unknown>> {
  return lines.filter((line) => typeof line.msg === 'string' && /issuer/i.test(line.msg))
}

test('an issuer that is not https is warned about once, naming API Gateway', async (t) => {
  // A gateway needs an absolute https URL without query or fragment.
  for (const issuer of ['session-service', 'http://auth.example.com', 'https://auth.example.com/?tenant=1']) {
    const { lines } = await buildLogged(t, { JWT_ISSUER: issuer })
    const warnings = issuerWarnings(lines)
    t.equal(warnings.length, 1, `${issuer}: exactly one line about the issuer`)
    const [warning] = warnings
    t.equal(warning?.level, 40, 'at warn level')
    t.match(warning?.msg, /https/)
    t.match(warning?.msg, /API Gateway/)
  }
})

test('an https issuer is not warned about', async (t) => {
  const { instance, lines } = await buildLogged(t, { JWT_ISSUER: 'https://auth.example.com' })
  // The documents are served too, so that any warning they might log is caught.
  t.equal((await getDocument(instance)).statusCode, 200)
  t.same(issuerWarnings(lines), [], 'no line about the issuer')
})

test('the default issuer (http://localhost:SERVER_PORT) is not warned about; an http PUBLIC_URL that becomes the issuer is', async (t) => {
  const { lines } = await buildLogged(t, {}, ['JWT_ISSUER'])
  t.same(issuerWarnings(lines), [], 'nothing at warn level about the default issuer')
  const { lines: fromPublicUrl } = await buildLogged(t, { PUBLIC_URL: 'http://auth.example.com' }, ['JWT_ISSUER'])
  const warnings = issuerWarnings(fromPublicUrl)
  t.equal(warnings.length, 1, 'one warning')
  t.match(warnings[0], { level: 40, issuer: 'http://auth.example.com', msg: /^PUBLIC_URL is not an https URL: .*API Gateway/ })
})

test('the JWKS stays far below the gateway limit with several additional keys', async (t) => {
  const extra = [
    generateRsaKeyPair().publicKey,
    generateRsaKeyPair().publicKey,
    generateRsaKeyPair().publicKey,
    generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }).toString()
  ]
  const { app: instance } = await build(t, { env: { JWT_ADDITIONAL_PUBLIC_KEYS: extra.join('\n') } })
  const res = await instance.inject({ method: 'GET', url: '/.well-known/jwks.json' })
  t.equal(res.statusCode, 200)
  t.equal(res.json().keys.length, 6, 'the signing key and five additional keys')
  t.ok(Buffer.byteLength(res.body) < 150000, `the JWKS is ${Buffer.byteLength(res.body)} bytes`)
})

test('a gateway that knows only the issuer verifies an issued token', async (t) => {
  const issuer = 'https://auth.example.com'
  const { app: instance, databaseUrl } = await build(t, { env: { JWT_ISSUER: issuer } })
  await insertClient(databaseUrl, { id: CLIENT_ID, secret: CLIENT_SECRET })
  // Scopes of its own, so that the token carries a scope claim.
  await sql(databaseUrl, 'UPDATE clients SET scopes = $2, default_scopes = $2 WHERE client_id = $1', [CLIENT_ID, ['orders:read', 'orders:write']])
  const { access_token: token } = await issueTokens(instance, CLIENT_ID, CLIENT_SECRET)

  // {issuer}/.well-known/openid-configuration, then its jwks_uri.
  const discovery = await getDocument(instance, new URL(`${issuer}${OPENID_PATH}`).pathname)
  t.equal(discovery.statusCode, 200)
  const doc: Document = discovery.json()
  t.equal(doc.issuer, issuer)
  const jwksUri = new URL(String(doc.jwks_uri))
  t.equal(jwksUri.origin, 'https://auth.example.com', 'jwks_uri is on the issuer')
  const jwksRes = await instance.inject({ method: 'GET', url: jwksUri.pathname })
  t.equal(jwksRes.statusCode, 200)
  t.match(jwksRes.headers['content-type'], /^application\/json\b/)
  const keys: Array<Record<string, string>> = jwksRes.json().keys

  const { header, payload } = decodeJwt(token)
  t.type(header.kid, 'string', 'the token names its key')
  t.equal(header.alg, 'RS256', 'an RSA signature, which HTTP APIs require')
  const jwk = keys.find((key) => key.kid === header.kid)
  if (jwk === undefined) {
    t.fail('the JWKS has no key with the token\'s kid')
    return
  }
  t.equal(jwk.use, 'sig')
  t.equal(jwk.alg, 'RS256')
  t.equal(jwk.kty, 'RSA')
  t.same(Object.keys(jwk).sort(), ['alg', 'e', 'kid', 'kty', 'n', 'use'], 'public parameters only')

  const [encodedHeader, encodedPayload, signature] = token.split('.')
  const valid = verifySignature(
    'sha256',
    Buffer.from(`${encodedHeader ?? ''}.${encodedPayload ?? ''}`),
    createPublicKey({ key: jwk, format: 'jwk' }),
    Buffer.from(signature ?? '', 'base64url')
  )
  t.ok(valid, 'the signature verifies with the published key')

  const now = Math.floor(Date.now() / 1000)
  t.equal(payload.iss, issuer)
  t.equal(payload.aud, 'api')
  t.type(payload.scope, 'string', 'scope is one string')
  t.equal(payload.scope, 'orders:read orders:write')
  t.ok(typeof payload.exp === 'number' && payload.exp > now, 'exp is in the future')
  t.ok(typeof payload.iat === 'number' && payload.iat <= now, 'iat is not in the future')
  if ('nbf' in payload) t.ok(typeof payload.nbf === 'number' && payload.nbf <= now, 'nbf is not in the future')
})
