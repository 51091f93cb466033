import { createHash, randomBytes, type JsonWebKey } from 'node:crypto'
import fp from 'fastify-plugin'
import bcrypt from 'bcryptjs'
import type { FastifyRequest } from 'fastify'
import { guard, invalidRequest, OAuthError } from './errors.js'

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
}

export type AuthMethod = 'client_secret_basic' | 'client_secret_post' | 'private_key_jwt' | 'none' | 'unsupported_scheme'

/** What a request presented to authenticate, before any check. */
export interface PresentedCredentials {
  method: AuthMethod
  clientId?: string
  clientSecret?: string
  /** private_key_jwt: the signed client assertion (RFC 7523 §2.2) */
  assertion?: string
}

/** RFC 7523 §2.2: the client_assertion_type of a JWT client assertion. */
export const JWT_BEARER_ASSERTION = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'

/** The form parameters that carry client credentials. */
export interface CredentialParameters {
  client_id?: string
  client_secret?: string
  client_assertion_type?: string
  client_assertion?: string
}

/** bcrypt reads only the first 72 bytes; a longer secret would be truncated silently. */
export const MAX_SECRET_BYTES = 72
const MAX_CLIENT_ID_LENGTH = 255
/** Client records each process keeps in memory (besides the Redis cache). */
const MAX_LOCAL_CLIENTS = 10_000

// RFC 6749 appendix B: application/x-www-form-urlencoded, '+' is a space.
function formDecode (value: string): string {
  return decodeURIComponent(value.replace(/\+/g, ' '))
}

/**
 * Reads the client credentials of a request: HTTP Basic (RFC 6749 §2.3.1: id
 * and secret each form-urlencoded, joined by ':', base64) or client_id and
 * client_secret in the form body. Ambiguous or malformed input is refused.
 */
export function readCredentials (authorization: string | undefined, body: CredentialParameters): PresentedCredentials {
  if (body.client_assertion !== undefined || body.client_assertion_type !== undefined) {
    if (authorization !== undefined || body.client_secret !== undefined) {
      throw invalidRequest('use one client authentication method, not a client assertion and a secret')
    }
    if (body.client_assertion_type !== JWT_BEARER_ASSERTION) throw invalidRequest(`client_assertion_type must be ${JWT_BEARER_ASSERTION}`)
    if (body.client_assertion === undefined) throw invalidRequest('client_assertion is required with client_assertion_type')
    // RFC 7523 §3: the assertion's sub is the client id. It is read here,
    // unverified, only to find the client whose keys then verify it.
    const subject = assertionSubject(body.client_assertion)
    if (body.client_id !== undefined && subject !== undefined && body.client_id !== subject) {
      throw invalidRequest('client_id differs from the subject of the client assertion')
    }
    return { method: 'private_key_jwt', clientId: body.client_id ?? subject, assertion: body.client_assertion }
  }
  if (authorization !== undefined) {
    const match = /^Basic[ ]+([A-Za-z0-9+/]+={0,2})[ ]*$/i.exec(authorization)
    if (match === null) {
      if (/^Basic\b/i.test(authorization)) throw invalidRequest('malformed Basic authorization header')
      // Another scheme (Bearer, say) is a failed authentication, answered
      // like any other with invalid_client and a Basic challenge.
      return { method: 'unsupported_scheme' }
    }
    const decoded = Buffer.from(match[1] ?? '', 'base64').toString('utf8')
    const colon = decoded.indexOf(':')
    if (colon < 0) throw invalidRequest('malformed Basic authorization header: no colon')
    let clientId: string
    let clientSecret: string
    try {
      clientId = formDecode(decoded.slice(0, colon))
      clientSecret = formDecode(decoded.slice(colon + 1))
    } catch {
      throw invalidRequest('malformed Basic authorization header: bad percent-encoding')
    }
    if (body.client_secret !== undefined) throw invalidRequest('use one client authentication method, not both Basic and client_secret')
    if (body.client_id !== undefined && body.client_id !== clientId) throw invalidRequest('client_id in the body differs from the Basic credentials')
    return { method: 'client_secret_basic', clientId, clientSecret }
  }
  if (body.client_secret !== undefined) {
    if (body.client_id === undefined) throw invalidRequest('client_secret given without client_id')
    return { method: 'client_secret_post', clientId: body.client_id, clientSecret: body.client_secret }
  }
  if (body.client_id !== undefined) return { method: 'none', clientId: body.client_id }
  return { method: 'none' }
}

