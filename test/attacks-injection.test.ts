// Hostile input at every endpoint, and what it must not do (4: injection).
// SQL and Redis metacharacters in any parameter are mere data: the clients
// table holds exactly the clients inserted and no Redis key appears outside
// the test's prefix.
import { randomBytes } from 'node:crypto'
import { test } from 'tap'
import type { LightMyRequestResponse } from 'fastify'
import { Redis } from 'ioredis'
import { clientCacheKey, insertClientRow } from '../plugins/clients.js'
import { assertInvalidClient, assertOAuthError, backends, build, decodeJwt, insertClient, issueTokens, parseBody, sql, TEST_REDIS_URL } from './helper.js'
import { CLIENT, SECRET, postForm, verifyToken, basicOf, observable, assertVerifyRefuses, assertInactive, assertRevokeIgnored, countRows, assertUntouched } from './attacks/common.js'

// ---------------------------------------------------------------- 4. injection

/** Keys of the whole Redis matching a glob, across every prefix. */
async function scanKeys (redis: Redis, pattern: string): Promise<string[]> {
  const found: string[] = []
  let cursor = '0'
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
    found.push(...keys)
    cursor = next
  } while (cursor !== '0')
  return found
}

const globEscape = (value: string): string => value.replace(/[*?[\]\\]/g, '\\$&')

test('SQL and Redis metacharacters in every parameter: OAuth errors, and nothing changes', async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t)
  const marker = randomBytes(6).toString('hex')
  const hostile = ['\' OR 1=1 --', '"; DROP TABLE clients; --', '*', '\r\nFLUSHALL\r\n', 'client:v2:*', '\') OR (\'a\'=\'a', '$1', '\\', '%00%', '*\r\nDEL *\r\n']
  // Each string as it is, and with a marker that only this run's requests can have put in a key.
  const values = hostile.flatMap((value) => [value, `${value} ${marker}`])

  // The known client, allowed enough requests for all of the below; and
  // clients whose ids are themselves hostile, registered legitimately (with
  // a secret of their own: the requests below present the known client's).
  await insertClient(databaseUrl, { id: CLIENT, secret: SECRET, rateLimit: 100_000 })
  const hostileIds = [`client:v2:* ${marker}`, `\r\nFLUSHALL\r\n ${marker}`, `' OR 1=1 -- ${marker}`]
  const hostileSecret = 'hostile-id-secret'
  // At the service's bcrypt cost: a cheaper hash would be replaced at the
  // first success, and its cache entry dropped, under the control below.
  for (const id of hostileIds) await insertClientRow(app.db, { id, secret: hostileSecret })
  const inserted = [CLIENT, ...hostileIds].sort()
  const genuine = await issueTokens(app, CLIENT, SECRET)

  const redis = backends.redis ? new Redis(TEST_REDIS_URL) : undefined
  t.teardown(async () => { await redis?.quit() })
  const patterns = [`*${marker}*`, ...hostile.map((value) => `*${globEscape(value)}*`)]
  const before = new Set<string>()
  if (redis !== undefined) {
    await redis.set(`${redisPrefix}attacks:sentinel`, 'still here')
    for (const pattern of patterns) for (const key of await scanKeys(redis, pattern)) before.add(key)
  }

  const basic = basicOf(CLIENT, SECRET)
  const cc = { grant_type: 'client_credentials' }
  // Ids reach the client cache and PostgreSQL: every value, both ways. A
  // failed authentication costs a bcrypt compare, so the paths that share
  // that code (the secret, the other endpoints) take the plain strings only.
  for (const value of values) {
    const v = JSON.stringify(value)
    assertInvalidClient(t, await postForm(app, '/oauth/token', { ...cc, client_id: value, client_secret: SECRET }), `client_id ${v}`)
    assertInvalidClient(t, await postForm(app, '/oauth/token', cc, basicOf(value, SECRET)), `Basic id ${v}`)
  }
  for (const [index, value] of hostile.entries()) {
    const v = JSON.stringify(value)
    assertInvalidClient(t, await postForm(app, '/oauth/token', { ...cc, client_id: CLIENT, client_secret: value }), `client_secret ${v}`)
    if (index % 2 === 0) {
      assertInvalidClient(t, await postForm(app, '/oauth/introspect', { token: genuine.access_token }, basicOf(value, value)), `introspection, Basic id and secret ${v}`)
    } else {
      assertInvalidClient(t, await postForm(app, '/oauth/revoke', { token: genuine.access_token, client_id: value, client_secret: value }), `revocation, client_id and client_secret ${v}`)
    }
  }
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

  // Nothing changed: the same clients, a usable refresh token, a known client served.
  t.equal(await countRows(databaseUrl, 'clients'), inserted.length, 'the clients table holds exactly the clients inserted')
  const ids = await sql<{ client_id: string }>(databaseUrl, 'SELECT client_id FROM clients ORDER BY client_id')
  t.strictSame(ids.map((row) => row.client_id).sort(), inserted, 'and they are the same clients')
  const refreshed = await postForm(app, '/oauth/token', { grant_type: 'refresh_token', refresh_token: genuine.refresh_token }, basic)
  t.equal(refreshed.statusCode, 200, 'the refresh token refused with hostile scopes and audiences still refreshes', { body: refreshed.body })
  const again = await postForm(app, '/oauth/token', cc, basic)
  t.equal(again.statusCode, 200, 'the known client still gets tokens')
  for (const id of hostileIds) {
    const res = await postForm(app, '/oauth/token', cc, basicOf(id, hostileSecret))
    t.equal(res.statusCode, 200, `a client registered as ${JSON.stringify(id)} gets tokens`, { body: res.body })
    t.equal(decodeJwt(String(parseBody(res.body).access_token)).payload.sub, id, 'issued to exactly that id')
  }
  await assertUntouched(t, app, databaseUrl, String(parseBody(again.body).access_token))

  if (redis === undefined) {
    t.comment('no Redis server: the Redis checks are skipped (the store is in the database)')
    return
  }
  t.equal(await redis.get(`${redisPrefix}attacks:sentinel`), 'still here', 'Redis was not flushed: a key set before the attacks is still there')
  // Positive control: the hostile ids' cache entries are found, under the
  // prefix. Cached afresh first: the entry made when the attacks began may
  // have outlived CLIENT_CACHE_TTL by now on a slow machine.
  await app.clients.forget(hostileIds[0] ?? '')
  t.equal((await postForm(app, '/oauth/token', cc, basicOf(hostileIds[0] ?? '', hostileSecret))).statusCode, 200)
  const cached = await scanKeys(redis, `${globEscape(redisPrefix)}*${marker}*`)
  t.ok(cached.includes(`${redisPrefix}${clientCacheKey(hostileIds[0] ?? '')}`), 'control: the scan finds the cache entry of a hostile client id, under the prefix')
  const created: string[] = []
  for (const pattern of patterns) {
    for (const key of await scanKeys(redis, pattern)) if (!before.has(key)) created.push(key)
  }
  t.strictSame(created.filter((key) => !key.startsWith(redisPrefix)), [], 'no key holding an injected string was created outside the test\'s prefix')
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
