import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { errorResponses, verifyRequest, verifyResponse } from '../../../schemas/oauth.ts'

const verifyRoute: FastifyPluginAsyncTypebox = async (fastify) => {
  const { tokens, config } = fastify

  fastify.post('/oauth/verify', {
    bodyLimit: config.bodyLimit,
    preParsing: fastify.requireMediaType('application/json'),
    schema: {
      operationId: 'verifyToken',
      summary: 'Check an access token for a service that cannot validate JWTs itself',
      description: 'Validates an access token as a resource server would by RFC 9068 §4: signature with a published key, `typ` at+jwt, ' +
        'issuer, audience (`audience`, or JWT_AUDIENCE), expiry (RFC 7519 §7.2), and that it is not revoked. ' +
        'An invalid token is a 200 with `valid: false` and the reason. No client authentication: the token is the only input.',
      body: verifyRequest,
      response: { 200: verifyResponse, ...errorResponses }
    }
  }, async (request) => {
    const result = await tokens.verify(request.body.token, request.body.audience)
    return result.valid ? { valid: true, claims: result.claims } : { valid: false, error: result.error }
  })
}

export default verifyRoute
