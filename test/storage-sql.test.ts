// The store's contract against its SQL implementations (no Redis): the same
// cases as the Redis store, and the SQL flavour's cache that holds nothing.
import { randomUUID } from 'node:crypto'
import { test } from 'tap'
import { DependencyError } from '../plugins/errors.ts'
import { serverDatabase } from '../storage/database.ts'
import { sqlStore } from '../storage/index.ts'
import { needs, TEST_DATABASE_URL } from './helper.ts'
import { openTestDatabase, storeContract } from './storage-contract.ts'

const quiet = { info: () => {}, warn: () => {}, error: () => {} }

test('the SQL store keeps the contract', async (t) => {
  const db = await openTestDatabase(t)
  const store = sqlStore(db, quiet)
  t.teardown(() => store.close())
  await store.start()
  storeContract(t, store, db)
})

test('without Redis the client cache holds nothing', async (t) => {
  const db = await openTestDatabase(t)
  const store = sqlStore(db, quiet)
  t.teardown(() => store.close())
  await store.clientCache.set('client:v4:svc-a', '{}', 60_000)
  t.equal(await store.clientCache.get('client:v4:svc-a'), null, 'every read misses')
  const unsubscribe = await store.clientCache.subscribe(() => t.fail('no notices without Redis'))
  await store.clientCache.announce('svc-a')
  unsubscribe()
  t.equal(store.rejectedRecords(), 0)
})

test('a PostgreSQL failure names PostgreSQL', { skip: needs.postgres }, async (t) => {
  const closed = serverDatabase({ connectionString: TEST_DATABASE_URL })
  await closed.close()
  const store = sqlStore(closed, quiet)
  t.teardown(() => store.close())
  const failure = await store.revocations.isRevoked(randomUUID(), undefined).then(() => undefined, (err: unknown) => err)
  t.ok(failure instanceof DependencyError, 'a DependencyError')
  t.equal((failure as DependencyError).dependency, 'postgresql')
  const exchange = await store.refreshTokens.exchange('h', { clientId: 'a', scope: '', audience: '', allowedAudiences: [], sessionTtl: 1 }).catch((err: unknown) => err)
  t.equal((exchange as DependencyError).dependency, 'postgresql', 'an exchange too')
})
