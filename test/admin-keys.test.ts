// The admin API for signing keys kept in the database (KEY_STORE=database),
// as automation calls it: the list, rotations, retirements and their history,
// each refusal, the JWKS of the same instance changed by the time the answer
// comes, and another instance on the same database after it reads the keys.
import { randomBytes } from 'node:crypto'
import { test, type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { basicAuth, build, decodeJwt, injectAdmin, insertClient, issueTokens, sql, tokenRequest, type BuildOptions, type TestApp } from './helper.ts'
import { migratedDataDir } from './embedded/apps.ts'

const ADMIN_SCOPE = 'session-service:admin'
const ADMIN_ID = 'automation'
const ADMIN_SECRET = 'automation secret'
const ACTOR = `client:${ADMIN_ID}`
const KEK = randomBytes(32).toString('base64')
const DATABASE_MODE = { env: { KEY_STORE: 'database', KEY_ENCRYPTION_KEY: KEK }, unset: ['JWT_PRIVATE_KEY', 'JWT_PUBLIC_KEY'] }

interface Admin extends TestApp {
  /** an admin request with a fresh admin token (unless headers say otherwise) */
  call: (method: string, url: string, body?: unknown, headers?: Record<string, string>) => Promise<LightMyRequestResponse>
}

interface KeyBody { kid: string, algorithm: string, state: string, created_at: string, activate_after: string | null, remove_after: string | null, public_jwk: Record<string, string> }

async function adminToken (app: FastifyInstance, scope = ADMIN_SCOPE): Promise<string> {
  const res = await tokenRequest(app, { grant_type: 'client_credentials', scope }, { authorization: basicAuth(ADMIN_ID, ADMIN_SECRET) })
  if (res.statusCode !== 200) throw new Error(`admin token: ${res.statusCode} ${res.body}`)
  return res.json<{ access_token: string }>().access_token
}

/** An app (database mode unless `options` say otherwise) with one admin client allowed the admin scope. */
async function setup (t: Test, options: BuildOptions = DATABASE_MODE): Promise<Admin> {
  const built = await build(t, { keyPollMs: 0, ...options })
  if (options.databaseUrl === undefined) {
    await insertClient(built.databaseUrl, { id: ADMIN_ID, secret: ADMIN_SECRET })
    await sql(built.databaseUrl, 'UPDATE clients SET scopes = $2 WHERE client_id = $1', [ADMIN_ID, [ADMIN_SCOPE, 'other']])
  }
  // A token per call: one signed by a key removed since would no longer be accepted.
  const call = async (method: string, url: string, body?: unknown, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> =>
    await injectAdmin(built.app, {
      method: method as 'GET',
      url,
      headers: { authorization: `Bearer ${await adminToken(built.app)}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
      ...(body === undefined ? {} : { payload: typeof body === 'string' ? body : JSON.stringify(body) })
    })
  return { ...built, call }
}

async function jwksKids (app: FastifyInstance): Promise<string[]> {
  const res = await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })
  return res.json<{ keys: Array<{ kid: string }> }>().keys.map((key) => key.kid)
}

async function storedKeys (admin: Admin): Promise<{ signing_kid: string, keys: KeyBody[] }> {
  const res = await admin.call('GET', '/admin/keys')
  if (res.statusCode !== 200) throw new Error(`GET /admin/keys: ${res.statusCode} ${res.body}`)
  return res.json()
}

const ENDPOINTS: Array<[string, string, unknown?]> = [
  ['GET', '/admin/keys'], ['GET', '/admin/keys/events'], ['POST', '/admin/keys/rotate', {}], ['POST', '/admin/keys/some-kid/retire', {}]
]

test('without a valid admin token: 401; without the scope: 403; never on the public listener', async (t) => {
  const admin = await setup(t)
  const other = await adminToken(admin.app, 'other')
  for (const [method, url, body] of ENDPOINTS) {
    const none = await injectAdmin(admin.app, { method: method as 'GET', url, ...(body === undefined ? {} : { payload: body as object }) })
    t.equal(none.statusCode, 401, `${method} ${url} without a token: 401`)
    t.equal(none.headers['www-authenticate'], 'Bearer realm="session-service-admin"')
    const unscoped = await admin.call(method, url, body, { authorization: `Bearer ${other}` })
    t.equal(unscoped.statusCode, 403, `${method} ${url} without the scope: 403`)
    t.equal(unscoped.json().error, 'insufficient_scope')
    const token = await adminToken(admin.app)
    const publicSide = await admin.app.inject({ method: method as 'GET', url, headers: { authorization: `Bearer ${token}` } })
    t.equal(publicSide.statusCode, 404, `${method} ${url} on the public listener: 404`)
  }
  t.equal((await admin.call('GET', '/admin/keys')).headers['cache-control'], 'no-store', 'answers are not cached')
})

test('KEY_STORE=settings: every operation answers 409 and says how to enable it, after authentication', async (t) => {
  const admin = await setup(t, {})
  for (const [method, url, body] of ENDPOINTS) {
    const res = await admin.call(method, url, body)
    t.equal(res.statusCode, 409, `${method} ${url}: 409`)
    t.match(res.json(), { error: 'conflict', error_description: /KEY_STORE=settings.*KEY_STORE=database/ })
    t.equal((await injectAdmin(admin.app, { method: method as 'GET', url })).statusCode, 401, `${method} ${url} without a token: still 401`)
  }
  const bad = await admin.call('POST', '/admin/keys/rotate', { unknown: true })
  t.equal(bad.statusCode, 409, 'the mode is said before the body is looked at')
  t.same(await jwksKids(admin.app), [admin.app.keys.kid], 'the settings\' key still signs')
})

test('GET /admin/keys: the stored key, public parts only, and the key this instance signs with', async (t) => {
  const admin = await setup(t)
  const listed = await storedKeys(admin)
  t.equal(listed.keys.length, 1, 'the key made on the first start')
  const [key] = listed.keys
  t.match(key, { kid: listed.signing_kid, algorithm: 'RS256', state: 'current', activate_after: null, retired_at: null, remove_after: null })
  t.ok(Number.isFinite(Date.parse(key?.created_at ?? '')), 'created_at is a date')
  t.strictSame(Object.keys(key?.public_jwk ?? {}).sort(), ['alg', 'e', 'kid', 'kty', 'n', 'use'], 'the public JWK, no private parameter')
  t.strictSame(await jwksKids(admin.app), [listed.signing_kid], 'the key of the JWKS')
  const issued = (await tokenRequest(admin.app, { grant_type: 'client_credentials', scope: ADMIN_SCOPE }, { authorization: basicAuth(ADMIN_ID, ADMIN_SECRET) })).json()
  t.equal(decodeJwt(issued.access_token).header.kid, listed.signing_kid, 'and of the tokens')
  t.notMatch((await admin.call('GET', '/admin/keys')).body, /"d"|PRIVATE|private_key/, 'no private key anywhere in the answer')
})

test('rotate: a next key published at once; again: the same key; another algorithm: 409; now: it signs and the old key retires', async (t) => {
  let now = Date.parse('2026-03-01T12:00:00.000Z')
  const admin = await setup(t, { ...DATABASE_MODE, clock: () => now })
  const first = (await storedKeys(admin)).signing_kid

  const rotated = await admin.call('POST', '/admin/keys/rotate')
  t.equal(rotated.statusCode, 200, rotated.body)
  const next = rotated.json()
  t.match(next, { algorithm: 'RS256', state: 'next', activate_after: '2026-03-01T15:00:00.000Z', retired: null, created: true }, 'no body: a next key, KEY_PUBLISH_AHEAD from now')
  t.strictSame(await jwksKids(admin.app), [first, next.kid], 'published by the time the answer came; the old key still signs')
  t.equal(admin.app.keys.kid, first)

  now += 3600_000
  const again = await admin.call('POST', '/admin/keys/rotate', {})
  t.match(again.json(), { kid: next.kid, state: 'next', activate_after: '2026-03-01T15:00:00.000Z', created: false }, 'the waiting key, not a second one')
  // curl -X POST with a JSON content type and no data; curl -d ''
  for (const type of ['application/json', 'application/x-www-form-urlencoded']) {
    const empty = await admin.call('POST', '/admin/keys/rotate', '', { 'content-type': type, 'content-length': '0' })
    t.match(empty.json(), { kid: next.kid, created: false }, `an empty ${type} body is {}`)
  }
  const conflict = await admin.call('POST', '/admin/keys/rotate', { algorithm: 'ES256' })
  t.equal(conflict.statusCode, 409, 'another algorithm while a next key waits: 409')
  t.match(conflict.json(), { error: 'conflict', error_description: new RegExp(`${next.kid} \\(RS256\\) is waiting`) })

  const immediate = await admin.call('POST', '/admin/keys/rotate', { now: true })
  t.equal(immediate.statusCode, 200)
  t.match(immediate.json(), { kid: next.kid, state: 'current', activate_after: null, retired: first, created: false })
  t.equal(admin.app.keys.kid, next.kid, 'this instance signs with it at once')
  const listed = await storedKeys(admin)
  t.equal(listed.signing_kid, next.kid)
  t.strictSame(listed.keys.map((key) => [key.kid, key.state]), [[next.kid, 'current'], [first, 'retired']])
  t.ok(listed.keys[1]?.remove_after, 'the retired key leaves once its last token has expired')
  const token = await issueTokens(admin.app, ADMIN_ID, ADMIN_SECRET)
  t.equal(decodeJwt(token.access_token).header.kid, next.kid, 'new tokens carry its kid')

  const es = await admin.call('POST', '/admin/keys/rotate', { algorithm: 'ES256', now: true })
  t.match(es.json(), { algorithm: 'ES256', state: 'current', retired: next.kid, created: true }, 'no key waits: another algorithm is fine')
  t.equal(admin.app.keys.algorithm, 'ES256')
})

test('retire: unknown 404, current 409, retired 409 unless now; now removes it from the JWKS; a next key leaves at once', async (t) => {
  const admin = await setup(t)
  const first = (await storedKeys(admin)).signing_kid
  const unknown = await admin.call('POST', '/admin/keys/NoSuchKid0000000000000000000000000000000000/retire', {})
  t.equal(unknown.statusCode, 404)
  t.same(unknown.json(), { error: 'not_found', error_description: 'no signing key NoSuchKid0000000000000000000000000000000000' })
  const malformed = await admin.call('POST', '/admin/keys/not-a-kid/retire', {})
  t.equal(malformed.statusCode, 400, 'a kid that is not a thumbprint: 400, before any lookup')
  const current = await admin.call('POST', `/admin/keys/${first}/retire`)
  t.equal(current.statusCode, 409, 'the current key: 409')
  t.match(current.json().error_description, `${first} is the signing key`)

  const second = (await admin.call('POST', '/admin/keys/rotate', { now: true })).json().kid
  const retired = await admin.call('POST', `/admin/keys/${first}/retire`, {})
  t.equal(retired.statusCode, 409, 'a retired key without now: 409')
  t.match(retired.json(), { error: 'conflict', error_description: /retired already and leaves the JWKS at/ })
  t.strictSame(await jwksKids(admin.app), [second, first], 'still published')

  const removed = await admin.call('POST', `/admin/keys/${first}/retire`, { now: true })
  t.equal(removed.statusCode, 200, removed.body)
  t.strictSame(removed.json(), { kid: first, outcome: 'removed', remove_after: null })
  t.strictSame(await jwksKids(admin.app), [second], 'gone from the JWKS at once')

  const waiting = (await admin.call('POST', '/admin/keys/rotate')).json().kid
  t.strictSame(await jwksKids(admin.app), [second, waiting])
  const dropped = await admin.call('POST', `/admin/keys/${waiting}/retire`)
  t.strictSame(dropped.json(), { kid: waiting, outcome: 'removed', remove_after: null }, 'a next key signed nothing: it leaves at once')
  t.strictSame(await jwksKids(admin.app), [second])
})

test('bad requests: 400 with the usual body, and nothing changes', async (t) => {
  const admin = await setup(t)
  for (const body of [{ now: 'yes' }, { algorithm: 'HS256' }, { algorithm: 'RS256', extra: 1 }, [], '{"now":', 'null']) {
    const res = await admin.call('POST', '/admin/keys/rotate', body)
    t.equal(res.statusCode, 400, `rotate ${JSON.stringify(body)}: 400`)
    t.equal(res.json().error, 'invalid_request')
  }
  const form = await admin.call('POST', '/admin/keys/rotate', 'now=true', { 'content-type': 'application/x-www-form-urlencoded' })
  t.equal(form.statusCode, 400, 'a body that is not JSON: 400')
  t.equal((await admin.call('POST', '/admin/keys/NoSuchKid0000000000000000000000000000000000/retire', { never: true })).statusCode, 400, 'retire with an unknown field: 400')
  t.equal((await admin.call('POST', '/admin/keys/a%20b/retire', {})).statusCode, 400, 'a kid that cannot be one: 400')
  for (const query of ['limit=0', 'limit=501', 'limit=x', 'before=0', 'after=3']) {
    t.equal((await admin.call('GET', `/admin/keys/events?${query}`)).statusCode, 400, `events?${query}: 400`)
  }
  t.equal((await storedKeys(admin)).keys.length, 1, 'no key was made')
})

test('events: every change with its author, newest first, a page at a time', async (t) => {
  const admin = await setup(t)
  const first = (await storedKeys(admin)).signing_kid
  const next = (await admin.call('POST', '/admin/keys/rotate')).json().kid
  await admin.call('POST', '/admin/keys/rotate', { now: true })
  await admin.call('POST', `/admin/keys/${first}/retire`, { now: true })

  const res = await admin.call('GET', '/admin/keys/events')
  t.equal(res.statusCode, 200)
  const { events, next: cursor } = res.json<{ events: Array<{ id: number, kid: string, action: string, actor: string, at: string, details: Record<string, unknown> }>, next: number | null }>()
  t.strictSame(events.map((event) => [event.kid, event.action, event.actor]), [
    [first, 'removed', ACTOR],
    [next, 'activated', ACTOR],
    [first, 'retired', ACTOR],
    [next, 'created', ACTOR],
    [first, 'activated', 'scheduler'],
    [first, 'created', 'scheduler']
  ], 'newest first, each with who made it')
  t.equal(cursor, null, 'one page')
  t.match(events[3]?.details, { algorithm: 'RS256', state: 'next' })
  t.notMatch(res.body, /PRIVATE|"d":/, 'no private key in the history')

  const ids: number[] = []
  let before: number | null = null
  do {
    const page: LightMyRequestResponse = await admin.call('GET', `/admin/keys/events?limit=4${before === null ? '' : `&before=${before}`}`)
    const body = page.json<{ events: Array<{ id: number }>, next: number | null }>()
    t.ok(body.events.length <= 4)
    ids.push(...body.events.map((event) => event.id))
    before = body.next
  } while (before !== null && ids.length < 20)
  t.strictSame(ids, events.map((event) => event.id), 'the pages hold every event once, in order')
})

test('another instance on the same database sees a change once it reads the keys', async (t) => {
  const now = Date.now()
  const admin = await setup(t, { ...DATABASE_MODE, clock: () => now })
  const other = await build(t, { ...DATABASE_MODE, databaseUrl: admin.databaseUrl, redisPrefix: admin.redisPrefix, clock: () => now, keyPollMs: 0 })
  const first = admin.app.keys.kid
  t.equal(other.app.keys.kid, first, 'both sign with the stored key')

  const next = (await admin.call('POST', '/admin/keys/rotate', { now: true })).json().kid
  t.strictSame(await jwksKids(admin.app), [next, first], 'this instance: at once')
  t.strictSame(await jwksKids(other.app), [first], 'the other one has not read the keys yet')
  t.equal(other.app.keys.kid, first)
  await other.app.keyRing?.refresh()
  t.strictSame(await jwksKids(other.app), [next, first], 'the other one, once it has read them')
  t.equal(other.app.keys.kid, next, 'and signs with the new key')
})

test('the embedded database: list, rotate, retire and the history', async (t) => {
  const dir = await migratedDataDir(t)
  const admin = await setup(t, { ...DATABASE_MODE, databaseUrl: `embedded:${dir}`, unset: [...DATABASE_MODE.unset, 'REDIS_URL', 'REDIS_CLUSTER_NODES'] })
  t.equal(admin.config.databaseUrl, undefined, 'no PostgreSQL server')
  await insertClient(admin.databaseUrl, { id: ADMIN_ID, secret: ADMIN_SECRET })
  await sql(admin.databaseUrl, 'UPDATE clients SET scopes = $2 WHERE client_id = $1', [ADMIN_ID, [ADMIN_SCOPE]])
  const first = (await storedKeys(admin)).signing_kid
  const rotated = (await admin.call('POST', '/admin/keys/rotate', { now: true, algorithm: 'EdDSA' })).json()
  t.match(rotated, { algorithm: 'EdDSA', state: 'current', retired: first, created: true })
  t.strictSame(await jwksKids(admin.app), [rotated.kid, first])
  t.equal((await admin.call('POST', `/admin/keys/${first}/retire`, { now: true })).statusCode, 200)
  t.strictSame(await jwksKids(admin.app), [rotated.kid])
  const actions = (await admin.call('GET', '/admin/keys/events?limit=3')).json().events.map((event: { action: string }) => event.action)
  t.strictSame(actions, ['removed', 'activated', 'retired'])
})

test('the OpenAPI document describes the keys API, with what 404 and 409 mean here', async (t) => {
  const { app } = await build(t)
  type Responses = Record<string, { description: string, content?: Record<string, { example?: unknown }> }>
  const doc = (await injectAdmin(app, '/docs/json')).json<{ paths: Record<string, Record<string, { operationId: string, responses: Responses }>> }>()
  t.equal(doc.paths['/admin/keys']?.get?.operationId, 'listSigningKeys')
  t.equal(doc.paths['/admin/keys/events']?.get?.operationId, 'listSigningKeyEvents')
  t.equal(doc.paths['/admin/keys/rotate']?.post?.operationId, 'rotateSigningKeys')
  const retire = doc.paths['/admin/keys/{kid}/retire']?.post
  t.equal(retire?.operationId, 'retireSigningKey')
  t.match(retire?.responses['404']?.description, /no stored key with this kid/)
  t.match(retire?.responses['409']?.description, /KEY_STORE=settings/)
  t.match(retire?.responses['409']?.content?.['application/json']?.example, { error: 'conflict' })
})
