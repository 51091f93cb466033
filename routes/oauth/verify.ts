import type { FastifyPluginAsync } from 'fastify'
import { errorResponses, verifyRequest, verifyResponse } from '../../schemas/oauth.js'

const verifyRoute: FastifyPluginAsync = async (fastify) => {
  const { tokens, config } = fastify

  fastify.post<{ Body: { token: string, audience?: string } }>('/oauth/verify', {
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
