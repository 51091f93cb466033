import fp from 'fastify-plugin'
import { clientsRepository, type Client } from '../storage/clients.ts'
import { clientCacheKey } from '../storage/client-cache.ts'

// The clients table's types and SQL live in the repository; named here too
// for the code that imports them from the plugin.
export { BCRYPT_COST, CLIENT_CHANGES_CHANNEL, clientCacheKey, clientFromRow, insertClientRow, MAX_SECRET_BYTES, type Client, type NewClient } from '../storage/clients.ts'

const MAX_CLIENT_ID_LENGTH = 255
/** Client records each process keeps in memory (besides the Redis cache). */
const MAX_LOCAL_CLIENTS = 10_000

export interface Clients {
  /** The client record, from the Redis cache or PostgreSQL; undefined if unknown. */
  find: (clientId: string) => Promise<Client | undefined>
  /** Drops a cached record so the next lookup reads PostgreSQL. */
  forget: (clientId: string) => Promise<void>
  /** Lookups since start, by the level that answered them (for metrics). */
  cacheStats: { memoryHits: number, sharedHits: number, misses: number }
}

declare module 'fastify' {
  interface FastifyInstance {
    clients: Clients
  }
}

export default fp(async (fastify) => {
  const { config, db, store } = fastify
  const shared = store.clientCache
  const repository = clientsRepository(db)
  const cacheKey = clientCacheKey

  // Two cache levels, one lifetime. A record read from PostgreSQL is stamped
  // with the time it was read and shared through Redis for CLIENT_CACHE_TTL;
  // each process also keeps it in memory, but only until that same stamp plus
  // CLIENT_CACHE_TTL, so a change in PostgreSQL reaches every instance within
  // CLIENT_CACHE_TTL whichever level serves it. The memory level saves a
  // Redis round trip on every authenticated request.
  const ttlMs = config.clientCacheTtl * 1000
  const local = new Map<string, { client: Client, expires: number }>()
  const cacheStats = { memoryHits: 0, sharedHits: 0, misses: 0 }

  function remember (client: Client, readAt: number): void {
    local.delete(client.id)
    local.set(client.id, { client, expires: readAt + ttlMs })
    if (local.size > MAX_LOCAL_CLIENTS) {
      const oldest = local.keys().next().value
      if (oldest !== undefined) local.delete(oldest)
    }
  }

  const lookups = new Map<string, Promise<Client | undefined>>()

  async function find (clientId: string): Promise<Client | undefined> {
    // No stored id is empty, longer than the column allows, or holds a NUL
    // (PostgreSQL text cannot): such an id is unknown without asking, rather
    // than an error of the database.
    if (clientId.length === 0 || clientId.length > MAX_CLIENT_ID_LENGTH || clientId.includes('\u0000')) return undefined
    const now = Date.now()
    const inMemory = local.get(clientId)
    if (inMemory !== undefined) {
      if (inMemory.expires > now) {
        cacheStats.memoryHits++
        return inMemory.client
      }
      local.delete(clientId)
    }
    // Concurrent lookups of one id share one read: a burst of requests for
    // one client costs one query, not one each.
    const reading = lookups.get(clientId)
    if (reading !== undefined) return await reading
    const lookup = read(clientId, now)
    lookups.set(clientId, lookup)
    try {
      return await lookup
    } finally {
      lookups.delete(clientId)
    }
  }

  async function read (clientId: string, now: number): Promise<Client | undefined> {
    // A cached record is sealed by this service (a forged one reads as
    // absent), and its time is capped at now: no record outlives
    // CLIENT_CACHE_TTL in memory, whatever time it claims.
    const cached = await shared.get(cacheKey(clientId))
    if (cached !== null) {
      const { readAt, ...record } = JSON.parse(cached) as Omit<Client, 'previousSecretExpiresAt'> & { readAt?: number, previousSecretExpiresAt: string | null }
      // JSON has no dates: the grace period's end comes back as its ISO text.
      const end = record.previousSecretExpiresAt
      const client: Client = { ...record, previousSecretHash: record.previousSecretHash ?? null, previousSecretExpiresAt: typeof end === 'string' ? new Date(end) : null }
      remember(client, Math.min(typeof readAt === 'number' ? readAt : 0, now))
      cacheStats.sharedHits++
      return client
    }
    cacheStats.misses++
    const client = await fastify.dependencyCalls.guard('postgresql', repository.find(clientId))
    if (client === undefined) return undefined
    await shared.set(cacheKey(clientId), JSON.stringify({ ...client, readAt: now }), ttlMs)
    remember(client, now)
    return client
  }

  async function forget (clientId: string): Promise<void> {
    local.delete(clientId)
    await shared.del(cacheKey(clientId))
  }

  // With Redis, a change announced by the CLI drops the record from every
  // instance's memory at once, instead of after CLIENT_CACHE_TTL.
  const unsubscribe = await shared.subscribe((clientId) => { local.delete(clientId) })
  fastify.addHook('onClose', async () => { unsubscribe() })

  fastify.decorate('clients', {
    find,
    forget,
    cacheStats
  })
}, { name: 'clients', dependencies: ['config', 'postgres', 'store', 'dependency-calls'] })
