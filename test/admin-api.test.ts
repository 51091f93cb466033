// The admin API through HTTP, as automation calls it: a bearer token of this
// service with the admin scope, JSON in and out, every error answered.
import { generateKeyPairSync, randomUUID } from 'node:crypto'
import { test, type Test } from 'tap'
import { SignJWT } from 'jose'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { basicAuth, build, form, FORM, injectAdmin, insertClient, sql, tokenRequest, type TestApp } from './helper.ts'

const ADMIN_SCOPE = 'session-service:admin'
const ADMIN_ID = 'automation'
const ADMIN_SECRET = 'automation secret'

interface Admin extends TestApp {
  token: string
  /** an admin request with the admin token (unless headers say otherwise) */
  call: (method: string, url: string, body?: unknown, headers?: Record<string, string>) => Promise<LightMyRequestResponse>
}

async function adminToken (app: FastifyInstance, scope = ADMIN_SCOPE, id = ADMIN_ID, secret = ADMIN_SECRET): Promise<LightMyRequestResponse> {
  return await tokenRequest(app, { grant_type: 'client_credentials', scope }, { authorization: basicAuth(id, secret) })
}

/** An app with one admin client (made as the CLI would: allowed the admin scope) and its token. */
async function setup (t: Test, env: Record<string, string> = {}, shared: Partial<TestApp> = {}): Promise<Admin> {
  const built = await build(t, { env, databaseUrl: shared.databaseUrl, redisPrefix: shared.redisPrefix })
  if (shared.databaseUrl === undefined) {
    await insertClient(built.databaseUrl, { id: ADMIN_ID, secret: ADMIN_SECRET })
    await sql(built.databaseUrl, 'UPDATE clients SET scopes = $2 WHERE client_id = $1', [ADMIN_ID, [ADMIN_SCOPE, 'other']])
  }
  const res = await adminToken(built.app)
  if (res.statusCode !== 200) throw new Error(`admin token: ${res.statusCode} ${res.body}`)
  const token = res.json<{ access_token: string }>().access_token
  const call = async (method: string, url: string, body?: unknown, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> =>
    await injectAdmin(built.app, {
      method: method as 'GET',
      url,
      headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
      ...(body === undefined ? {} : { payload: typeof body === 'string' ? body : JSON.stringify(body) })
    })
  return { ...built, token, call }
}

async function clientToken (app: FastifyInstance, id: string, secret: string, scope?: string): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/oauth/token', headers: { ...FORM, authorization: basicAuth(id, secret) }, payload: form({ grant_type: 'client_credentials', ...(scope === undefined ? {} : { scope }) }) })
}

test('without a valid admin token: 401 with a Bearer challenge; with a token lacking the scope: 403', async (t) => {
  const admin = await setup(t)
  const { app } = admin
  const none = await injectAdmin(app, '/admin/clients')
  t.equal(none.statusCode, 401, 'no Authorization: 401')
  t.equal(none.headers['www-authenticate'], 'Bearer realm="session-service-admin"')
  t.equal(none.json().error, 'invalid_token')

  const basic = await injectAdmin(app, { url: '/admin/clients', headers: { authorization: basicAuth(ADMIN_ID, ADMIN_SECRET) } })
  t.equal(basic.statusCode, 401, 'client credentials instead of a token: 401')
  t.match(basic.headers['www-authenticate'], /^Bearer realm="session-service-admin", error="invalid_request"$/)

  for (const token of ['not-a-jwt', `${admin.token.slice(0, -4)}AAAA`]) {
    const res = await injectAdmin(app, { url: '/admin/clients', headers: { authorization: `Bearer ${token}` } })
    t.equal(res.statusCode, 401, 'a forged or malformed token: 401')
    t.match(res.headers['www-authenticate'], /error="invalid_token"/)
    t.notMatch(res.body, token.slice(0, 20), 'the token is not echoed')
  }

  const other = (await adminToken(app, 'other')).json<{ access_token: string }>().access_token
  const unscoped = await injectAdmin(app, { url: '/admin/clients', headers: { authorization: `Bearer ${other}` } })
  t.equal(unscoped.statusCode, 403, 'a valid token requested without the admin scope: 403')
  t.equal(unscoped.headers['www-authenticate'], `Bearer realm="session-service-admin", error="insufficient_scope", scope="${ADMIN_SCOPE}"`)
  t.equal(unscoped.json().error, 'insufficient_scope')

  await insertClient(admin.databaseUrl, { id: 'plain', secret: 'plain secret' })
  t.equal((await adminToken(app, ADMIN_SCOPE, 'plain', 'plain secret')).statusCode, 400, 'a client not allowed the scope cannot even get such a token')

  t.equal((await admin.call('GET', '/admin/clients')).statusCode, 200, 'the admin token: 200')
  t.equal((await app.inject({ method: 'GET', url: '/admin/clients', headers: { authorization: `Bearer ${admin.token}` } })).statusCode, 404,
    'never on the public listener, even with the token')
})

