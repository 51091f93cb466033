// The contract of the store, one set of cases for every backend: the Redis
// implementations (storage-redis.test.ts) and the SQL ones
// (storage-sql.test.ts) must answer them alike. Each file builds its store
// on a database of its own (and a Redis key prefix of its own).
import { randomBytes, randomUUID } from 'node:crypto'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Test } from 'tap'
import { applyMigrations } from '../plugins/migrations.ts'
import { PGDATA } from '../storage/data-dir.ts'
import { embeddedDatabase, serverDatabase, type Database } from '../storage/database.ts'
import type { ExchangeRequest, RefreshTokenRecord, Store } from '../storage/index.ts'
import { createDatabase, embeddedDir } from './helper.ts'

/** A migrated database of its own, closed when the test ends. */
export async function openTestDatabase (t: Test): Promise<Database> {
  const url = await createDatabase(t)
  const dir = embeddedDir(url)
  // The embedded test databases are copies of a migrated template.
  if (dir !== undefined) {
    const db = await embeddedDatabase(join(dir, PGDATA))
    t.teardown(async () => await db.close())
    return db
  }
  const db = serverDatabase({ connectionString: url })
  t.teardown(async () => await db.close())
  await applyMigrations(db, { info: () => {} })
  return db
}

const nowSeconds = (): number => Math.floor(Date.now() / 1000)
const newHash = (): string => randomBytes(32).toString('base64url')

function newRecord (fields: Partial<RefreshTokenRecord> = {}): RefreshTokenRecord {
  const iat = nowSeconds()
  return { client_id: 'svc-a', sid: randomUUID(), scope: 'read write', aud: 'api', iat, exp: iat + 3600, ...fields }
}

function request (fields: Partial<ExchangeRequest> = {}): ExchangeRequest {
  return { clientId: 'svc-a', scope: '', audience: '', allowedAudiences: ['api'], sessionTtl: 3600, ...fields }
}

/** A stored token of svc-a: its hash and record. */
async function stored (store: Store, fields: Partial<RefreshTokenRecord> = {}): Promise<{ hash: string, record: RefreshTokenRecord }> {
  const hash = newHash()
  const record = newRecord(fields)
  await store.refreshTokens.put(hash, record)
  return { hash, record }
}

/** When a revocation recorded in the database expires, seconds since epoch (undefined when none). */
async function revocationExpiry (db: Database, kind: string, id: string): Promise<number | undefined> {
  const { rows } = await db.query<{ exp: number }>('SELECT extract(epoch FROM expires_at)::float8 AS exp FROM revocations WHERE kind = $1 AND id = $2', [kind, id])
  return rows[0]?.exp
}

function refreshTokenCases (t: Test, store: Store): void {
  t.test('put then get', async (t) => {
    const { hash, record } = await stored(store)
    t.strictSame(await store.refreshTokens.get(hash), record, 'the record as it was put')
    t.equal(await store.refreshTokens.get(newHash()), undefined, 'an unknown hash reads as missing')
  })

  t.test('exchange: ok, once', async (t) => {
    const { hash, record } = await stored(store)
    t.strictSame(await store.refreshTokens.exchange(hash, request()), { status: 'ok', record })
    t.strictSame(await store.refreshTokens.get(hash), { ...record, used: true }, 'the token is marked used')
    t.strictSame(await store.refreshTokens.exchange(newHash(), request()), { status: 'missing' }, 'an unknown token is missing')
  })

  t.test('concurrent exchanges: exactly one wins', async (t) => {
    const { hash, record } = await stored(store)
    const outcomes = await Promise.all(Array.from({ length: 6 }, async () => await store.refreshTokens.exchange(hash, request())))
    t.equal(outcomes.filter((outcome) => outcome.status === 'ok').length, 1, 'one ok')
    t.ok(outcomes.every((outcome) => ['ok', 'reused', 'revoked'].includes(outcome.status)), 'the others are refused as a reuse')
    t.equal(await store.revocations.isSessionRevoked(record.sid), true, 'and the session is revoked')
  })

  t.test('a reused token revokes its session', async (t) => {
    const { hash, record } = await stored(store)
    const sibling = await stored(store, { sid: record.sid })
    t.equal((await store.refreshTokens.exchange(hash, request())).status, 'ok')
    t.strictSame(await store.refreshTokens.exchange(hash, request()), { status: 'reused' }, 'presented again: reused')
    t.equal(await store.revocations.isSessionRevoked(record.sid), true, 'the session is revoked')
    t.strictSame(await store.refreshTokens.exchange(sibling.hash, request()), { status: 'revoked' }, 'every token of the session is refused')
  })

  t.test('refusals leave the token usable, or as it is', async (t) => {
    const { hash, record } = await stored(store)
    t.strictSame(await store.refreshTokens.exchange(hash, request({ clientId: 'svc-b' })), { status: 'foreign' }, 'another client\'s token')
    t.strictSame(await store.refreshTokens.exchange(hash, request({ scope: 'read admin' })), { status: 'scope' }, 'a wider scope')
    t.strictSame(await store.refreshTokens.exchange(hash, request({ audience: 'other' })), { status: 'target' }, 'another audience')
    t.strictSame(await store.refreshTokens.exchange(hash, request({ allowedAudiences: ['other'] })), { status: 'lost' }, 'an audience the client lost')
    t.strictSame(await store.refreshTokens.get(hash), record, 'still unused')
    t.equal(await store.revocations.isSessionRevoked(record.sid), false, 'the session stands')
    t.strictSame(await store.refreshTokens.exchange(hash, request({ scope: 'read', audience: 'api' })), { status: 'ok', record }, 'a narrower scope is fine')
  })

  t.test('a token bound to a DPoP key: refused without that key, and left usable', async (t) => {
    const { hash, record } = await stored(store, { jkt: 'key-a' })
    t.strictSame(await store.refreshTokens.get(hash), record, 'the record keeps its key')
    t.strictSame(await store.refreshTokens.exchange(hash, request()), { status: 'key' }, 'no key')
    t.strictSame(await store.refreshTokens.exchange(hash, request({ jkt: 'key-b' })), { status: 'key' }, 'another key')
    t.strictSame(await store.refreshTokens.get(hash), record, 'still unused')
    t.equal(await store.revocations.isSessionRevoked(record.sid), false, 'the session stands')
    t.strictSame(await store.refreshTokens.exchange(hash, request({ jkt: 'key-a' })), { status: 'ok', record }, 'its own key')
    t.strictSame(await store.refreshTokens.exchange(hash, request({ jkt: 'key-b' })), { status: 'key' }, 'used: another key is still only refused')
    t.equal(await store.revocations.isSessionRevoked(record.sid), false, 'and the session stands')
    t.strictSame(await store.refreshTokens.exchange(hash, request({ jkt: 'key-a' })), { status: 'reused' }, 'used, with its key: reuse')
    t.equal(await store.revocations.isSessionRevoked(record.sid), true, 'which ends the session')
  })

  t.test('revoke a refresh token: missing, foreign, revoked', async (t) => {
    const { hash, record } = await stored(store)
    t.equal(await store.refreshTokens.revoke(newHash(), 'svc-a', 3600), 'missing')
    t.equal(await store.refreshTokens.revoke(hash, 'svc-b', 3600), 'foreign')
    t.equal(await store.revocations.isSessionRevoked(record.sid), false, 'a foreign revocation changes nothing')
    t.equal(await store.refreshTokens.revoke(hash, 'svc-a', 3600), 'revoked')
    t.equal(await store.refreshTokens.get(hash), undefined, 'the token is forgotten')
    t.equal(await store.revocations.isSessionRevoked(record.sid), true, 'its session is revoked')
  })
}

