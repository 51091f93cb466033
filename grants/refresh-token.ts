import { invalidGrant, invalidRequest } from '../plugins/errors.ts'
import { INVALID_REFRESH_TOKEN } from '../plugins/tokens.ts'
import type { Grant } from './grant.ts'
import { requestedTokens } from './requested.ts'

function refreshTokenOf (body: { refresh_token?: string }): string {
  if (body.refresh_token === undefined) throw invalidRequest('refresh_token is required')
  return body.refresh_token
}

/** RFC 6749 §6: a refresh token for new tokens in its session, single use. */
export const refreshToken: Grant = {
  type: 'refresh_token',
  parameters: ['refresh_token', 'scope', 'audience', 'resource'],

  async identifyClient ({ request, body, credentials, fastify }) {
    const token = refreshTokenOf(body)
    if (credentials.method !== 'none' || fastify.config.refreshTokenClientAuth === 'required') {
      return await fastify.authenticateClient(request, credentials)
    }
    // REFRESH_TOKEN_CLIENT_AUTH=optional and no secret presented: the token
    // itself names the client, whose limit and status still apply.
    const ownerId = await fastify.tokens.refreshTokenOwner(token)
    const owner = ownerId === undefined ? undefined : await fastify.clients.find(ownerId)
    if (owner === undefined || (credentials.clientId !== undefined && credentials.clientId !== owner.id)) {
      throw invalidGrant(INVALID_REFRESH_TOKEN)
    }
    return owner
  },

  async handle ({ body, client, dpopKey, fastify }) {
    return await fastify.tokens.refresh(refreshTokenOf(body), client, requestedTokens(body, dpopKey))
  }
}
