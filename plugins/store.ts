import fp from 'fastify-plugin'
import { redisStore, sqlStore, type Store } from '../storage/index.ts'
import { readRecordSecret, recordSeal } from '../storage/record-seal.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * Refresh tokens, revocations, single-use markers, attempt counters and
     * the shared client cache: in Redis, or in the SQL database without REDIS_URL.
     */
    store: Store
  }
}

export default fp(async (fastify) => {
  const { config } = fastify
  let store: Store
  if (config.redisUrl !== undefined) {
    // What the service caches in Redis is sealed with a secret of the
    // database's (see storage/record-seal.ts), read at start when the
    // database answers, else at the first need.
    const seal = recordSeal(async () => await readRecordSecret(fastify.db), fastify.log)
    await seal.load().catch((err: Error) => fastify.log.error({ cause: err.message }, 'could not read the record-signing secret; Redis records cannot be read or written until it is'))
    store = redisStore({ redis: fastify.redis, prefix: config.redisKeyPrefix, db: fastify.db, seal, log: fastify.log, guard: fastify.dependencyCalls.guard, revocationsInMemoryMax: config.revocationsInMemoryMax })
  } else {
    store = sqlStore(fastify.db, fastify.log, fastify.dependencyCalls.guard)
    // Said once, at start: rate limits and the client cache are per process
    // without Redis, so several instances would not add up to one service.
    fastify.log.warn('no REDIS_URL: refresh tokens and revocations are kept in the database, rate limits in this process; run a single instance in this mode')
  }
  fastify.addHook('onClose', async () => store.close())
  await store.start()
  fastify.decorate('store', store)
}, { name: 'store', dependencies: ['config', 'postgres', 'migrations', 'redis', 'dependency-calls'] })
