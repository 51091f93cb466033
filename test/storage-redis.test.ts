// The store's contract against its Redis implementations (revocations
// written through to PostgreSQL), and what only Redis has: sealed records,
// the shared client cache, and the change notices.
import { randomBytes, randomUUID } from 'node:crypto'
import { test, type Test } from 'tap'
import { Redis } from 'ioredis'
import { DependencyError } from '../plugins/errors.ts'
import { serverDatabase, type Database } from '../storage/database.ts'
import { redisStore, type Store } from '../storage/index.ts'
import { readRecordSecret, recordSeal } from '../storage/record-seal.ts'
import { revocationKeys } from '../storage/revocations.ts'
import type { RedisClient } from '../storage/redis-commands.ts'
import { clusterRun, connectCluster, createRedisPrefix, freePort, needs, TEST_DATABASE_URL, TEST_REDIS_CLUSTER_NODES, TEST_REDIS_URL } from './helper.ts'
import { openTestDatabase, storeContract } from './storage-contract.ts'

const quiet = { info: () => {}, warn: () => {}, error: () => {} }

/** The run's shared Redis with the key prefix applied: the server, or in the cluster run the cluster. */
async function openRedis (t: Test, prefix: string): Promise<RedisClient> {
  const redis = clusterRun ? await connectCluster(TEST_REDIS_CLUSTER_NODES, { keyPrefix: prefix }) : new Redis(TEST_REDIS_URL, { keyPrefix: prefix })
  t.teardown(() => { redis.disconnect() })
  return redis
}

function openStore (t: Test, redis: RedisClient, prefix: string, db: Database): Store {
  const seal = recordSeal(async () => await readRecordSecret(db), quiet)
  const store = redisStore({ redis, prefix, db, seal, log: quiet })
  t.teardown(() => store.close())
  return store
}

/** What `operation` failed with: the dependency it names. */
async function failedDependency (operation: Promise<unknown>): Promise<string | undefined> {
  try {
    await operation
    return undefined
  } catch (err) {
    return err instanceof DependencyError ? err.dependency : `not a DependencyError: ${(err as Error).message}`
  }
}

test('the Redis store keeps the contract', { skip: needs.redis }, async (t) => {
  const prefix = createRedisPrefix(t)
  const db = await openTestDatabase(t)
  const store = openStore(t, await openRedis(t, prefix), prefix, db)
  await store.start()
  storeContract(t, store, db)
})

test('Redis records: sealed, durable, shared', { skip: needs.redis }, async (t) => {
  const prefix = createRedisPrefix(t)
  const db = await openTestDatabase(t)
  const redis = await openRedis(t, prefix)
  const store = openStore(t, redis, prefix, db)
  await store.start()
  const iat = Math.floor(Date.now() / 1000)
  const record = { client_id: 'svc-a', sid: randomUUID(), scope: '', aud: 'api', iat, exp: iat + 3600 }
  const request = { clientId: 'svc-a', scope: '', audience: '', allowedAudiences: ['api'], sessionTtl: 3600 }

  const forged = randomBytes(32).toString('base64url')
  await redis.hset(`refresh:v2:${forged}`, 'r', `${randomBytes(32).toString('base64url')}.${JSON.stringify(record)}`)
  t.equal(await store.refreshTokens.get(forged), undefined, 'a forged refresh-token record reads as missing')
  t.strictSame(await store.refreshTokens.exchange(forged, request), { status: 'missing' }, 'and is never exchanged')
  t.equal(await store.revocations.isSessionRevoked(record.sid), false, 'nor does it revoke the session it names')
  t.ok(store.rejectedRecords() >= 2, 'refused records are counted')

  const hash = randomBytes(32).toString('base64url')
  await store.refreshTokens.put(hash, record)
  t.equal((await store.refreshTokens.exchange(hash, request)).status, 'ok')
  t.equal((await store.refreshTokens.exchange(hash, request)).status, 'reused')
  const { rows } = await db.query("SELECT 1 FROM revocations WHERE kind = 'session' AND id = $1", [record.sid])
  t.equal(rows.length, 1, 'the session revoked on reuse is recorded in PostgreSQL too')

  await store.clientCache.set('client:v4:svc-a', '{"id":"svc-a"}', 60_000)
  t.equal(await store.clientCache.get('client:v4:svc-a'), '{"id":"svc-a"}', 'a cached value reads back')
  await store.clientCache.del('client:v4:svc-a')
  t.equal(await store.clientCache.get('client:v4:svc-a'), null, 'and is gone once deleted')
  await redis.set('client:v4:svc-b', '{"id":"svc-b"}')
  t.equal(await store.clientCache.get('client:v4:svc-b'), null, 'a value this service did not write reads as absent')

  const changed: string[] = []
  const unsubscribe = await store.clientCache.subscribe((clientId) => { changed.push(clientId) })
  t.teardown(unsubscribe)
  await store.clientCache.announce('svc-a')
  for (let i = 0; i < 50 && changed.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 20))
  t.strictSame(changed, ['svc-a'], 'an announced change reaches the subscribers')
})

