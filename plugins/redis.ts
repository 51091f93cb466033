import fp from 'fastify-plugin'
import fastifyRedis from '@fastify/redis'
import { guard, withTimeout } from './errors.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Resolves when Redis answers PING within the given time; null without REDIS_URL. */
    pingRedis: ((timeoutMs: number) => Promise<void>) | null
  }
}

export default fp(async (fastify) => {
  const { config } = fastify
  if (config.redisUrl === undefined) {
    fastify.decorate('pingRedis', null)
    return
  }
  let lastErrorLog = 0
  await fastify.register(fastifyRedis, {
    url: config.redisUrl,
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
    retryStrategy: (attempt: number) => Math.min(attempt * 200, 2000)
  })
  // ioredis reports every failed reconnect; log at most one line per 10 s.
  fastify.redis.on('error', (err: Error) => {
    const now = Date.now()
    if (now - lastErrorLog < 10_000) return
    lastErrorLog = now
    fastify.log.warn({ cause: err.message }, 'redis connection error')
  })

  fastify.decorate('pingRedis', async (timeoutMs: number) => {
    await guard('redis', withTimeout(fastify.redis.ping(), timeoutMs, 'redis'))
  })
}, { name: 'redis', dependencies: ['config'] })
