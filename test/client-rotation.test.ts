// Secret rotation with overlap, through a real POST /oauth/token: during the
// grace period both secrets work, after it only the new one, and nothing the
// service keeps in memory (the client record, a remembered secret) stretches
// the previous secret past its end.
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { clientsRepository, insertClientRow } from '../storage/clients.ts'
import { basicAuth, build, sql, tokenRequest } from './helper.ts'

const CLIENT_CREDENTIALS = { grant_type: 'client_credentials' }
const OLD = 'the-old-secret-of-svc-rot'
const NEW = 'the-new-secret-of-svc-rot'

async function status (app: FastifyInstance, clientId: string, secret: string): Promise<number> {
  return (await tokenRequest(app, CLIENT_CREDENTIALS, { authorization: basicAuth(clientId, secret) })).statusCode
}

/** Rotates as the CLI and the admin API do, then drops the cached record (as their announcement does). */
async function rotate (app: FastifyInstance, clientId: string, graceMs: number): Promise<Date | null> {
  const rotated = await clientsRepository(app.db).rotateSecret(clientId, { secret: NEW, cost: 10, graceMs, actor: 'test' })
  await app.clients.forget(clientId)
  return rotated?.previousSecretExpiresAt ?? null
}

test('with a grace period, the old and the new secret both get tokens until its end, then only the new one', async (t) => {
  const { app } = await build(t)
  await insertClientRow(app.db, { id: 'svc-rot', secret: OLD }, 10)
  t.equal(await status(app, 'svc-rot', OLD), 200, 'before the rotation')
  const started = Date.now()
  const end = await rotate(app, 'svc-rot', 4000)
  t.ok(end !== null && Math.abs(end.getTime() - (started + 4000)) < 1000, 'the grace period ends about now + grace', { end })

  t.equal(await status(app, 'svc-rot', OLD), 200, 'the old secret during the grace period')
  t.equal(await status(app, 'svc-rot', NEW), 200, 'the new secret during the grace period')
  const compares = app.secrets.stats.compares
  t.equal(await status(app, 'svc-rot', 'neither-of-the-two-secrets'), 401, 'any other secret is refused')
  t.equal(app.secrets.stats.compares - compares, 2, 'a wrong secret costs one compare per hash that could match')

  await sleep(Math.max(0, (end?.getTime() ?? 0) - Date.now()) + 100)
  t.equal(await status(app, 'svc-rot', OLD), 401, 'the old secret after the end')
  t.equal(await status(app, 'svc-rot', NEW), 200, 'the new secret after the end')
})

test('a remembered previous secret stops at the end of the grace period, though the client record is still cached', async (t) => {
  // SECRET_CACHE_TTL and CLIENT_CACHE_TTL far longer than the grace period.
  const { app } = await build(t, { env: { SECRET_CACHE_TTL: '600s', CLIENT_CACHE_TTL: '600s' } })
  await insertClientRow(app.db, { id: 'svc-rot', secret: OLD }, 10)
  const end = await rotate(app, 'svc-rot', 3000)
  t.equal(await status(app, 'svc-rot', OLD), 200, 'the old secret during the grace period: checked with bcrypt once')
  const compares = app.secrets.stats.compares
  t.equal(await status(app, 'svc-rot', OLD), 200, 'and again')
  t.equal(app.secrets.stats.compares, compares, 'the second time it was remembered: no bcrypt compare')

  await sleep(Math.max(0, (end?.getTime() ?? 0) - Date.now()) + 100)
  t.equal(await status(app, 'svc-rot', OLD), 401, 'the remembered old secret is refused once the grace period has ended')
  t.equal(await status(app, 'svc-rot', NEW), 200, 'the new secret still works')
})

test('without a grace period the old secret is refused at once', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClientRow(app.db, { id: 'svc-rot', secret: OLD }, 10)
  t.equal(await status(app, 'svc-rot', OLD), 200, 'before the rotation (now remembered)')
  t.equal(await rotate(app, 'svc-rot', 0), null, 'no grace period ends')
  t.equal(await status(app, 'svc-rot', OLD), 401, 'the old secret right after the rotation')
  t.equal(await status(app, 'svc-rot', NEW), 200, 'the new secret')
  const [row] = await sql(databaseUrl, 'SELECT previous_secret_hash, previous_secret_expires_at FROM clients WHERE client_id = $1', ['svc-rot'])
  t.strictSame(row, { previous_secret_hash: null, previous_secret_expires_at: null }, 'no previous hash is kept')
})

test('a success with the previous secret never upgrades the current hash to it', async (t) => {
  // The service's cost above the hashes' cost: a success against the current
  // hash would store a new hash of the secret presented.
  const { app, databaseUrl } = await build(t, { env: { BCRYPT_COST: '11' } })
  await insertClientRow(app.db, { id: 'svc-rot', secret: OLD }, 10)
  await rotate(app, 'svc-rot', 60_000)
  const [before] = await sql<{ client_secret_hash: string }>(databaseUrl, 'SELECT client_secret_hash FROM clients WHERE client_id = $1', ['svc-rot'])
  t.equal(await status(app, 'svc-rot', OLD), 200, 'the old secret during the grace period')
  await sleep(500) // an upgrade runs in the background
  const [after] = await sql<{ client_secret_hash: string }>(databaseUrl, 'SELECT client_secret_hash FROM clients WHERE client_id = $1', ['svc-rot'])
  t.equal(after?.client_secret_hash, before?.client_secret_hash, 'the current hash is the new secret\'s, unchanged')
  await app.clients.forget('svc-rot')
  t.equal(await status(app, 'svc-rot', NEW), 200, 'the new secret works')
})
