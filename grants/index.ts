import { readCredentials, requireEnabled } from '../client-auth/index.ts'
import type { Client } from '../storage/clients.ts'
import { OAuthError } from '../plugins/errors.ts'
import type { TokenResponse } from '../plugins/tokens.ts'
import { clientCredentials } from './client-credentials.ts'
import type { Grant, GrantContext } from './grant.ts'
import { refreshToken } from './refresh-token.ts'
import { tokenExchange } from './token-exchange.ts'

export type { Grant, GrantContext } from './grant.ts'

/** Every grant the service supports, by grant_type. A new grant is one module and one line here. */
export const GRANTS: ReadonlyMap<string, Grant> = new Map([clientCredentials, refreshToken, tokenExchange].map((grant) => [grant.type, grant]))

/** The supported grant_type values, in registry order (discovery, metrics). */
export const GRANT_TYPES: readonly string[] = [...GRANTS.keys()]

/** RFC 6749 §5.2 unauthorized_client unless the client is registered for the grant. */
function requireGrantAllowed (client: Client, grantType: string): void {
  if (!client.grantTypes.includes(grantType)) {
    throw new OAuthError(400, 'unauthorized_client', `the client may not use the grant type ${grantType}`)
  }
}

/**
 * POST /oauth/token: the grant named by grant_type, for a client that is
 * authenticated, enabled, registered for that grant and within its rate limit;
 * with a DPoP proof (RFC 9449), checked here for every grant, the tokens are
 * bound to its key.
 */
export async function grantTokens (context: Omit<GrantContext, 'credentials'>): Promise<TokenResponse> {
  const { request, body, reply, fastify } = context
  const grantType = body.grant_type
  const grant = GRANTS.get(grantType)
  if (grant === undefined) {
    throw new OAuthError(400, 'unsupported_grant_type', `grant_type ${grantType.slice(0, 40)} is not supported; use ${GRANT_TYPES.join(' or ')}`)
  }
  const credentials = readCredentials(request.headers.authorization, body)
  const client = requireEnabled(await grant.identifyClient({ ...context, credentials }))
  requireGrantAllowed(client, grant.type)
  await fastify.limitTokenRequests(request, reply, client)
  // After the rate limit: a proof is recorded as used, and only clients
  // within their limit may write such markers.
  const dpopKey = await fastify.dpop.proveTokenRequest(request, reply, client)
  return await grant.handle({ ...context, credentials, client, dpopKey })
}
