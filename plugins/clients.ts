import { createHash, randomBytes } from 'node:crypto'
import { isIPv4, isIPv6 } from 'node:net'
import fp from 'fastify-plugin'
import bcrypt from 'bcryptjs'
import type { FastifyRequest } from 'fastify'
import { guard, invalidRequest, OAuthError } from './errors.js'
import type { SecretCheck } from './secrets.js'
import { CLIENT_CHANGES_CHANNEL, clientCacheKey, clientsRepository, MAX_SECRET_BYTES, type Client } from '../storage/clients.js'

// Moved to the clients repository; named here too for the code that imports them from the plugin.
export { BCRYPT_COST, CLIENT_CHANGES_CHANNEL, clientCacheKey, clientFromRow, insertClientRow, MAX_SECRET_BYTES, type Client, type NewClient } from '../storage/clients.js'

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

/**
 * The address a request is counted under: an IPv4 address as it is, an IPv6
 * address by its /64 (one host commonly holds a whole /64, so counting single
 * addresses would let it count afresh from each of 2^64).
 */
export function addressKey (ip: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip)
  if (mapped !== null) return mapped[1] as string
  if (isIPv4(ip) || !isIPv6(ip)) return ip
  const zoneless = ip.split('%')[0] as string
  const [head = '', tail] = zoneless.split('::')
  const headGroups = head === '' ? [] : head.split(':')
  const tailGroups = tail === undefined || tail === '' ? [] : tail.split(':')
  // An embedded IPv4 tail (::1.2.3.4) lies in the last 32 bits: outside the /64.
  const groups = tail === undefined ? headGroups : [...headGroups, ...Array(8 - headGroups.length - tailGroups.length).fill('0')]
  return `${groups.slice(0, 4).map((group) => Number.parseInt(group === '' ? '0' : group, 16).toString(16)).join(':')}::/64`
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
  const repository = clientsRepository(db)
  const realm = config.issuer.replace(/["\\]/g, '')
  // Compared against when the client is unknown (or has no secret), so that
  // such a request costs the same bcrypt work as a wrong secret and the
  // answers cannot be told apart, in content or in time. Its cost is the one
  // the CLI hashes secrets with; made at the first need, so that starting an
  // instance costs nothing.
  let decoyHash: Promise<string> | undefined
  const decoy = async (): Promise<string> => await (decoyHash ??= bcrypt.hash(randomBytes(18).toString('base64'), config.bcryptCost))

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
    const cached = shared === undefined ? null : await guard('redis', shared.get(cacheKey(clientId)))
    if (cached !== null) {
      const { readAt, ...client } = JSON.parse(cached) as Client & { readAt?: number }
      remember(client, Math.min(typeof readAt === 'number' ? readAt : 0, now))
      cacheStats.sharedHits++
      return client
    }
    cacheStats.misses++
    const client = await guard('postgresql', repository.find(clientId))
    if (client === undefined) return undefined
    if (shared !== undefined) await guard('redis', shared.set(cacheKey(clientId), JSON.stringify({ ...client, readAt: now }), ttlMs))
    remember(client, now)
    return client
  }

  // Attempts that cost real work (a bcrypt compare, a client assertion) are
  // counted per client id from one address and per address, before the
  // work, atomically: each attempt increments the counters and compares what
  // it gets back with the limits, so a concurrent burst cannot pass whole.
  // Over either limit the attempt is refused (429) before any work: guessing
  // stops, and so does the CPU it burns. A success takes its count back, so
  // only failures accumulate; a secret already verified (remembered in this
  // process) costs nothing and is not counted. Since the client id's counter
  // is per address, an attacker elsewhere cannot lock a client out of its
  // own address.
  const ATTEMPT_WINDOW_SECONDS = 60
  const attemptKeys = (request: FastifyRequest, clientId: string | undefined): [string, string] => {
    const address = addressKey(request.ip)
    const id = createHash('sha256').update(clientId ?? '').digest('base64url')
    return [`auth-failures:client:${id}:${address}`, `auth-failures:address:${address}`]
  }
  async function countAttempt (request: FastifyRequest, clientId: string | undefined): Promise<void> {
    const [forClient = 0, forAddress = 0] = await guard(store.dependency, store.countAttempts(attemptKeys(request, clientId), ATTEMPT_WINDOW_SECONDS))
    if (forClient <= config.authFailureLimit && forAddress <= config.authFailureLimitPerAddress) return
    request.log.warn({ clientId, address: addressKey(request.ip) }, 'client authentication throttled after repeated failures')
    throw new OAuthError(429, 'rate_limit_exceeded', `too many failed client authentications; retry in ${ATTEMPT_WINDOW_SECONDS} s`, {
      'retry-after': String(ATTEMPT_WINDOW_SECONDS)
    })
  }
  function refundAttempt (request: FastifyRequest, clientId: string): void {
    // In the background: the answer does not wait for it, and a failure is
    // logged, never turned into another answer.
    store.refundAttempts(attemptKeys(request, clientId))
      .catch((err: Error) => request.log.warn({ cause: err.message }, 'could not take back a counted authentication attempt'))
  }

  function rejected (request: FastifyRequest, credentials: PresentedCredentials, reason: string): OAuthError {
    request.log.info({ clientId: credentials.clientId, method: credentials.method, reason }, 'client authentication failed')
    const headers: Record<string, string> = { 'www-authenticate': `Basic realm="${realm}"` }
    return new OAuthError(401, 'invalid_client', 'client authentication failed', headers)
  }

  // A request whose connection has closed no longer needs its compare.
  const gone = (request: FastifyRequest) => () => request.raw.socket?.destroyed === true

  // A success against a hash cheaper than BCRYPT_COST stores a new hash at
  // that cost (conditionally: a rotation meanwhile wins), so that the old
  // cost's timing fades from the table.
  function upgradeHash (request: FastifyRequest, client: Client, secret: string): void {
    const oldHash = client.secretHash
    if (oldHash === null) return
    secrets.rehash(secret).then(async (hash) => {
      if (await repository.replaceSecretHash(client.id, oldHash, hash)) {
        request.log.info({ clientId: client.id, cost: config.bcryptCost }, 'client secret hash upgraded to the service\'s bcrypt cost')
        await forget(client.id)
      }
    }).catch((err: Error) => request.log.warn({ clientId: client.id, cause: err.message }, 'could not upgrade a client secret hash'))
  }

  async function authenticate (request: FastifyRequest, credentials: PresentedCredentials): Promise<Client> {
    const { clientId, clientSecret, assertion } = credentials
    if (credentials.method === 'private_key_jwt' && assertion !== undefined) {
      // Counted like a secret: an assertion may cost a fetch of the client's keys and a signature check.
      await countAttempt(request, clientId)
      const client = clientId === undefined ? undefined : await find(clientId)
      if (client === undefined) throw rejected(request, credentials, 'unknown client')
      if (client.jwksUri === null && client.jwks === null) throw rejected(request, credentials, 'no keys registered for private_key_jwt')
      const problem = await clientAssertions.check(request, assertion, client)
      if (problem !== undefined) throw rejected(request, credentials, problem)
      refundAttempt(request, client.id)
      return enabled(client)
    }
    if (clientId === undefined || clientSecret === undefined || Buffer.byteLength(clientSecret, 'utf8') > MAX_SECRET_BYTES) {
      // Cheap to refuse, so never refused for the count; but a failure all the same.
      store.countAttempts(attemptKeys(request, clientId), ATTEMPT_WINDOW_SECONDS)
        .catch((err: Error) => request.log.warn({ cause: err.message }, 'could not count a failed authentication'))
      throw rejected(request, credentials, clientSecret === undefined || clientId === undefined ? 'no credentials' : 'secret longer than 72 bytes')
    }
    const client = await find(clientId)
    // An unknown client, or one without a secret, costs the same bcrypt work
    // as a wrong secret, so that none of the three can be told apart.
    const hash = client?.secretHash ?? await decoy()
    let counted = false
    const check: SecretCheck = await secrets.check(clientSecret, hash, {
      clientId,
      lane: addressKey(request.ip),
      isGone: gone(request),
      beforeCompare: async () => {
        await countAttempt(request, clientId)
        counted = true
      }
    })
    if (check.matches === null) request.log.warn({ clientId }, 'stored client secret hash is not a bcrypt hash')
    if (client === undefined || client.secretHash === null || check.matches !== true) {
      await secrets.padFailure(check)
      throw rejected(request, credentials, client === undefined ? 'unknown client' : client.secretHash === null ? 'the client has no secret' : 'wrong secret')
    }
    if (counted) refundAttempt(request, clientId)
    if (check.compareMs !== undefined && check.cost < config.bcryptCost) upgradeHash(request, client, clientSecret)
    return enabled(client)
  }

  async function forget (clientId: string): Promise<void> {
    local.delete(clientId)
    if (shared !== undefined) await guard('redis', shared.del(cacheKey(clientId)))
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
    forget,
    authenticate,
    cacheStats
  })
}, { name: 'clients', dependencies: ['config', 'postgres', 'store', 'client-assertions', 'secrets'] })