test('a DPoP-bound admin token is not accepted as a bearer token', async (t) => {
  const admin = await setup(t)
  const { privateKey, publicKey } = generateKeyPairSync('ed25519')
  const htu = `${admin.config.publicUrl}/oauth/token`
  const proof = await new SignJWT({ jti: randomUUID(), htm: 'POST', htu, iat: Math.floor(Date.now() / 1000) })
    .setProtectedHeader({ alg: 'EdDSA', typ: 'dpop+jwt', jwk: publicKey.export({ format: 'jwk' }) as Record<string, string> }).sign(privateKey)
  const bound = await tokenRequest(admin.app, { grant_type: 'client_credentials', scope: ADMIN_SCOPE }, { authorization: basicAuth(ADMIN_ID, ADMIN_SECRET), dpop: proof })
  t.equal(bound.json().token_type, 'DPoP', 'a bound token with the admin scope')
  const res = await admin.call('GET', '/admin/clients', undefined, { authorization: `Bearer ${String(bound.json().access_token)}` })
  t.equal(res.statusCode, 401, 'refused as a bearer token')
  t.equal(res.json().error, 'invalid_token')
})

test('revoking the token, disabling the admin client or taking its scope away ends its access at once', async (t) => {
  const admin = await setup(t)
  const revoked = await admin.app.inject({ method: 'POST', url: '/oauth/revoke', headers: { ...FORM, authorization: basicAuth(ADMIN_ID, ADMIN_SECRET) }, payload: form({ token: admin.token }) })
  t.equal(revoked.statusCode, 200, 'token revoked')
  t.equal((await admin.call('GET', '/admin/clients')).statusCode, 401, 'a revoked token: 401')

  const fresh = await setup(t, {}, { databaseUrl: admin.databaseUrl, redisPrefix: admin.redisPrefix })
  t.equal((await fresh.call('GET', '/admin/clients')).statusCode, 200, 'a new token works')
  await sql(admin.databaseUrl, 'UPDATE clients SET scopes = $2 WHERE client_id = $1', [ADMIN_ID, ['other']])
  await fresh.app.clients.forget(ADMIN_ID)
  t.equal((await fresh.call('GET', '/admin/clients')).statusCode, 403, 'the client no longer holds the scope: 403')
  await sql(admin.databaseUrl, "UPDATE clients SET scopes = $2, status = 'disabled' WHERE client_id = $1", [ADMIN_ID, [ADMIN_SCOPE]])
  await fresh.app.clients.forget(ADMIN_ID)
  t.equal((await fresh.call('GET', '/admin/clients')).statusCode, 401, 'the client is disabled: 401')
})

