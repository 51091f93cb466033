import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { errorResponses, verifyRequest, verifyResponse } from '../../../schemas/oauth.js'

const verifyRoute: FastifyPluginAsyncTypebox = async (fastify) => {
  const { tokens, config } = fastify

  fastify.post('/oauth/verify', {
    bodyLimit: config.bodyLimit,
    preParsing: fastify.requireMediaType('application/json'),
    schema: {
      body: verifyRequest,
      response: { 200: verifyResponse, ...errorResponses }
    }
  }, async (request) => {
    const result = await tokens.verify(request.body.token, request.body.audience)
    return result.valid ? { valid: true, claims: result.claims } : { valid: false, error: result.error }
  })
}

export default verifyRoute
