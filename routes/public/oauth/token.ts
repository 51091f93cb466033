import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { grantTokens } from '../../../grants/index.js'
import { formEndpointOptions } from '../../../plugins/body.js'
import { tokenRequest, tokenResponse } from '../../../schemas/oauth.js'

// RFC 6749 §3.2: the grant named by grant_type (grants/index.ts) answers.
const tokenRoute: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.post('/oauth/token', formEndpointOptions(fastify, tokenRequest, tokenResponse), async (request, reply) => {
    return await grantTokens({ request, body: request.body, reply, fastify })
  })
}

export default tokenRoute