test('create: 201 with the secret once; the client gets tokens; every error of the body answered', async (t) => {
  const admin = await setup(t)
  const billing = {
    client_id: 'billing',
    name: 'Billing',
    scopes: ['invoices:read', 'invoices:write'],
    default_scopes: ['invoices:read'],
    audiences: ['https://billing.example'],
    rate_limit: 120,
    claims: { tenant: 'acme' },
    grant_types: ['client_credentials'],
    may_exchange: ['portal']
  }
  const created = await admin.call('POST', '/admin/clients', billing)
  t.equal(created.statusCode, 201, created.body)
  const body = created.json()
  t.match(body, { ...billing, status: 'enabled' }, 'every field as given, enabled')
  t.type(body.client_secret, 'string')
  t.ok(body.client_secret.length >= 43, 'a generated secret of 256 bits')
  t.equal(created.headers['cache-control'], 'no-store')

  const token = await clientToken(admin.app, 'billing', body.client_secret)
  t.equal(token.statusCode, 200, 'the new client gets a token with the secret it was given')
  t.equal(token.json().scope, 'invoices:read', 'its default scopes')

  const shown = await admin.call('GET', '/admin/clients/billing')
  t.equal(shown.statusCode, 200)
  t.notOk('client_secret' in shown.json(), 'the secret is never shown again')
  t.notMatch(shown.body, /\$2[aby]\$/, 'nor its hash')

  const duplicate = await admin.call('POST', '/admin/clients', { client_id: 'billing', name: 'Again' })
  t.equal(duplicate.statusCode, 409, 'a taken id: 409')
  t.equal(duplicate.json().error, 'conflict')

  const errors: Array<[string, unknown, Record<string, string>?]> = [
    ['malformed JSON', '{"client_id": "x",'],
    ['not JSON', 'client_id=x', { 'content-type': 'application/x-www-form-urlencoded' }],
    ['a secret over 72 bytes', { client_id: 'long', name: 'x', client_secret: 'é'.repeat(37) }],
    ['no name', { client_id: 'nameless' }],
    ['an unknown field', { client_id: 'typo', name: 'x', scope: 'a b' }],
    ['a bad scope', { client_id: 'bad-scope', name: 'x', scopes: ['a"b'] }],
    ['default scopes outside scopes', { client_id: 'bad-default', name: 'x', scopes: ['a'], default_scopes: ['b'] }],
    ['an unknown grant type', { client_id: 'bad-grant', name: 'x', grant_types: ['password'] }],
    ['a may_exchange that is not a client id', { client_id: 'bad-exchange', name: 'x', may_exchange: ['no spaces allowed'] }],
    ['a may_exchange that is not a list', { client_id: 'bad-exchange', name: 'x', may_exchange: 'portal' }],
    ['act as a custom claim', { client_id: 'bad-act', name: 'x', claims: { act: { sub: 'root' } } }],
    ['a registered claim', { client_id: 'bad-claim', name: 'x', claims: { sub: 'someone' } }],
    ['a wrong type', { client_id: 'bad-type', name: 'x', rate_limit: '10' }]
  ]
  for (const [what, payload, headers] of errors) {
    const res = await admin.call('POST', '/admin/clients', payload, headers)
    t.equal(res.statusCode, 400, `${what}: 400`)
    t.equal(res.json().error, 'invalid_request', `${what}: invalid_request (${res.json().error_description as string})`)
  }
  const listed = (await admin.call('GET', '/admin/clients?limit=200')).json<{ clients: Array<{ client_id: string }> }>().clients.map((c) => c.client_id)
  t.strictSame(listed.sort(), [ADMIN_ID, 'billing'].sort(), 'none of the refused bodies made a client')
})

test('update, enable and disable apply at once, on this instance and on another sharing Redis', async (t) => {
  const admin = await setup(t)
  const other = await build(t, { databaseUrl: admin.databaseUrl, redisPrefix: admin.redisPrefix })
  const { client_secret: secret } = (await admin.call('POST', '/admin/clients', { client_id: 'reports', name: 'reports', scopes: ['a', 'b'] })).json()
  t.equal((await clientToken(other.app, 'reports', secret, 'b')).statusCode, 200, 'the other instance issues scope b (and caches the client)')

  const patched = await admin.call('PATCH', '/admin/clients/reports', { scopes: ['a'], name: 'Reports' })
  t.equal(patched.statusCode, 200, patched.body)
  t.match(patched.json(), { client_id: 'reports', name: 'Reports', scopes: ['a'] })
  t.equal((await clientToken(admin.app, 'reports', secret, 'b')).statusCode, 400, 'scope b refused here at once')
  const elsewhere = await pollStatus(async () => await clientToken(other.app, 'reports', secret, 'b'), 400)
  t.equal(elsewhere, 400, 'and on the other instance without waiting for CLIENT_CACHE_TTL')

  t.equal((await admin.call('POST', '/admin/clients/reports/disable')).json().status, 'disabled')
  t.equal(await pollStatus(async () => await clientToken(other.app, 'reports', secret, 'a'), 400), 400, 'disabled: refused everywhere (unauthorized_client)')
  t.equal((await admin.call('POST', '/admin/clients/reports/enable')).json().status, 'enabled')
  t.equal(await pollStatus(async () => await clientToken(other.app, 'reports', secret, 'a'), 200), 200, 'enabled again')

  t.equal((await admin.call('PATCH', '/admin/clients/reports', {})).statusCode, 400, 'an empty change: 400')
  t.equal((await admin.call('PATCH', '/admin/clients/reports', { client_id: 'renamed' })).statusCode, 400, 'the id cannot change: 400')
})

