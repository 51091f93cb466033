import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { readCredentials } from '../../../client-auth/index.js'
import { formEndpointOptions } from '../../../plugins/body.js'
import { emptyResponse, tokenParameterRequest } from '../../../schemas/oauth.js'

const revokeRoute: FastifyPluginAsyncTypebox = async (fastify) => {
  const { tokens } = fastify

  fastify.post('/oauth/revoke', formEndpointOptions(fastify, tokenParameterRequest, emptyResponse), async (request, reply) => {
    const client = await fastify.authenticateClient(request, readCredentials(request.headers.authorization, request.body))
    // The hint only orders a search (RFC 7009 §2.1); the token's own shape
    // tells a JWT access token from an opaque refresh token, so it is not needed.
    await tokens.revoke(request.body.token, client.id)
    return reply.code(200).send()
  })
}

export default revokeRoute