function assertionSubject (assertion: string): string | undefined {
  const payload = assertion.split('.')[1]
  if (payload === undefined) return undefined
  try {
    const claims: unknown = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'))
    const sub = (claims as { sub?: unknown } | null)?.sub
    return typeof sub === 'string' ? sub : undefined
  } catch {
    return undefined
  }
}

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
}

const CLIENT_COLUMNS = 'client_id, client_secret_hash, rate_limit, name, status, scopes, default_scopes, audiences, claims, jwks_uri, jwks'

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
    jwks: row.jwks
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
 * v2: the record gained scopes, audiences, claims and keys; instances of an
 * older release keep reading their own entries during a rolling update.
 */
export const clientCacheKey = (clientId: string): string => `client:v2:${clientId}`

/** Redis channel (after the key prefix) on which the CLI announces a changed client's id. */
export const CLIENT_CHANGES_CHANNEL = 'clients:changed'

/** bcrypt cost of the secrets this service hashes (10 is the floor it accepts). */
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
  /**
   * Authenticates a request's client. Throws invalid_client (401) for a
   * missing, unknown or wrong credential (all answered alike) and
   * unauthorized_client for a disabled client.
   */
  authenticate: (request: FastifyRequest, credentials: PresentedCredentials) => Promise<Client>
  /** Lookups since start, by the level that answered them (for metrics). */
  cacheStats: { memoryHits: number, sharedHits: number, misses: number }
}

declare module 'fastify' {
  interface FastifyInstance {
    clients: Clients
  }
}

