import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { readCredentials } from '../../../client-auth/index.ts'
import { formEndpointOptions } from '../../../plugins/body.ts'
import { emptyResponse, tokenParameterRequest } from '../../../schemas/oauth.ts'

const revokeRoute: FastifyPluginAsyncTypebox = async (fastify) => {
  const { tokens } = fastify

  fastify.post('/oauth/revoke', formEndpointOptions(fastify, tokenParameterRequest, emptyResponse, {
    operationId: 'revokeToken',
    summary: 'Revoke an access token or a refresh token',
    description: 'Token revocation of RFC 7009 §2.1. Revoking a refresh token ends its session: every token refreshed from it stops working. ' +
      'The answer is 200 whether or not the token was known, valid or the caller\'s (RFC 7009 §2.2): nothing is learnt about a token of another client. ' +
      'The client authenticates as at the token endpoint.'
  }), async (request, reply) => {
    const client = await fastify.authenticateClient(request, readCredentials(request.headers.authorization, request.body))
    // The hint only orders a search (RFC 7009 §2.1); the token's own shape
    // tells a JWT access token from an opaque refresh token, so it is not needed.
    await tokens.revoke(request.body.token, client.id)
    return reply.code(200).send()
  })
}

export default revokeRoute
