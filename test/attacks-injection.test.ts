// Hostile input at every endpoint, and what it must not do (4: injection,
// in client ids and secrets). SQL and Redis metacharacters are mere data: the
// clients table holds exactly the clients inserted and no Redis key appears
// outside the test's prefix.
import { test } from 'tap'
import type { LightMyRequestResponse } from 'fastify'
import { assertInvalidClient, assertOAuthError, build, insertClient, issueTokens } from './helper.ts'
import { CLIENT, SECRET, postForm, basicOf, observable, countRows } from './attacks/common.ts'
import { assertNothingChanged, HOSTILE, injectionScene } from './attacks/injection.ts'

test('SQL and Redis metacharacters in client ids and secrets: invalid_client, and nothing changes', async (t) => {
  const scene = await injectionScene(t)
  const { app, values, genuine, marker } = scene
  const cc = { grant_type: 'client_credentials' }
  // Ids reach the client cache and PostgreSQL: every value, both ways. A
  // failed authentication costs a bcrypt compare, so the paths that share
  // that code (the secret, the other endpoints) take the plain strings only.
  for (const value of values) {
    const v = JSON.stringify(value)
    assertInvalidClient(t, await postForm(app, '/oauth/token', { ...cc, client_id: value, client_secret: SECRET }), `client_id ${v}`)
    assertInvalidClient(t, await postForm(app, '/oauth/token', cc, basicOf(value, SECRET)), `Basic id ${v}`)
  }
  for (const [index, value] of HOSTILE.entries()) {
    const v = JSON.stringify(value)
    assertInvalidClient(t, await postForm(app, '/oauth/token', { ...cc, client_id: CLIENT, client_secret: value }), `client_secret ${v}`)
    if (index % 2 === 0) {
      assertInvalidClient(t, await postForm(app, '/oauth/introspect', { token: genuine.access_token }, basicOf(value, value)), `introspection, Basic id and secret ${v}`)
    } else {
      assertInvalidClient(t, await postForm(app, '/oauth/revoke', { token: genuine.access_token, client_id: value, client_secret: value }), `revocation, client_id and client_secret ${v}`)
    }
  }
  // Very long ids: over the 255-character bound in a form they are malformed
  // (400); in Basic they are simply unknown (401).
  const longIds = ['x'.repeat(255), '\' OR 1=1 --'.repeat(100), `${'client:v2:*'.repeat(1000)}${marker}`]
  for (const id of longIds) {
    const what = `an id of ${id.length} characters`
    const viaPost = await postForm(app, '/oauth/token', { ...cc, client_id: id, client_secret: SECRET })
    if (id.length <= 255) assertInvalidClient(t, viaPost, `${what} (client_secret_post)`)
    else assertOAuthError(t, viaPost, 400, 'invalid_request', `${what} (client_secret_post)`)
    assertInvalidClient(t, await postForm(app, '/oauth/token', cc, basicOf(id, SECRET)), `${what} (Basic)`)
  }

  await assertNothingChanged(t, scene)
})

test('a NUL character in a client id is refused like any unknown client', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: CLIENT, secret: SECRET })
  const genuine = await issueTokens(app, CLIENT, SECRET)
  const unknown = await postForm(app, '/oauth/token', { grant_type: 'client_credentials', client_id: 'svc-nobody', client_secret: SECRET })
  assertInvalidClient(t, unknown, 'an unknown client')
  const unknownIntrospection = await postForm(app, '/oauth/introspect', { token: genuine.access_token }, basicOf('svc-nobody', SECRET))

  const cases: Array<[string, () => Promise<LightMyRequestResponse>, LightMyRequestResponse]> = [
    ['client_secret_post, client_id "svc\\u0000"', async () => await postForm(app, '/oauth/token', { grant_type: 'client_credentials', client_id: `${CLIENT}\u0000`, client_secret: SECRET }), unknown],
    ['Basic, id "\\u0000"', async () => await postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, basicOf('\u0000', SECRET)), unknown],
    ['introspection, Basic id "svc\\u0000"', async () => await postForm(app, '/oauth/introspect', { token: genuine.access_token }, basicOf(`${CLIENT}\u0000`, SECRET)), unknownIntrospection]
  ]
  for (const [what, send, reference] of cases) {
    const res = await send()
    // PostgreSQL text cannot hold a NUL: asked, it would fail, and the answer
    // would be a 503 claiming the database is down.
    t.not(res.statusCode, 503, `${what}: not 503 (the database is not unavailable)`)
    t.strictSame(observable(res), observable(reference), `${what}: answered exactly as an unknown client`)
  }
  // Whatever the answer, the service is still there for everyone else.
  t.equal((await postForm(app, '/oauth/token', { grant_type: 'client_credentials' }, basicOf(CLIENT, SECRET))).statusCode, 200, 'the known client still gets tokens')
  t.equal(await countRows(databaseUrl, 'clients'), 1, 'the clients table holds the one client inserted')
})
