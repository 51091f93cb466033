// Third-party libraries against the service over real HTTP, configured from
// discovery alone: openid-client (a certified OAuth 2.0 / OpenID client) for
// the grants, introspection and revocation; oauth4webapi's generic token
// endpoint request for token exchange; jose for validating access tokens
// the way a gateway does (discovery, jwks_uri, signature, iss, aud, exp, kid,
// scope).
import { test } from 'tap'
import * as oauth from 'openid-client'
import * as oauth4 from 'oauth4webapi'
import { createRemoteJWKSet, decodeJwt, exportJWK, generateKeyPair, jwtVerify, errors as joseErrors } from 'jose'
import { build, freePort, insertClient, sql, type TestContext } from './helper.ts'

/** The service listening on loopback, its issuer being its own URL. */
async function serve (t: TestContext, env: Record<string, string> = {}): Promise<{ issuer: string, databaseUrl: string }> {
  const port = await freePort()
  const issuer = `http://127.0.0.1:${port}`
  const { app, databaseUrl } = await build(t, { env: { JWT_ISSUER: issuer, SCOPES_SUPPORTED: 'orders:read orders:write', ...env } })
  await app.listen({ host: '127.0.0.1', port })
  return { issuer, databaseUrl }
}

// The test server speaks plain HTTP on loopback; everything else is as in production.
const insecure = { execute: [oauth.allowInsecureRequests] }

/**
 * The service with no issuer configuration at all, listening where its
 * default public URL (http://localhost:SERVER_PORT) says it is.
 */
async function serveUnconfigured (t: TestContext): Promise<{ issuer: URL, databaseUrl: string }> {
  const port = await freePort()
  const { app, config, databaseUrl } = await build(t, { env: { SERVER_PORT: String(port) }, unset: ['JWT_ISSUER'] })
  // localhost: every loopback address the name resolves to.
  await app.listen({ host: 'localhost', port })
  return { issuer: new URL(config.issuer), databaseUrl }
}

test('with no issuer configured, openid-client and oauth4webapi discover the service and get a client_credentials token', async (t) => {
  const { issuer, databaseUrl } = await serveUnconfigured(t)
  t.equal(issuer.href, `http://localhost:${issuer.port}/`, 'the default issuer is http://localhost:SERVER_PORT')
  await insertClient(databaseUrl, { id: 'default-issuer-client', secret: 'default issuer secret' })

  await t.test('openid-client', async (t) => {
    const config = await oauth.discovery(issuer, 'default-issuer-client', 'default issuer secret', oauth.ClientSecretBasic(), insecure)
    t.equal(config.serverMetadata().issuer, issuer.origin, 'the issuer it validated')
    const granted = await oauth.clientCredentialsGrant(config)
    t.type(granted.access_token, 'string')
    t.equal(decodeJwt(granted.access_token).iss, issuer.origin, 'the token names the same issuer')
  })

  await t.test('oauth4webapi, the token validated as an RFC 9068 resource server does', async (t) => {
    const options = { [oauth4.allowInsecureRequests]: true }
    const as = await oauth4.processDiscoveryResponse(issuer, await oauth4.discoveryRequest(issuer, { ...options, algorithm: 'oidc' }))
    const client: oauth4.Client = { client_id: 'default-issuer-client' }
    const response = await oauth4.clientCredentialsGrantRequest(as, client, oauth4.ClientSecretBasic('default issuer secret'), {}, options)
    const granted = await oauth4.processClientCredentialsResponse(as, client, response)
    t.equal(granted.token_type, 'bearer')
    // Signature from jwks_uri, typ at+jwt, iss, aud, exp, iat, jti, sub, client_id.
    const request = new Request('http://localhost/orders', { headers: { authorization: `Bearer ${granted.access_token}` } })
    const claims = await oauth4.validateJwtAccessToken(as, request, 'api', options)
    t.equal(claims.iss, issuer.origin)
    t.equal(claims.client_id, 'default-issuer-client')
  })
})

