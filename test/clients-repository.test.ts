// storage/clients.ts on the service's database: every change comes with its
// event (before and after, never a secret or a hash), only the fields given
// change, pages follow each other, and the typed refusals an HTTP layer maps
// to a 400 or a 409.
import { test } from 'tap'
import {
  ClientExistsError, ClientRuleError, clientsRepository, MAX_SECRET_BYTES, SecretTooLongError, type ClientEvent
} from '../storage/clients.ts'
import { build, sql } from './helper.ts'

const BCRYPT = /\$2[aby]\$\d\d\$/

/** Every string anywhere in a value. */
function strings (value: unknown): string[] {
  if (typeof value === 'string') return [value]
  if (Array.isArray(value)) return value.flatMap(strings)
  if (typeof value === 'object' && value !== null) return Object.entries(value).flatMap(([key, item]) => [key, ...strings(item)])
  return []
}

test('each change records who made it, before and after, and no secret material anywhere', async (t) => {
  const { app, databaseUrl } = await build(t)
  const clients = clientsRepository(app.db)
  const secret = 'first-secret-of-svc-audit'
  const created = await clients.insert({ id: 'svc-audit', secret, name: 'audit', scopes: ['read', 'write'], defaultScopes: ['read'], grantTypes: ['client_credentials'] }, 10, 'cli:alice')
  t.match(created, { id: 'svc-audit', name: 'audit', scopes: ['read', 'write'], grantTypes: ['client_credentials'], previousSecretHash: null, previousSecretExpiresAt: null })

  const updated = await clients.update('svc-audit', { name: 'audited', claims: { tier: 'gold' } }, 'cli:bob')
  t.match(updated, { name: 'audited', claims: { tier: 'gold' }, scopes: ['read', 'write'], defaultScopes: ['read'], rateLimit: null }, 'only the given fields changed')
  const rotated = await clients.rotateSecret('svc-audit', { secret: 'second-secret-of-svc-audit', cost: 10, graceMs: 60_000, actor: 'admin:carol' })
  t.ok(rotated?.previousSecretExpiresAt instanceof Date, 'the grace period\'s end')
  t.equal((await clients.setStatus('svc-audit', 'disabled', 'cli:dave'))?.status, 'disabled')
  t.equal((await clients.setStatus('svc-audit', 'enabled', 'cli:dave'))?.status, 'enabled')
  t.equal(await clients.delete('svc-audit', 'cli:erin'), true)
  t.equal(await clients.delete('svc-audit', 'cli:erin'), false, 'a second delete finds nothing (and records nothing)')

  const { events, next } = await clients.events('svc-audit', { limit: 100 })
  t.equal(next, null, 'one page holds them all')
  t.strictSame(events.map((event) => [event.action, event.actor]), [
    ['deleted', 'cli:erin'], ['enabled', 'cli:dave'], ['disabled', 'cli:dave'], ['secret_rotated', 'admin:carol'], ['updated', 'cli:bob'], ['created', 'cli:alice']
  ], 'newest first, the history outliving the client')
  const byAction = new Map<string, ClientEvent>(events.map((event) => [event.action, event]))
  t.equal(byAction.get('created')?.before, null, 'created: nothing before')
  t.match(byAction.get('created')?.after, { client_id: 'svc-audit', name: 'audit', scopes: ['read', 'write'], grant_types: ['client_credentials'] })
  t.match(byAction.get('updated')?.before, { name: 'audit', claims: {} })
  t.match(byAction.get('updated')?.after, { name: 'audited', claims: { tier: 'gold' } })
  t.strictSame(byAction.get('created')?.after?.may_exchange, [], 'may_exchange is recorded, the table\'s default when not given')
  t.strictSame(byAction.get('secret_rotated')?.before, null, 'a rotation records no before')
  t.strictSame(Object.keys(byAction.get('secret_rotated')?.after ?? {}), ['previous_secret_expires_at'], 'only when the previous secret stops')
  t.match(byAction.get('disabled'), { before: { status: 'enabled' }, after: { status: 'disabled' } })
  t.match(byAction.get('deleted'), { before: { client_id: 'svc-audit', name: 'audited' }, after: null })
  t.ok(events.every((event) => event.at instanceof Date && Number.isSafeInteger(event.id)))

  const stored = await sql(databaseUrl, 'SELECT * FROM client_events')
  const text = strings(stored).join('\n')
  t.notMatch(text, BCRYPT, 'no bcrypt hash in any event')
  t.notOk(text.includes(secret) || text.includes('second-secret-of-svc-audit'), 'no secret in any event')
  t.notMatch(text, /secret_hash|"?secret"?:/, 'no secret field in any event')
})

