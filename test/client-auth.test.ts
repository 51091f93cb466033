// client-auth/: each method reads its own credentials, and one entry point
// authenticates for every endpoint that takes client credentials.
import { test } from 'tap'
import { AUTH_METHODS_SUPPORTED, JWT_BEARER_ASSERTION, readCredentials } from '../client-auth/index.ts'
import { OAuthError } from '../plugins/errors.ts'
import { basicAuth, build, FORM, form, insertClient } from './helper.ts'

test('readCredentials: each method recognises its own credentials', async (t) => {
  t.strictSame(readCredentials(basicAuth('svc a', 'p:w+d'), {}), { method: 'client_secret_basic', clientId: 'svc a', clientSecret: 'p:w+d' })
  t.strictSame(readCredentials(undefined, { client_id: 'svc', client_secret: 's' }), { method: 'client_secret_post', clientId: 'svc', clientSecret: 's' })
  const assertion = `e30.${Buffer.from(JSON.stringify({ sub: 'svc-jwt' })).toString('base64url')}.sig`
  t.strictSame(readCredentials(undefined, { client_assertion_type: JWT_BEARER_ASSERTION, client_assertion: assertion }),
    { method: 'private_key_jwt', clientId: 'svc-jwt', assertion }, 'the client id is the assertion\'s subject')
  t.strictSame(readCredentials(undefined, { client_id: 'svc' }), { method: 'none', clientId: 'svc' })
  t.strictSame(readCredentials(undefined, {}), { method: 'none' })
  t.strictSame(readCredentials('Bearer abc', {}), { method: 'unsupported_scheme' }, 'another scheme fails later, as invalid_client')
  t.throws(() => readCredentials(basicAuth('svc', 's'), { client_secret: 's' }), OAuthError, 'two methods at once are refused')
  t.throws(() => readCredentials(undefined, { client_assertion: assertion, client_secret: 's' }), OAuthError, 'an assertion and a secret are refused')
})

test('discovery publishes the methods client-auth/ supports, for every endpoint', async (t) => {
  const { app } = await build(t)
  const doc = (await app.inject({ method: 'GET', url: '/.well-known/openid-configuration' })).json()
  t.strictSame(AUTH_METHODS_SUPPORTED, ['client_secret_basic', 'client_secret_post', 'private_key_jwt'])
  for (const endpoint of ['token', 'revocation', 'introspection']) {
    t.strictSame(doc[`${endpoint}_endpoint_auth_methods_supported`], AUTH_METHODS_SUPPORTED, endpoint)
  }
})

test('token, revoke and introspect answer alike for a wrong secret and for a disabled client', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-auth', secret: 'auth-secret' })
  await insertClient(databaseUrl, { id: 'svc-off', secret: 'off-secret', status: 'disabled' })
  const endpoints: Array<[string, Record<string, string>]> = [
    ['/oauth/token', { grant_type: 'client_credentials' }],
    ['/oauth/revoke', { token: 'anything' }],
    ['/oauth/introspect', { token: 'anything' }]
  ]
  for (const [url, fields] of endpoints) {
    const wrong = await app.inject({ method: 'POST', url, headers: { ...FORM, authorization: basicAuth('svc-auth', 'not-it') }, payload: form(fields) })
    t.equal(wrong.statusCode, 401, `${url}: wrong secret`)
    t.strictSame(wrong.json(), { error: 'invalid_client', error_description: 'client authentication failed' })
    t.equal(wrong.headers['www-authenticate'], 'Basic realm="session-service"')
    const disabled = await app.inject({ method: 'POST', url, headers: { ...FORM, authorization: basicAuth('svc-off', 'off-secret') }, payload: form(fields) })
    t.equal(disabled.statusCode, 400, `${url}: disabled client`)
    t.strictSame(disabled.json(), { error: 'unauthorized_client', error_description: 'the client is disabled' })
  }
})
