// A changed client reaches running instances at once where this process can
// tell them: the embedded service directly, instances sharing Redis by the
// cache entry and a notice; otherwise within CLIENT_CACHE_TTL.
import { invalidateClient } from '../storage/client-cache.ts'
import type { Settings } from '../plugins/config.ts'
import { createRedisClient, withoutRedisPassword, type RedisClient } from '../plugins/redis.ts'
import type { Connection } from './connection.ts'
import { describeFailure, type Output } from './io.ts'

export async function announceChange (config: Settings, connection: Connection, clientId: string, out: Output): Promise<void> {
  if (connection.service !== undefined) {
    await connection.service.forget(clientId)
    return
  }
  if (config.redisUrl === undefined) {
    if (config.databaseUrl !== undefined) out.note(`running instances see the change within CLIENT_CACHE_TTL (${config.clientCacheTtl}s)`)
    return
  }
  let redis: RedisClient | undefined
  try {
    // The service's own TLS and ACL options; a bad REDIS_TLS_CA_FILE is
    // reported like an unreachable Redis, since the change itself is made.
    redis = createRedisClient(config, {
      keyPrefix: config.redisKeyPrefix,
      lazyConnect: true,
      connectTimeout: 2000,
      commandTimeout: 2000,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: true,
      retryStrategy: () => null
    })
    redis.on('error', () => {})
    redis.on('node error', () => {})
    await redis.connect()
    await invalidateClient(redis, config.redisKeyPrefix, clientId)
  } catch (err) {
    out.note(`Redis did not answer (${withoutRedisPassword(describeFailure(err), config.redisUrl)}): running instances see the change within CLIENT_CACHE_TTL (${config.clientCacheTtl}s)`)
  } finally {
    redis?.disconnect()
  }
}
