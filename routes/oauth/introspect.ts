import type { FastifyPluginAsync } from 'fastify'
import { readCredentials } from '../../plugins/clients.js'
import { errorResponses, introspectionResponse, tokenParameterRequest, type TokenParameterBody } from '../../schemas/oauth.js'

// RFC 7662. Only the client a token was issued to learns anything about it;
// for every other caller the token is simply not active.
const introspectRoute: FastifyPluginAsync = async (fastify) => {
  const { clients, tokens, config } = fastify

  fastify.post<{ Body: TokenParameterBody }>('/oauth/introspect', {
    bodyLimit: config.bodyLimit,
    preParsing: fastify.requireMediaType('application/x-www-form-urlencoded'),
    // RFC 6749 §5.1: no caching, errors included (they may concern credentials).
    onRequest: fastify.noStore,
    preValidation: fastify.normalizeFormParameters,
    schema: {
      body: tokenParameterRequest,
      response: { 200: introspectionResponse, 401: { $ref: 'oauthError#' }, 429: { $ref: 'oauthError#' }, ...errorResponses }
    }
  }, async (request) => {
    const client = await clients.authenticate(request, readCredentials(request.headers.authorization, request.body))
    return await tokens.introspect(request.body.token, client.id)
  })
}

export default introspectRoute