test('update: an unknown client, a rule spanning stored and given fields, and every field', async (t) => {
  const { app } = await build(t)
  const clients = clientsRepository(app.db)
  t.equal(await clients.update('svc-none', { name: 'x' }, 'test'), undefined, 'unknown client')
  t.equal(await clients.setStatus('svc-none', 'disabled', 'test'), undefined)
  t.equal(await clients.rotateSecret('svc-none', { secret: 'some-secret-0123456', cost: 10, graceMs: 0, actor: 'test' }), undefined)
  const inserted = await clients.insert({ id: 'svc-upd', secret: 'svc-upd-secret-0123', scopes: ['read'] }, 10, 'test')
  t.strictSame(inserted.mayExchange, [], 'may_exchange: none by default')
  await t.rejects(clients.update('svc-upd', { defaultScopes: ['write'] }, 'test'), ClientRuleError, 'default scopes outside the stored scopes')
  const record = await clients.update('svc-upd', {
    name: 'n', rateLimit: 7, scopes: ['a', 'b'], defaultScopes: ['a'], audiences: ['aud'], claims: { x: 1 }, jwksUri: 'https://keys.example/jwks.json', grantTypes: ['client_credentials'], mayExchange: ['svc-portal']
  }, 'test')
  t.match(record, { name: 'n', rateLimit: 7, scopes: ['a', 'b'], defaultScopes: ['a'], audiences: ['aud'], claims: { x: 1 }, jwksUri: 'https://keys.example/jwks.json', grantTypes: ['client_credentials'], mayExchange: ['svc-portal'] })
  t.match(await clients.update('svc-upd', { rateLimit: null, jwksUri: null }, 'test'), { rateLimit: null, jwksUri: null, name: 'n' }, 'null clears')
  const { events } = await clients.events('svc-upd', { limit: 10 })
  t.strictSame(events.map((event) => event.action), ['updated', 'updated', 'created'], 'a refused change records nothing')
  t.match(events[1], { before: { may_exchange: [] }, after: { may_exchange: ['svc-portal'] } }, 'a change of may_exchange is recorded')
})

test('a secret over 72 bytes is refused, never truncated; a taken id is refused', async (t) => {
  const { app, databaseUrl } = await build(t)
  const clients = clientsRepository(app.db)
  const long = 'x'.repeat(MAX_SECRET_BYTES + 1)
  await t.rejects(clients.insert({ id: 'svc-long', secret: long }, 10, 'test'), SecretTooLongError, 'insert')
  await t.rejects(clients.insert({ id: 'svc-long', secret: 'é'.repeat(37) }, 10, 'test'), SecretTooLongError, '74 bytes in 37 characters')
  await clients.insert({ id: 'svc-long', secret: 'x'.repeat(MAX_SECRET_BYTES) }, 10, 'test')
  await t.rejects(clients.rotateSecret('svc-long', { secret: long, cost: 10, graceMs: 0, actor: 'test' }), SecretTooLongError, 'rotateSecret')
  await t.rejects(clients.insert({ id: 'svc-long', secret: 'another-secret-123' }, 10, 'test'), ClientExistsError)
  t.strictSame(await sql(databaseUrl, 'SELECT action FROM client_events'), [{ action: 'created' }], 'only the one change that was made is recorded')
})

test('list and events go page by page', async (t) => {
  const { app } = await build(t)
  const clients = clientsRepository(app.db)
  const ids = ['svc-c', 'svc-a', 'svc-e', 'svc-b', 'svc-d']
  for (const id of ids) await clients.insert({ id, secret: `${id}-secret-0123456` }, 4, 'test')
  const seen: string[] = []
  let after: string | undefined
  let pages = 0
  do {
    const page = await clients.list({ limit: 2, after })
    seen.push(...page.clients.map((client) => client.id))
    after = page.next ?? undefined
    pages++
  } while (after !== undefined)
  t.strictSame(seen, [...ids].sort(), 'every client once, by id')
  t.equal(pages, 3)
  t.equal((await clients.list({ limit: 5 })).next, null, 'an exact last page has no next')

  for (let n = 1; n <= 4; n++) await clients.update('svc-a', { name: `n${n}` }, 'test')
  const first = await clients.events('svc-a', { limit: 3 })
  t.strictSame(first.events.map((event) => event.after?.name), ['n4', 'n3', 'n2'])
  const second = await clients.events('svc-a', { limit: 3, before: first.next ?? 0 })
  t.strictSame(second.events.map((event) => [event.action, event.after?.name]), [['updated', 'n1'], ['created', '']])
  t.equal(second.next, null)
  await t.rejects(clients.list({ limit: 0 }), RangeError, 'a page holds at least one row')
})