test('openid-client: client_credentials, refresh, introspection and revocation from discovery alone', async (t) => {
  const { issuer, databaseUrl } = await serve(t)
  await insertClient(databaseUrl, { id: 'interop-client', secret: 'interop secret:with%odd chars' })
  await sql(databaseUrl, "UPDATE clients SET scopes = '{orders:read,orders:write}', default_scopes = '{orders:read}' WHERE client_id = 'interop-client'")

  for (const [name, auth] of [['client_secret_basic', oauth.ClientSecretBasic()], ['client_secret_post', oauth.ClientSecretPost()]] as const) {
    await t.test(name, async (t) => {
      const config = await oauth.discovery(new URL(issuer), 'interop-client', 'interop secret:with%odd chars', auth, insecure)
      t.equal(config.serverMetadata().issuer, issuer, 'the discovered issuer is the one configured')

      const granted = await oauth.clientCredentialsGrant(config, { scope: 'orders:read orders:write' })
      t.equal(granted.token_type, 'bearer', 'openid-client normalises the token type')
      t.equal(granted.scope, undefined, 'the granted scope is the requested one, so it is not repeated')
      t.type(granted.refresh_token, 'string')
      t.equal(granted.expires_in, 3600)

      const refreshed = await oauth.refreshTokenGrant(config, granted.refresh_token ?? '', { scope: 'orders:read' })
      t.not(refreshed.access_token, granted.access_token)
      t.not(refreshed.refresh_token, granted.refresh_token, 'the refresh token rotates')

      const active = await oauth.tokenIntrospection(config, refreshed.access_token)
      t.equal(active.active, true)
      t.equal(active.client_id, 'interop-client')
      t.equal(active.scope, 'orders:read', 'the narrowed scope')
      t.equal(active.token_type, 'Bearer')

      const refreshActive = await oauth.tokenIntrospection(config, refreshed.refresh_token ?? '')
      t.equal(refreshActive.active, true)
      t.equal(refreshActive.token_type, 'refresh_token')
      t.equal(refreshActive.scope, 'orders:read orders:write', 'the refresh token keeps the session scope')

      await oauth.tokenRevocation(config, refreshed.access_token)
      t.equal((await oauth.tokenIntrospection(config, refreshed.access_token)).active, false, 'a revoked access token is inactive')
      await oauth.tokenRevocation(config, refreshed.refresh_token ?? '')
      t.equal((await oauth.tokenIntrospection(config, refreshed.refresh_token ?? '')).active, false, 'a revoked refresh token is inactive')

      // The library surfaces the OAuth error of a refused grant as it is.
      const error = await oauth.refreshTokenGrant(config, refreshed.refresh_token ?? '').catch((err: unknown) => err)
      t.ok(error instanceof oauth.ResponseBodyError, 'a response body error')
      t.equal((error as oauth.ResponseBodyError).error, 'invalid_grant')
    })
  }

  await t.test('a wrong secret is reported as invalid_client', async (t) => {
    const config = await oauth.discovery(new URL(issuer), 'interop-client', 'wrong', oauth.ClientSecretBasic(), insecure)
    const error = await oauth.clientCredentialsGrant(config).catch((err: unknown) => err)
    // A 401 with a WWW-Authenticate challenge is reported as the challenge,
    // with the response (and its RFC 6749 body) attached.
    t.ok(error instanceof oauth.WWWAuthenticateChallengeError, 'a challenge error')
    const challenge = error as oauth.WWWAuthenticateChallengeError
    t.equal(challenge.status, 401)
    t.equal(challenge.cause[0]?.scheme, 'basic')
    t.equal(challenge.cause[0]?.parameters.realm, issuer)
    t.equal((await challenge.response.json() as { error: string }).error, 'invalid_client')
  })
})

test('openid-client: private_key_jwt with an ES256 key registered inline', async (t) => {
  const { issuer, databaseUrl } = await serve(t)
  const { privateKey, publicKey } = await generateKeyPair('ES256')
  const jwk = { ...await exportJWK(publicKey), kid: 'interop-es256', alg: 'ES256', use: 'sig' }
  await sql(databaseUrl, 'INSERT INTO clients (client_id, jwks) VALUES ($1, $2)', ['interop-keys', JSON.stringify({ keys: [jwk] })])

  const config = await oauth.discovery(new URL(issuer), 'interop-keys', undefined, oauth.PrivateKeyJwt({ key: privateKey, kid: 'interop-es256' }), insecure)
  const granted = await oauth.clientCredentialsGrant(config)
  t.type(granted.access_token, 'string')
  const refreshed = await oauth.refreshTokenGrant(config, granted.refresh_token ?? '')
  const active = await oauth.tokenIntrospection(config, refreshed.access_token)
  t.equal(active.active, true)
  t.equal(active.client_id, 'interop-keys')
  await oauth.tokenRevocation(config, refreshed.access_token)
  t.equal((await oauth.tokenIntrospection(config, refreshed.access_token)).active, false)
})

