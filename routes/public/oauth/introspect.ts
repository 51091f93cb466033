import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { readCredentials } from '../../../client-auth/index.ts'
import { formEndpointOptions } from '../../../plugins/body.ts'
import { introspectionResponse, tokenParameterRequest } from '../../../schemas/oauth.ts'

// RFC 7662. Only the client a token was issued to learns anything about it;
// for every other caller the token is simply not active.
const introspectRoute: FastifyPluginAsyncTypebox = async (fastify) => {
  const { tokens } = fastify

  fastify.post('/oauth/introspect', formEndpointOptions(fastify, tokenParameterRequest, introspectionResponse, {
    operationId: 'introspectToken',
    summary: 'Whether a token is active, and its claims',
    description: 'Token introspection of RFC 7662 §2.1, answered as RFC 7662 §2.2 says. Only the client a token was issued to learns its claims; ' +
      'for any other client, and for a token that is expired, revoked or not one of this service, the answer is `{"active": false}` and nothing more. ' +
      'The client authenticates as at the token endpoint.'
  }), async (request) => {
    const client = await fastify.authenticateClient(request, readCredentials(request.headers.authorization, request.body))
    return await tokens.introspect(request.body.token, client.id)
  })
}

export default introspectRoute
