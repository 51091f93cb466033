import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { readCredentials } from '../../../client-auth/index.js'
import { formEndpointOptions } from '../../../plugins/body.js'
import { introspectionResponse, tokenParameterRequest } from '../../../schemas/oauth.js'

// RFC 7662. Only the client a token was issued to learns anything about it;
// for every other caller the token is simply not active.
const introspectRoute: FastifyPluginAsyncTypebox = async (fastify) => {
  const { tokens } = fastify

  fastify.post('/oauth/introspect', formEndpointOptions(fastify, tokenParameterRequest, introspectionResponse), async (request) => {
    const client = await fastify.authenticateClient(request, readCredentials(request.headers.authorization, request.body))
    return await tokens.introspect(request.body.token, client.id)
  })
}

export default introspectRoute