test('jose validates our access tokens as a gateway does: discovery, jwks_uri, signature, iss, aud, exp, kid, scope', async (t) => {
  const { issuer, databaseUrl } = await serve(t)
  await insertClient(databaseUrl, { id: 'gateway-client', secret: 'gateway-secret' })
  await sql(databaseUrl, "UPDATE clients SET scopes = '{orders:read}', default_scopes = '{orders:read}', audiences = '{https://orders.example.com}' WHERE client_id = 'gateway-client'")

  // What an API Gateway JWT authorizer does: read {issuer}/.well-known/openid-configuration, then its jwks_uri.
  const discovery = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json() as Record<string, string>
  t.equal(discovery.issuer, issuer, 'discovery issuer is byte-identical to the configured one')
  const jwks = createRemoteJWKSet(new URL(discovery.jwks_uri ?? ''))

  const tokenResponse = await fetch(discovery.token_endpoint ?? '', {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'client_credentials', client_id: 'gateway-client', client_secret: 'gateway-secret', audience: 'https://orders.example.com' })
  })
  t.equal(tokenResponse.status, 200)
  const { access_token: accessToken } = await tokenResponse.json() as { access_token: string }

  const { payload, protectedHeader } = await jwtVerify(accessToken, jwks, {
    issuer,
    audience: 'https://orders.example.com',
    algorithms: ['RS256'],
    typ: 'at+jwt',
    requiredClaims: ['exp', 'iat', 'jti', 'client_id', 'scope', 'sid']
  })
  t.type(protectedHeader.kid, 'string', 'the header names the key')
  t.equal(payload.sub, 'gateway-client')
  t.type(payload.scope, 'string', 'scope is one string, as the gateway requires')
  t.ok((payload.scope as string).split(' ').includes('orders:read'), 'the route scope is in it')
  t.ok((payload.exp ?? 0) > Date.now() / 1000, 'exp in the future')
  t.ok((payload.iat ?? Infinity) <= Date.now() / 1000 + 1, 'iat not in the future')

  // The same checks refuse what a gateway would refuse.
  await t.rejects(jwtVerify(accessToken, jwks, { issuer: `${issuer}/`, audience: 'https://orders.example.com' }), joseErrors.JWTClaimValidationFailed, 'an issuer that differs by a trailing slash')
  await t.rejects(jwtVerify(accessToken, jwks, { issuer, audience: 'api' }), joseErrors.JWTClaimValidationFailed, 'another audience')
  const [header, body] = accessToken.split('.')
  const tampered = `${header ?? ''}.${Buffer.from(JSON.stringify({ ...payload, scope: 'orders:read orders:admin' })).toString('base64url')}.${accessToken.split('.')[2] ?? ''}`
  t.not(body, tampered.split('.')[1])
  await t.rejects(jwtVerify(tampered, jwks, { issuer, audience: 'https://orders.example.com' }), joseErrors.JWSSignatureVerificationFailed, 'a widened scope breaks the signature')
})

test('oauth4webapi: a token exchange (RFC 8693) through its generic token endpoint request', async (t) => {
  const { issuer, databaseUrl } = await serve(t)
  const exchange = 'urn:ietf:params:oauth:grant-type:token-exchange'
  const accessTokenType = 'urn:ietf:params:oauth:token-type:access_token'
  for (const id of ['interop-user', 'interop-gateway']) await insertClient(databaseUrl, { id, secret: `${id} secret` })
  await sql(databaseUrl, "UPDATE clients SET scopes = '{orders:read,orders:write}', default_scopes = '{orders:read,orders:write}' WHERE client_id = 'interop-user'")
  await sql(databaseUrl, `UPDATE clients SET scopes = '{orders:read}', grant_types = '{client_credentials,${exchange}}', may_exchange = '{interop-user}' WHERE client_id = 'interop-gateway'`)

  const options = { [oauth4.allowInsecureRequests]: true }
  const as = await oauth4.processDiscoveryResponse(new URL(issuer), await oauth4.discoveryRequest(new URL(issuer), { ...options, algorithm: 'oauth2' }))
  t.ok(as.grant_types_supported?.includes(exchange), 'discovery lists the grant')
  const user: oauth4.Client = { client_id: 'interop-user' }
  const subject = await oauth4.processClientCredentialsResponse(as, user,
    await oauth4.clientCredentialsGrantRequest(as, user, oauth4.ClientSecretBasic('interop-user secret'), {}, options))

  const gateway: oauth4.Client = { client_id: 'interop-gateway' }
  const gatewayAuth = oauth4.ClientSecretPost('interop-gateway secret')
  const response = await oauth4.genericTokenEndpointRequest(as, gateway, gatewayAuth, exchange,
    { subject_token: subject.access_token, subject_token_type: accessTokenType, requested_token_type: accessTokenType }, options)
  const exchanged = await oauth4.processGenericTokenEndpointResponse(as, gateway, response)
  t.equal(exchanged.token_type, 'bearer', 'the library normalises the token type')
  t.equal(exchanged.issued_token_type, accessTokenType, 'RFC 8693 §2.2.1 issued_token_type')
  t.equal(exchanged.refresh_token, undefined, 'no refresh token')
  t.equal(exchanged.scope, 'orders:read', 'narrowed to what the gateway may hold')
  t.ok(typeof exchanged.expires_in === 'number' && exchanged.expires_in > 0 && exchanged.expires_in <= 3600)

  // The exchanged token validates as any of ours, for the subject.
  const request = new Request('http://localhost/orders', { headers: { authorization: `Bearer ${exchanged.access_token}` } })
  const claims = await oauth4.validateJwtAccessToken(as, request, 'api', options)
  t.equal(claims.sub, 'interop-user')
  t.equal(claims.client_id, 'interop-gateway')

  // A refusal reaches the library as the RFC's error.
  const refused = await oauth4.genericTokenEndpointRequest(as, gateway, gatewayAuth, exchange, { subject_token: 'not-a-token', subject_token_type: accessTokenType }, options)
  const error = await oauth4.processGenericTokenEndpointResponse(as, gateway, refused).catch((err: unknown) => err)
  t.ok(error instanceof oauth4.ResponseBodyError, 'a response body error')
  t.equal((error as oauth4.ResponseBodyError).error, 'invalid_request')
})
