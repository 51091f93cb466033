import fp from 'fastify-plugin'
import fastifyRedis from '@fastify/redis'
import { Redis } from 'ioredis'
import { guard, withTimeout } from './errors.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Resolves when Redis answers PING within the given time; null without REDIS_URL. */
    pingRedis: ((timeoutMs: number) => Promise<void>) | null
  }
}

/** How long the start waits for Redis to answer. */
const REDIS_START_WAIT_MS = 10_000

export default fp(async (fastify) => {
  const { config } = fastify
  if (config.redisUrl === undefined) {
    fastify.decorate('pingRedis', null)
    return
  }
  let lastErrorLog = 0
  let lastError: Error | undefined
  const client = new Redis(config.redisUrl, {
    // Every key this service writes, rate-limit counters included, carries the
    // prefix, so several deployments can share one Redis.
    keyPrefix: config.redisKeyPrefix,
    connectionName: 'session-service',
    connectTimeout: config.dependencyTimeoutMs,
    commandTimeout: config.dependencyTimeoutMs,
    // While Redis is unreachable, commands fail at once (and become 503s)
    // instead of queueing until the connection returns.
    enableOfflineQueue: false,
    // Commands issued in the same tick (many concurrent requests) go out in
    // one write and come back in one read.
    enableAutoPipelining: true,
    maxRetriesPerRequest: 1,
    retryStrategy: (attempt: number) => Math.min(attempt * 200, 2000),
    lazyConnect: true
  })
  // ioredis reports every failed reconnect; log at most one line per 10 s.
  client.on('error', (err: Error) => {
    lastError = err
    const now = Date.now()
    if (now - lastErrorLog < 10_000) return
    lastErrorLog = now
    fastify.log.warn({ cause: err.message }, 'redis connection error')
  })

  // A bounded wait at start: a Redis that does not answer stops the start
  // with one line naming it, instead of waiting for the plugin timeout.
  client.connect().catch(() => {}) // failures arrive as 'error' events; ioredis retries
  try {
    // Not events.once: it gives up at the first 'error', and ioredis keeps
    // retrying after one.
    await withTimeout(new Promise<void>((resolve) => client.once('ready', () => resolve())), REDIS_START_WAIT_MS, 'redis')
  } catch {
    client.disconnect()
    throw new Error(`REDIS_URL: Redis did not answer within ${REDIS_START_WAIT_MS / 1000} s at start (${lastError?.message ?? 'no answer'})`)
  }
  // Ours to close: quit when Redis answers, drop the connection when it does
  // not, so that a shutdown during an outage does not wait for it.
  await fastify.register(fastifyRedis, { client, closeClient: false })
  fastify.addHook('onClose', async () => {
    await withTimeout(client.quit(), 1000, 'redis').catch(() => client.disconnect())
  })

  fastify.decorate('pingRedis', async (timeoutMs: number) => {
    await guard('redis', withTimeout(fastify.redis.ping(), timeoutMs, 'redis'))
  })
}, { name: 'redis', dependencies: ['config'] })