test('revocations that Redis lost (the marker with them) are put back before the next check', { skip: needs.redis || needs.postgres }, async (t) => {
  const prefix = createRedisPrefix(t)
  const db = await openTestDatabase(t)
  const redis = await openRedis(t, prefix)
  const store = openStore(t, redis, prefix, db)
  await store.start()
  const jti = randomUUID()
  const sid = randomUUID()
  await store.revocations.denyAccessToken(jti, Math.floor(Date.now() / 1000) + 600)
  await store.revocations.revokeSession(sid, 600)
  // What a flushed node, or a replica promoted without them, holds: nothing.
  const keys = revocationKeys(redis.isCluster)
  for (const key of [keys.restored, keys.deny(jti), keys.session(sid)]) await redis.del(key)
  t.equal(await store.revocations.isRevoked(jti, undefined), true, 'the access token still reads revoked')
  t.equal(await store.revocations.isSessionRevoked(sid), true, 'and so does the session')
  t.equal(await redis.exists(keys.restored, keys.deny(jti), keys.session(sid)), 3, 'both are back in Redis, with the marker')
})

test('each call names the dependency that failed', { skip: needs.redis || needs.postgres }, async (t) => {
  const prefix = createRedisPrefix(t)
  const redis = await openRedis(t, prefix)
  // A database handle that is closed: every PostgreSQL call of the store fails.
  const closed = serverDatabase({ connectionString: TEST_DATABASE_URL })
  await closed.close()
  const store = openStore(t, redis, prefix, closed)
  const iat = Math.floor(Date.now() / 1000)
  const record = { client_id: 'svc-a', sid: randomUUID(), scope: '', aud: 'api', iat, exp: iat + 3600 }
  t.equal(await failedDependency(store.refreshTokens.put('h', record)), 'postgresql', 'sealing a record reads the secret from PostgreSQL')
  t.equal(await failedDependency(store.clientCache.set('client:v4:x', '{}', 1000)), 'postgresql', 'so does caching a client')
  t.equal(await failedDependency(store.revocations.denyAccessToken(randomUUID(), iat + 60)), 'postgresql', 'the durable revocation')
  t.equal(await failedDependency(store.revocations.revokeSession(randomUUID(), 60)), 'postgresql', 'the durable session revocation')
  t.equal(await failedDependency(store.replayGuard.recordOnce(`marker:${randomUUID()}`, iat + 60)), undefined, 'what needs Redis alone still works')

  // A Redis that does not answer: nothing listens on the port.
  const gone = new Redis({ host: '127.0.0.1', port: await freePort(), lazyConnect: true, enableOfflineQueue: false, retryStrategy: () => null })
  gone.on('error', () => {})
  t.teardown(() => { gone.disconnect() })
  const db = await openTestDatabase(t)
  const offline = openStore(t, gone, prefix, db)
  t.equal(await failedDependency(offline.refreshTokens.get('h')), 'redis', 'a Redis failure names Redis')
  t.equal(await failedDependency(offline.counters.count(['c'], 60)), 'redis')
  t.equal(await failedDependency(offline.revocations.isRevoked(randomUUID(), undefined)), 'redis')
})