test('dpop_bound_access_tokens: set on create, read back, changed by a patch, and enforced at once', async (t) => {
  const admin = await setup(t)
  const created = await admin.call('POST', '/admin/clients', { client_id: 'holder', name: 'holder', dpop_bound_access_tokens: true })
  t.equal(created.statusCode, 201, created.body)
  t.equal(created.json().dpop_bound_access_tokens, true, 'as given')
  const secret = created.json().client_secret
  t.equal((await admin.call('GET', '/admin/clients/holder')).json().dpop_bound_access_tokens, true, 'read back')
  const refused = await clientToken(admin.app, 'holder', secret)
  t.equal(refused.statusCode, 400, 'a token request without a proof: 400')
  t.equal(refused.json().error, 'invalid_dpop_proof')

  const patched = await admin.call('PATCH', '/admin/clients/holder', { dpop_bound_access_tokens: false })
  t.equal(patched.json().dpop_bound_access_tokens, false, 'patched')
  t.equal((await clientToken(admin.app, 'holder', secret)).statusCode, 200, 'bearer tokens again, at once')
  t.equal((await admin.call('POST', '/admin/clients', { client_id: 'other', name: 'x' })).json().dpop_bound_access_tokens, false, 'the default: false')
  t.equal((await admin.call('PATCH', '/admin/clients/holder', { dpop_bound_access_tokens: 'yes' })).statusCode, 400, 'not a boolean: 400')
})

/** The status of `request` once it is `status`, or the last one after 2 s (a notice travels through Redis). */
async function pollStatus (request: () => Promise<LightMyRequestResponse>, status: number): Promise<number> {
  const deadline = Date.now() + 2000
  let last = (await request()).statusCode
  while (last !== status && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50))
    last = (await request()).statusCode
  }
  return last
}

test('rotate the secret: with grace both work until it ends, without grace the old one stops at once', async (t) => {
  const admin = await setup(t)
  const { client_secret: first } = (await admin.call('POST', '/admin/clients', { client_id: 'rotating', name: 'rotating' })).json()
  const before = Date.now()
  const rotated = await admin.call('POST', '/admin/clients/rotating/secret', { grace: '24h' })
  t.equal(rotated.statusCode, 200, rotated.body)
  const { client_secret: second, previous_secret_expires_at: until } = rotated.json()
  const untilMs = Date.parse(until)
  t.ok(untilMs >= before + 86_400_000 - 1000 && untilMs <= Date.now() + 86_400_000 + 1000, `the previous secret ends in 24 h (${until as string})`)
  t.not(second, first, 'a new secret')
  t.equal((await clientToken(admin.app, 'rotating', first)).statusCode, 200, 'the previous secret works during the grace')
  t.equal((await clientToken(admin.app, 'rotating', second)).statusCode, 200, 'the new one too')

  const again = await admin.call('POST', '/admin/clients/rotating/secret')
  t.equal(again.statusCode, 200, 'no body: no grace')
  t.equal(again.json().previous_secret_expires_at, null)
  const third = again.json().client_secret
  t.equal((await clientToken(admin.app, 'rotating', second)).statusCode, 401, 'the previous secret stops at once')
  t.equal((await clientToken(admin.app, 'rotating', first)).statusCode, 401, 'and the one before it')
  t.equal((await clientToken(admin.app, 'rotating', third)).statusCode, 200, 'the new one works')

  for (const grace of ['tomorrow', '-1h', '31d']) {
    const res = await admin.call('POST', '/admin/clients/rotating/secret', { grace })
    t.equal(res.statusCode, 400, `grace ${grace}: 400`)
  }
  t.equal((await clientToken(admin.app, 'rotating', third)).statusCode, 200, 'a refused rotation changes nothing')
})

