import type { JsonWebKey } from 'node:crypto'
import fp from 'fastify-plugin'
import bcrypt from 'bcryptjs'
import { guard } from './errors.js'

export interface Client {
  id: string
  /** bcrypt hash of the secret; null for a client that authenticates with keys only */
  secretHash: string | null
  /** token requests per minute; null: the service default */
  rateLimit: number | null
  name: string
  status: 'enabled' | 'disabled'
  /** scopes the client may ask for */
  scopes: string[]
  /** scopes granted when a token request names none */
  defaultScopes: string[]
  /** audiences the client may ask for besides JWT_AUDIENCE */
  audiences: string[]
  /** claims added to each of its access tokens (registered claims excluded) */
  claims: Record<string, unknown>
  /** private_key_jwt: where its public keys are published, or the keys themselves */
  jwksUri: string | null
  jwks: { keys: JsonWebKey[] } | null
  /** the grant types it may use (grants/index.ts) */
  grantTypes: string[]
}

/** bcrypt reads only the first 72 bytes; a longer secret would be truncated silently. */
export const MAX_SECRET_BYTES = 72
const MAX_CLIENT_ID_LENGTH = 255
/** Client records each process keeps in memory (besides the Redis cache). */
const MAX_LOCAL_CLIENTS = 10_000

interface ClientRow {
  client_id: string
  client_secret_hash: string | null
  rate_limit: number | null
  name: string
  status: 'enabled' | 'disabled'
  scopes: string[]
  default_scopes: string[]
  audiences: string[]
  claims: Record<string, unknown>
  jwks_uri: string | null
  jwks: { keys: JsonWebKey[] } | null
  grant_types: string[]
}

const CLIENT_COLUMNS = 'client_id, client_secret_hash, rate_limit, name, status, scopes, default_scopes, audiences, claims, jwks_uri, jwks, grant_types'

export function clientFromRow (row: ClientRow): Client {
  return {
    id: row.client_id,
    secretHash: row.client_secret_hash,
    rateLimit: row.rate_limit,
    name: row.name,
    status: row.status,
    scopes: row.scopes,
    defaultScopes: row.default_scopes,
    audiences: row.audiences,
    claims: row.claims,
    jwksUri: row.jwks_uri,
    jwks: row.jwks,
    grantTypes: row.grant_types
  }
}

/** A client to register; every field but the id has the table's default. */
export interface NewClient {
  id: string
  /** hashed with bcrypt here; the secret itself is never stored */
  secret?: string
  name?: string
  rateLimit?: number | null
  scopes?: string[]
  defaultScopes?: string[]
  audiences?: string[]
  claims?: Record<string, unknown>
  jwksUri?: string | null
  jwks?: { keys: JsonWebKey[] } | null
}

/**
 * The shared-cache key of a client record (before the Redis key prefix).
 * v3: records are sealed (storage/record-seal.ts); instances of an older
 * release keep reading their own entries during a rolling update, and
 * nothing of theirs is trusted here.
 */
export const clientCacheKey = (clientId: string): string => `client:v3:${clientId}`

/** Redis channel (after the key prefix) on which the CLI announces a changed client's id. */
export { CLIENT_CHANGES_CHANNEL } from '../storage/client-cache.js'

/** bcrypt cost of the secrets this service hashes by default (BCRYPT_COST). */
export const BCRYPT_COST = 12

/** Inserts a client row through any pg-style query function (a pool, a client). */
export async function insertClientRow (db: { query: (text: string, values: unknown[]) => Promise<unknown> }, client: NewClient, cost: number = BCRYPT_COST): Promise<void> {
  if (client.secret !== undefined && Buffer.byteLength(client.secret, 'utf8') > MAX_SECRET_BYTES) {
    throw new Error(`a client secret may be at most ${MAX_SECRET_BYTES} bytes`)
  }
  const hash = client.secret === undefined ? null : await bcrypt.hash(client.secret, cost)
  await db.query(
    `INSERT INTO clients (client_id, client_secret_hash, name, rate_limit, scopes, default_scopes, audiences, claims, jwks_uri, jwks)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
    [client.id, hash, client.name ?? '', client.rateLimit ?? null, client.scopes ?? [], client.defaultScopes ?? [],
      client.audiences ?? [], JSON.stringify(client.claims ?? {}), client.jwksUri ?? null,
      client.jwks === undefined || client.jwks === null ? null : JSON.stringify(client.jwks)]
  )
}

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
      const { readAt, ...client } = JSON.parse(cached) as Client & { readAt?: number }
      remember(client, Math.min(typeof readAt === 'number' ? readAt : 0, now))
      cacheStats.sharedHits++
      return client
    }
    cacheStats.misses++
    const { rows } = await guard('postgresql', db.query<ClientRow>(`SELECT ${CLIENT_COLUMNS} FROM clients WHERE client_id = $1`, [clientId]))
    const row = rows[0]
    if (row === undefined) return undefined
    const client = clientFromRow(row)
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
}, { name: 'clients', dependencies: ['config', 'postgres', 'store'] })