export default fp(async (fastify) => {
  const { config, db, store, clientAssertions, secrets } = fastify
  const shared = store.sharedCache
  const realm = config.issuer.replace(/["\\]/g, '')
  // Compared against when the client is unknown (or has no secret), so that
  // such a request costs the same bcrypt work as a wrong secret and the
  // answers cannot be told apart, in content or in time. Its cost is the one
  // the CLI hashes secrets with; made at the first need, so that starting an
  // instance costs nothing.
  let decoyHash: Promise<string> | undefined
  const decoy = async (): Promise<string> => await (decoyHash ??= bcrypt.hash(randomBytes(18).toString('base64'), BCRYPT_COST))

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
    const cached = shared === undefined ? null : await guard('redis', shared.get(cacheKey(clientId)))
    if (cached !== null) {
      const { readAt, ...client } = JSON.parse(cached) as Client & { readAt?: number }
      remember(client, readAt ?? now)
      cacheStats.sharedHits++
      return client
    }
    cacheStats.misses++
    const { rows } = await guard('postgresql', db.query<ClientRow>(`SELECT ${CLIENT_COLUMNS} FROM clients WHERE client_id = $1`, [clientId]))
    const row = rows[0]
    if (row === undefined) return undefined
    const client = clientFromRow(row)
    if (shared !== undefined) await guard('redis', shared.set(cacheKey(clientId), JSON.stringify({ ...client, readAt: now }), ttlMs))
    remember(client, now)
    return client
  }

  // Failed authentications are counted per client id from one address and
  // per address. Over either limit, an attempt that would cost a bcrypt
  // compare is refused before it: guessing stops, and so does the CPU it
  // burns. A secret already verified (remembered in this process) is not a
  // guess and passes; and since the client id's counter is per address, an
  // attacker elsewhere cannot lock a client out of its own address.
  const FAILURE_WINDOW_SECONDS = 60
  const failureKeys = (request: FastifyRequest, clientId: string | undefined): [string, string] => {
    const address = request.ip
    const id = createHash('sha256').update(clientId ?? '').digest('base64url')
    return [`auth-failures:client:${id}:${address}`, `auth-failures:address:${address}`]
  }
  async function throttle (request: FastifyRequest, clientId: string | undefined): Promise<void> {
    const [forClient, forAddress] = await guard(store.dependency, store.failures(failureKeys(request, clientId)))
    if ((forClient ?? 0) < config.authFailureLimit && (forAddress ?? 0) < config.authFailureLimitPerAddress) return
    request.log.warn({ clientId, address: request.ip }, 'client authentication throttled after repeated failures')
    throw new OAuthError(429, 'rate_limit_exceeded', `too many failed client authentications; retry in ${FAILURE_WINDOW_SECONDS} s`, {
      'retry-after': String(FAILURE_WINDOW_SECONDS)
    })
  }

  function rejected (request: FastifyRequest, credentials: PresentedCredentials, reason: string): OAuthError {
    request.log.info({ clientId: credentials.clientId, method: credentials.method, reason }, 'client authentication failed')
    // Counted in the background: the answer does not wait for it, and a
    // failure to count is logged, never turned into another answer.
    store.countFailures(failureKeys(request, credentials.clientId), FAILURE_WINDOW_SECONDS)
      .catch((err: Error) => request.log.warn({ cause: err.message }, 'could not count a failed authentication'))
    const headers: Record<string, string> = { 'www-authenticate': `Basic realm="${realm}"` }
    return new OAuthError(401, 'invalid_client', 'client authentication failed', headers)
  }

  async function authenticate (request: FastifyRequest, credentials: PresentedCredentials): Promise<Client> {
    const { clientId, clientSecret, assertion } = credentials
    if (credentials.method === 'private_key_jwt' && assertion !== undefined) {
      const client = clientId === undefined ? undefined : await find(clientId)
      if (client === undefined) throw rejected(request, credentials, 'unknown client')
      if (client.jwksUri === null && client.jwks === null) throw rejected(request, credentials, 'no keys registered for private_key_jwt')
      const problem = await clientAssertions.check(request, assertion, client)
      if (problem !== undefined) throw rejected(request, credentials, problem)
      return enabled(client)
    }
    if (clientId === undefined || clientSecret === undefined) throw rejected(request, credentials, 'no credentials')
    if (Buffer.byteLength(clientSecret, 'utf8') > MAX_SECRET_BYTES) throw rejected(request, credentials, 'secret longer than 72 bytes')
    const client = await find(clientId)
    // An unknown client, or one without a secret, costs the same bcrypt work
    // as a wrong secret, so that none of the three can be told apart.
    const hash = client?.secretHash ?? await decoy()
    const matches = await secrets.matches(clientSecret, hash, async () => await throttle(request, clientId))
    if (matches === null) request.log.warn({ clientId }, 'stored client secret hash is not a bcrypt hash')
    if (client === undefined) throw rejected(request, credentials, 'unknown client')
    if (client.secretHash === null) throw rejected(request, credentials, 'the client has no secret')
    if (matches !== true) throw rejected(request, credentials, 'wrong secret')
    return enabled(client)
  }

  function enabled (client: Client): Client {
    if (client.status !== 'enabled') throw new OAuthError(400, 'unauthorized_client', 'the client is disabled')
    return client
  }

  // With Redis, a change announced by the CLI drops the record from every
  // instance's memory at once, instead of after CLIENT_CACHE_TTL.
  if (config.redisUrl !== undefined) {
    const subscriber = fastify.redis.duplicate({ enableOfflineQueue: true, connectionName: 'session-service-sub' })
    subscriber.on('error', () => {}) // the main connection reports Redis trouble
    subscriber.on('message', (_channel: string, clientId: string) => { local.delete(clientId) })
    await subscriber.subscribe(`${config.redisKeyPrefix}${CLIENT_CHANGES_CHANNEL}`)
    fastify.addHook('onClose', async () => {
      subscriber.disconnect()
    })
  }

  fastify.decorate('clients', {
    find,
    forget: async (clientId: string) => {
      local.delete(clientId)
      if (shared !== undefined) await guard('redis', shared.del(cacheKey(clientId)))
    },
    authenticate,
    cacheStats
  })
}, { name: 'clients', dependencies: ['config', 'postgres', 'store', 'client-assertions', 'secrets'] })