test('delete, unknown clients, events and pages', async (t) => {
  const admin = await setup(t)
  for (const id of ['c1', 'c2', 'c3', 'c4']) t.equal((await admin.call('POST', '/admin/clients', { client_id: id, name: id })).statusCode, 201)
  await admin.call('PATCH', '/admin/clients/c2', { name: 'Second' })
  await admin.call('POST', '/admin/clients/c2/secret', { grace: '1h' })

  const seen: string[] = []
  let next: string | null = null
  let pages = 0
  do {
    const page: LightMyRequestResponse = await admin.call('GET', `/admin/clients?limit=2${next === null ? '' : `&after=${encodeURIComponent(next)}`}`)
    t.equal(page.statusCode, 200)
    const body = page.json<{ clients: Array<{ client_id: string }>, next: string | null }>()
    t.ok(body.clients.length <= 2, 'at most limit per page')
    seen.push(...body.clients.map((c) => c.client_id))
    next = body.next
    pages++
  } while (next !== null && pages < 10)
  t.strictSame(seen, ['automation', 'c1', 'c2', 'c3', 'c4'], 'every client once, in id order, over the pages')

  t.equal((await admin.call('DELETE', '/admin/clients/c2')).statusCode, 204)
  for (const [method, url, body] of [['GET', '/admin/clients/c2'], ['PATCH', '/admin/clients/c2', { name: 'x' }], ['DELETE', '/admin/clients/c2'],
    ['POST', '/admin/clients/c2/secret', {}], ['POST', '/admin/clients/c2/enable'], ['POST', '/admin/clients/nobody/disable']] as Array<[string, string, unknown?]>) {
    const res = await admin.call(method, url, body)
    t.equal(res.statusCode, 404, `${method} ${url} of an unknown client: 404`)
    t.equal(res.json().error, 'not_found')
  }

  const events = await admin.call('GET', '/admin/clients/c2/events')
  t.equal(events.statusCode, 200)
  const list = events.json<{ events: Array<{ action: string, actor: string, before: unknown, after: unknown }> }>().events
  t.strictSame(list.map((e) => e.action), ['deleted', 'secret_rotated', 'updated', 'created'], 'every change, newest first, outliving the client')
  t.ok(list.every((e) => e.actor === `client:${ADMIN_ID}`), 'each made by the admin client')
  t.match(list.find((e) => e.action === 'updated'), { before: { name: 'c2' }, after: { name: 'Second' } })
  t.notMatch(events.body, /\$2[aby]\$|secret_hash|client_secret"/, 'no secret or hash in any event')
  const firstPage = (await admin.call('GET', '/admin/clients/c2/events?limit=1')).json<{ events: unknown[], next: number | null }>()
  t.equal(firstPage.events.length, 1)
  t.type(firstPage.next, 'number', 'a cursor to the older events')
})

test('the OpenAPI document describes the admin API', async (t) => {
  const { app } = await setup(t)
  const doc = (await injectAdmin(app, '/docs/json')).json<{ paths: Record<string, Record<string, unknown>> }>()
  for (const path of ['/admin/clients', '/admin/clients/{client_id}', '/admin/clients/{client_id}/secret', '/admin/clients/{client_id}/events']) {
    t.ok(doc.paths[path], `${path} is documented`)
  }
  t.ok(doc.paths['/admin/clients']?.post, 'with its methods')
})

test('may_exchange: created, patched and read; the running app follows at once', async (t) => {
  const admin = await setup(t)
  const exchange = 'urn:ietf:params:oauth:grant-type:token-exchange'
  const { client_secret: ownerSecret, may_exchange: none } = (await admin.call('POST', '/admin/clients', { client_id: 'owner', name: 'owner' })).json()
  t.strictSame(none, [], 'none by default')
  const created = await admin.call('POST', '/admin/clients', { client_id: 'gateway', name: 'gateway', grant_types: ['client_credentials', exchange], may_exchange: ['owner'] })
  t.equal(created.statusCode, 201, created.body)
  const gatewaySecret = created.json().client_secret
  t.strictSame((await admin.call('GET', '/admin/clients/gateway')).json().may_exchange, ['owner'], 'read back')

  const subject = (await clientToken(admin.app, 'owner', ownerSecret)).json().access_token
  const exchangeRequest = async (): Promise<LightMyRequestResponse> => await tokenRequest(admin.app,
    { grant_type: exchange, subject_token: subject, subject_token_type: 'urn:ietf:params:oauth:token-type:access_token' }, { authorization: basicAuth('gateway', gatewaySecret) })
  t.equal((await exchangeRequest()).statusCode, 200, 'the listed client\'s token is exchanged')

  const patched = await admin.call('PATCH', '/admin/clients/gateway', { may_exchange: [] })
  t.equal(patched.statusCode, 200, patched.body)
  t.strictSame(patched.json().may_exchange, [], 'emptied')
  const refused = await exchangeRequest()
  t.equal(refused.statusCode, 400, 'refused at once')
  t.equal(refused.json().error, 'invalid_request')
  const events = (await admin.call('GET', '/admin/clients/gateway/events')).json().events
  t.match(events[0], { action: 'updated', before: { may_exchange: ['owner'] }, after: { may_exchange: [] } }, 'the change is in the history')
})
