import { randomBytes } from 'node:crypto'
import fp from 'fastify-plugin'
import bcrypt from 'bcryptjs'
import type { FastifyRequest } from 'fastify'
import { guard, invalidRequest, OAuthError } from './errors.js'

export interface Client {
  id: string
  secretHash: string
  /** token requests per minute; null: the service default */
  rateLimit: number | null
  name: string
  status: 'enabled' | 'disabled'
}

export type AuthMethod = 'client_secret_basic' | 'client_secret_post' | 'none' | 'unsupported_scheme'

/** What a request presented to authenticate, before any check. */
export interface PresentedCredentials {
  method: AuthMethod
  clientId?: string
  clientSecret?: string
}

/** bcrypt reads only the first 72 bytes; a longer secret would be truncated silently. */
export const MAX_SECRET_BYTES = 72
const MAX_CLIENT_ID_LENGTH = 255

// RFC 6749 appendix B: application/x-www-form-urlencoded, '+' is a space.
function formDecode (value: string): string {
  return decodeURIComponent(value.replace(/\+/g, ' '))
}

/**
 * Reads the client credentials of a request: HTTP Basic (RFC 6749 §2.3.1: id
 * and secret each form-urlencoded, joined by ':', base64) or client_id and
 * client_secret in the form body. Ambiguous or malformed input is refused.
 */
export function readCredentials (authorization: string | undefined, body: { client_id?: string, client_secret?: string }): PresentedCredentials {
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

interface ClientRow {
  client_id: string
  client_secret_hash: string
  rate_limit: number | null
  name: string
  status: 'enabled' | 'disabled'
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
}

declare module 'fastify' {
  interface FastifyInstance {
    clients: Clients
  }
}

export default fp(async (fastify) => {
  const { config, pg, redis } = fastify
  const realm = config.issuer.replace(/["\\]/g, '')
  // Compared against when the client is unknown, so that an unknown id costs
  // the same bcrypt work as a wrong secret and the two cannot be told apart.
  const decoyHash = await bcrypt.hash(randomBytes(18).toString('base64'), 10)

  const cacheKey = (clientId: string): string => `client:${clientId}`

  async function find (clientId: string): Promise<Client | undefined> {
    if (clientId.length === 0 || clientId.length > MAX_CLIENT_ID_LENGTH) return undefined
    const cached = await guard('redis', redis.get(cacheKey(clientId)))
    if (cached !== null) return JSON.parse(cached) as Client
    const { rows } = await guard('postgresql', pg.query<ClientRow>(
      'SELECT client_id, client_secret_hash, rate_limit, name, status FROM clients WHERE client_id = $1',
      [clientId]
    ))
    const row = rows[0]
    if (row === undefined) return undefined
    const client: Client = {
      id: row.client_id,
      secretHash: row.client_secret_hash,
      rateLimit: row.rate_limit,
      name: row.name,
      status: row.status
    }
    await guard('redis', redis.set(cacheKey(clientId), JSON.stringify(client), 'EX', config.clientCacheTtl))
    return client
  }

  function rejected (request: FastifyRequest, credentials: PresentedCredentials, reason: string): OAuthError {
    request.log.info({ clientId: credentials.clientId, method: credentials.method, reason }, 'client authentication failed')
    const headers: Record<string, string> = { 'www-authenticate': `Basic realm="${realm}"` }
    return new OAuthError(401, 'invalid_client', 'client authentication failed', headers)
  }

  async function authenticate (request: FastifyRequest, credentials: PresentedCredentials): Promise<Client> {
    const { clientId, clientSecret } = credentials
    if (clientId === undefined || clientSecret === undefined) throw rejected(request, credentials, 'no credentials')
    if (Buffer.byteLength(clientSecret, 'utf8') > MAX_SECRET_BYTES) throw rejected(request, credentials, 'secret longer than 72 bytes')
    const client = await find(clientId)
    const hash = client?.secretHash ?? decoyHash
    let matches = false
    try {
      matches = await bcrypt.compare(clientSecret, hash)
    } catch {
      request.log.warn({ clientId }, 'stored client secret hash is not a bcrypt hash')
    }
    if (client === undefined) throw rejected(request, credentials, 'unknown client')
    if (!matches) throw rejected(request, credentials, 'wrong secret')
    if (client.status !== 'enabled') throw new OAuthError(400, 'unauthorized_client', 'the client is disabled')
    return client
  }

  fastify.decorate('clients', {
    find,
    forget: async (clientId: string) => { await guard('redis', redis.del(cacheKey(clientId))) },
    authenticate
  })
}, { name: 'clients', dependencies: ['config', 'postgres', 'redis'] })
