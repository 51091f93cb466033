// Errors and latency of the service's calls to PostgreSQL and Redis, by
// dependency and kind, read through GET /metrics. Outages are made without
// touching the shared servers: a table locked in the test's own database
// (a timeout), a port where nothing listens (unreachable), and a Redis
// server of the test's own, paused (a timeout) and then stopped.
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import { Redis } from 'ioredis'
import { test } from 'tap'
import { basicAuth, build, freePort, insertClient, issueTokens, needs, PrivateRedis, sample, scrapeMetrics, tokenRequest, verify } from './helper.ts'

const ERRORS = 'session_service_dependency_errors_total'
const DURATIONS = 'session_service_dependency_duration_seconds'

test('PostgreSQL: a call that runs out its bound is a timeout, a refused connection is unreachable', { skip: needs.postgres }, async (t) => {
  const { app, databaseUrl } = await build(t, { env: { DEPENDENCY_TIMEOUT: '300ms' } })
  await insertClient(databaseUrl, { id: 'svc-locked', secret: 'locked-secret' })

  // A transaction of another connection holds the clients table, so the
  // lookup of a client not yet cached waits until its bound runs out.
  const locker = new pg.Client({ connectionString: databaseUrl })
  await locker.connect()
  t.teardown(async () => await locker.end())
  await locker.query('BEGIN')
  await locker.query('LOCK TABLE clients IN ACCESS EXCLUSIVE MODE')
  const locked = await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-locked', 'locked-secret') })
  await locker.query('ROLLBACK')
  t.equal(locked.statusCode, 503, 'the lookup that timed out is a 503')

  const text = await scrapeMetrics(app)
  t.equal(sample(text, `${ERRORS}{dependency="postgresql",kind="timeout"}`), 1, 'counted as a timeout')
  t.equal(sample(text, `${ERRORS}{dependency="postgresql",kind="unreachable"}`), 0)
  t.ok((sample(text, `${DURATIONS}_sum{dependency="postgresql"}`) ?? 0) >= 0.29, 'its time is in the latency histogram')

  const { app: orphan } = await build(t, {
    databaseUrl: `postgres://postgres@127.0.0.1:${await freePort()}/postgres`,
    env: { MIGRATE_ON_START: 'false' }
  })
  const refused = await tokenRequest(orphan, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-any', 'any-secret') })
  t.equal(refused.statusCode, 503, 'no PostgreSQL: 503')
  const orphanText = await scrapeMetrics(orphan)
  t.ok((sample(orphanText, `${ERRORS}{dependency="postgresql",kind="unreachable"}`) ?? 0) >= 1, 'counted as unreachable')
  t.equal(sample(orphanText, `${ERRORS}{dependency="postgresql",kind="timeout"}`), 0, 'not as a timeout')
  t.equal(sample(await scrapeMetrics(app), `${ERRORS}{dependency="postgresql",kind="unreachable"}`), 0, 'each instance counts its own calls')
})

test('Redis: a paused server times out, a stopped one is unreachable', { skip: needs.redis }, async (t) => {
  const redis = new PrivateRedis(t, await freePort())
  await redis.start()
  // Without the revocations in memory, each verification is one Redis call.
  const { app, databaseUrl } = await build(t, { env: { REDIS_URL: redis.url, DEPENDENCY_TIMEOUT: '300ms', REVOCATIONS_IN_MEMORY_MAX: '0' } })
  await insertClient(databaseUrl, { id: 'svc-redis', secret: 'redis-secret' })
  const tokens = await issueTokens(app, 'svc-redis', 'redis-secret')

  let text = await scrapeMetrics(app)
  t.equal(sample(text, `${ERRORS}{dependency="redis",kind="timeout"}`), 0, 'the series exist before any failure')
  t.equal(sample(text, `${ERRORS}{dependency="redis",kind="unreachable"}`), 0)
  t.ok((sample(text, `${DURATIONS}_count{dependency="redis"}`) ?? 0) > 0, 'Redis calls are timed')

  // Another connection pauses every client of this server for a while.
  const admin = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 0 })
  admin.on('error', () => {})
  t.teardown(() => { admin.disconnect() })
  await admin.connect()
  await admin.call('CLIENT', 'PAUSE', '2000', 'ALL')
  const paused = await verify(app, tokens.access_token)
  await admin.call('CLIENT', 'UNPAUSE')
  t.equal(paused.statusCode, 503, 'the revocation check that timed out is a 503')
  text = await scrapeMetrics(app)
  t.equal(sample(text, `${ERRORS}{dependency="redis",kind="timeout"}`), 1, 'counted as a timeout')
  t.equal(sample(text, `${ERRORS}{dependency="redis",kind="unreachable"}`), 0)

  admin.disconnect()
  await redis.stop()
  await sleep(100)
  t.equal((await verify(app, tokens.access_token)).statusCode, 503, 'no Redis: 503')
  text = await scrapeMetrics(app)
  t.ok((sample(text, `${ERRORS}{dependency="redis",kind="unreachable"}`) ?? 0) >= 1, 'counted as unreachable')
  t.equal(sample(text, `${ERRORS}{dependency="redis",kind="timeout"}`), 1, 'no further timeout')
  t.equal(sample(text, `${ERRORS}{dependency="postgresql",kind="unreachable"}`), 0, 'and PostgreSQL is not blamed')
})
