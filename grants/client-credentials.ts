import type { Grant } from './grant.ts'
import { requestedTokens } from './requested.ts'

/** RFC 6749 §4.4: the client asks for tokens on its own behalf; a new session. */
export const clientCredentials: Grant = {
  type: 'client_credentials',
  parameters: ['scope', 'audience', 'resource'],

  async identifyClient ({ request, credentials, fastify }) {
    return await fastify.authenticateClient(request, credentials)
  },

  async handle ({ body, client, dpopKey, fastify }) {
    return await fastify.tokens.issueForClient(client, requestedTokens(body, dpopKey))
  }
}
