// Who may call the admin API: the bearer of an access token that this very
// service issued (signature, issuer, audience, expiry, deny-list: the checks
// of /oauth/verify), requested with ADMIN_SCOPE, by a client that is still
// enabled and still allowed that scope. Taking the scope away from a client,
// or disabling it, ends its administration at once, not at token expiry.
import fp from 'fastify-plugin'
import type { FastifyRequest } from 'fastify'
import { boundKey } from '../dpop/proof.ts'
import { OAuthError } from './errors.ts'

/** Whoever made an admin request: recorded with every change. */
export interface AdminActor {
  clientId: string
  /** the access token's id, to match a change with the token that made it */
  tokenId: string
}

declare module 'fastify' {
  interface FastifyInstance {
    /** onRequest hook of the admin API: sets request.adminActor, or answers 401 / 403. */
    authenticateAdmin: (request: FastifyRequest) => Promise<void>
  }
  interface FastifyRequest {
    adminActor?: AdminActor
  }
}

// RFC 6750 §2.1: the scheme (case-insensitive), one or more spaces, a b64token.
const BEARER = /^Bearer +([A-Za-z0-9\-._~+/]+=*)$/i
const REALM = 'session-service-admin'

/** 401 with the RFC 6750 §3 challenge; `error` is absent when no credentials came at all. */
function unauthorized (description: string, error?: 'invalid_request' | 'invalid_token'): OAuthError {
  const challenge = error === undefined ? `Bearer realm="${REALM}"` : `Bearer realm="${REALM}", error="${error}"`
  return new OAuthError(401, error ?? 'invalid_token', description, { 'www-authenticate': challenge, 'cache-control': 'no-store' })
}

export default fp(async (fastify) => {
  const { config, tokens, clients } = fastify
  const requiredScope = config.adminScope

  fastify.decorate('authenticateAdmin', async (request: FastifyRequest) => {
    const header = request.headers.authorization
    if (header === undefined || header === '') throw unauthorized('an admin access token is required (Authorization: Bearer)')
    const match = BEARER.exec(header)
    if (match?.[1] === undefined) throw unauthorized('the Authorization header is not a bearer token', 'invalid_request')
    const check = await tokens.verify(match[1])
    if (!check.valid) throw unauthorized('the access token is not valid', 'invalid_token')
    // RFC 9449 §7.2: a DPoP-bound token is worth nothing without its proof,
    // and this API takes bearer tokens only.
    if (boundKey(check.claims) !== undefined) throw unauthorized('a DPoP-bound token is not a bearer token; the admin API takes bearer tokens only', 'invalid_token')
    const { client_id: clientId, jti, scope } = check.claims
    if (typeof clientId !== 'string') throw unauthorized('the access token is not valid', 'invalid_token')
    const granted = typeof scope === 'string' ? scope.split(' ') : []
    const client = await clients.find(clientId)
    if (client === undefined || client.status !== 'enabled') throw unauthorized('the access token is not valid', 'invalid_token')
    if (!granted.includes(requiredScope) || !client.scopes.includes(requiredScope)) {
      throw new OAuthError(403, 'insufficient_scope', `the access token does not carry the scope ${requiredScope}`, {
        'www-authenticate': `Bearer realm="${REALM}", error="insufficient_scope", scope="${requiredScope}"`,
        'cache-control': 'no-store'
      })
    }
    request.adminActor = { clientId, tokenId: jti }
  })
}, { name: 'admin-auth', dependencies: ['config', 'tokens', 'clients'] })
