// Hostile input at every endpoint, and what it must not do (4: injection,
// in every parameter but the client credentials). SQL and Redis
// metacharacters are mere data: OAuth errors, and nothing changes.
import { test } from 'tap'
import { assertOAuthError } from './helper.ts'
import { assertInactive, assertRevokeIgnored, assertVerifyRefuses, basicOf, CLIENT, postForm, SECRET, verifyToken } from './attacks/common.ts'
import { assertNothingChanged, injectionScene } from './attacks/injection.ts'

test('SQL and Redis metacharacters in every other parameter: OAuth errors, and nothing changes', async (t) => {
  const scene = await injectionScene(t)
  const { app, values, genuine } = scene
  const basic = basicOf(CLIENT, SECRET)
  const cc = { grant_type: 'client_credentials' }
  for (const value of values) {
    const v = JSON.stringify(value)
    assertOAuthError(t, await postForm(app, '/oauth/token', { ...cc, scope: value }, basic), 400, 'invalid_scope', `scope ${v}`)
    assertOAuthError(t, await postForm(app, '/oauth/token', { ...cc, audience: value }, basic), 400, 'invalid_target', `audience ${v}`)
    assertOAuthError(t, await postForm(app, '/oauth/token', { ...cc, resource: value }, basic), 400, 'invalid_target', `resource ${v}`)
    assertOAuthError(t, await postForm(app, '/oauth/token', { grant_type: 'refresh_token', refresh_token: value }, basic), 400, 'invalid_grant', `refresh_token ${v}`)
    const refreshWith = { grant_type: 'refresh_token', refresh_token: genuine.refresh_token }
    assertOAuthError(t, await postForm(app, '/oauth/token', { ...refreshWith, scope: value }, basic), 400, 'invalid_scope', `a real refresh token, scope ${v}`)
    assertOAuthError(t, await postForm(app, '/oauth/token', { ...refreshWith, audience: value }, basic), 400, 'invalid_target', `a real refresh token, audience ${v}`)
    assertOAuthError(t, await postForm(app, '/oauth/token', { grant_type: value }, basic), 400, 'unsupported_grant_type', `grant_type ${v}`)
    assertRevokeIgnored(t, await postForm(app, '/oauth/revoke', { token: value }, basic), `revocation of token ${v}`)
    assertInactive(t, await postForm(app, '/oauth/introspect', { token: value }, basic), `introspection of token ${v}`)
    assertVerifyRefuses(t, await verifyToken(app, value), 'malformed', `verify token ${v}`)
    assertVerifyRefuses(t, await verifyToken(app, genuine.access_token, value), 'invalid_audience', `verify audience ${v}`)
  }

  await assertNothingChanged(t, scene)
})
