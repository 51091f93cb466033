// The cache of client records shared by instances, and the notices of a
// changed client that let every instance drop its own copy at once. Only
// Redis provides one: without Redis each instance reads PostgreSQL and keeps
// its records in memory for CLIENT_CACHE_TTL, so the SQL flavour is a cache
// that never holds anything (reads miss, writes and notices do nothing).
import { subscriberOf, type RedisClient } from './redis-commands.ts'
import { guard as unrecorded, type Guard } from '../plugins/errors.ts'
import type { RecordSeal } from './record-seal.ts'

/** Redis channel (after the key prefix) on which a changed client's id is announced. */
export const CLIENT_CHANGES_CHANNEL = 'clients:changed'

/**
 * The shared-cache key of a client record (before the Redis key prefix).
 * v4: records are sealed (storage/record-seal.ts) and carry the client's
 * grant types. v5: they carry the previous secret's hash and the end of its
 * grace period. v6: they carry the clients whose tokens it may exchange and
 * dpop_bound_access_tokens (RFC 9449 §5.2), so that a record without it is
 * never read as a client free to skip DPoP. Instances of an older release
 * keep reading their own entries during a rolling update, and nothing of
 * theirs is read here.
 */
export const clientCacheKey = (clientId: string): string => `client:v6:${clientId}`

/**
 * Drops a changed client's shared record and tells every instance to drop
 * its own copy: what the CLI does after it changes a client, through a
 * connection of its own (`redis` applies `prefix` to keys, not to channels).
 */
export async function invalidateClient (redis: RedisClient, prefix: string, clientId: string): Promise<void> {
  await redis.del(clientCacheKey(clientId))
  await redis.publish(`${prefix}${CLIENT_CHANGES_CHANNEL}`, clientId)
}

export interface ClientCache {
  /** The value under `key`, or null (absent, expired, or not written by this service). */
  get: (key: string) => Promise<string | null>
  set: (key: string, value: string, ttlMs: number) => Promise<void>
  del: (key: string) => Promise<void>
  /** Tells every subscribed instance that the client changed. */
  announce: (clientId: string) => Promise<void>
  /** Calls `onChange` with each announced client id until the returned function is called. */
  subscribe: (onChange: (clientId: string) => void) => Promise<() => void>
}

/**
 * The cache in Redis (`redis` applies `prefix` to keys, not to channels);
 * `guard` records its Redis calls. Sealing and opening are local work once
 * the seal's secret is loaded, so they are not timed as PostgreSQL calls.
 * Values are sealed on the way in and checked on the way out: a value that
 * anyone but this service wrote reads as absent. The seal's secret is read
 * from PostgreSQL, and failing that, so is the call.
 */
export function redisClientCache (redis: RedisClient, prefix: string, seal: RecordSeal, guard: Guard): ClientCache {
  const channel = `${prefix}${CLIENT_CHANGES_CHANNEL}`
  return {
    async get (key) {
      const sealed = await guard('redis', redis.get(key))
      return sealed === null ? null : await unrecorded('postgresql', seal.open(key, sealed)) ?? null
    },
    async set (key, value, ttlMs) {
      const sealed = await unrecorded('postgresql', seal.seal(key, value))
      await guard('redis', redis.set(key, sealed, 'PX', ttlMs))
    },
    del: async (key) => { await guard('redis', redis.del(key)) },
    announce: async (clientId) => { await guard('redis', redis.publish(channel, clientId)) },
    async subscribe (onChange) {
      const { connection: subscriber, subscribed } = subscriberOf(redis, 'session-service-sub', channel)
      // the main connection reports Redis trouble
      subscriber.on('error', () => {})
      subscriber.on('node error', () => {})
      subscriber.on('message', (_channel: string, clientId: string) => { onChange(clientId) })
      await subscribed
      return () => { subscriber.disconnect() }
    }
  }
}

/** No shared cache: every read misses, so each instance asks PostgreSQL. */
export function noClientCache (): ClientCache {
  return {
    get: async () => null,
    set: async () => {},
    del: async () => {},
    announce: async () => {},
    subscribe: async () => () => {}
  }
}