function revocationCases (t: Test, store: Store, db: Database): void {
  t.test('deny an access token', async (t) => {
    const jti = randomUUID()
    t.equal(await store.revocations.isRevoked(jti, undefined), false)
    await store.revocations.denyAccessToken(jti, nowSeconds() + 3600)
    t.equal(await store.revocations.isRevoked(jti, undefined), true, 'denied')
    t.equal(await store.revocations.isRevoked(jti, randomUUID()), true, 'denied, whatever its session')
    await store.revocations.denyAccessToken(jti, nowSeconds() + 60)
    t.ok((await revocationExpiry(db, 'access_token', jti) ?? 0) > nowSeconds() + 3000, 'denied twice: the later expiry stays')
  })

  t.test('revoke a session', async (t) => {
    const { hash, record } = await stored(store)
    await store.revocations.revokeSession(record.sid, 3600)
    t.equal(await store.revocations.isSessionRevoked(record.sid), true)
    t.equal(await store.revocations.isRevoked(randomUUID(), record.sid), true, 'its access tokens are revoked')
    t.equal(await store.revocations.isRevoked(randomUUID(), randomUUID()), false, 'not another session\'s')
    t.strictSame(await store.refreshTokens.exchange(hash, request()), { status: 'revoked' }, 'its refresh tokens are refused')
    await store.revocations.revokeSession(record.sid, 10)
    t.ok((await revocationExpiry(db, 'session', record.sid) ?? 0) > nowSeconds() + 3000, 'recorded in the database, the later expiry kept')
  })
}

function markerAndCounterCases (t: Test, store: Store): void {
  t.test('recordOnce: single use, until it expires', async (t) => {
    const key = `marker:${randomUUID()}`
    t.equal(await store.replayGuard.recordOnce(key, nowSeconds() + 60), true, 'first time')
    t.equal(await store.replayGuard.recordOnce(key, nowSeconds() + 60), false, 'second time')
    const brief = `marker:${randomUUID()}`
    t.equal(await store.replayGuard.recordOnce(brief, nowSeconds() + 1), true)
    await sleep(2100)
    t.equal(await store.replayGuard.recordOnce(brief, nowSeconds() + 60), true, 'expired: recorded afresh')
  })

  t.test('counters: count, refund, window', async (t) => {
    const [a, b, brief, unseen] = Array.from({ length: 4 }, () => `counter:${randomUUID()}`) as [string, string, string, string]
    t.strictSame(await store.counters.count([a, b], 60), [1, 1])
    t.strictSame(await store.counters.count([a, b], 60), [2, 2])
    await store.counters.refund([a])
    t.strictSame(await store.counters.count([a, b], 60), [2, 3], 'a refund takes one back')
    await store.counters.refund([unseen])
    t.strictSame(await store.counters.count([unseen], 60), [1], 'a refund of nothing leaves nothing below zero')
    t.strictSame(await store.counters.count([brief], 1), [1])
    await sleep(1600)
    t.strictSame(await store.counters.count([brief], 1), [1], 'past its window a counter starts again')
  })
}

/** Every case of the contract, against `store` (whose revocations are kept in `db`). */
export function storeContract (t: Test, store: Store, db: Database): void {
  refreshTokenCases(t, store)
  revocationCases(t, store, db)
  markerAndCounterCases(t, store)
}
