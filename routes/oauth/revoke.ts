import type { FastifyPluginAsync } from 'fastify'
import { readCredentials } from '../../plugins/clients.js'
import { errorResponses, tokenParameterRequest, type TokenParameterBody } from '../../schemas/oauth.js'

const revokeRoute: FastifyPluginAsync = async (fastify) => {
  const { clients, tokens, config } = fastify

  fastify.post<{ Body: TokenParameterBody }>('/oauth/revoke', {
    bodyLimit: config.bodyLimit,
    preParsing: fastify.requireMediaType('application/x-www-form-urlencoded'),
    // RFC 6749 §5.1: no caching, errors included (they may concern credentials).
    onRequest: fastify.noStore,
    preValidation: fastify.normalizeFormParameters,
    schema: {
      body: tokenParameterRequest,
      response: { 200: { type: 'null' }, 401: { $ref: 'oauthError#' }, 429: { $ref: 'oauthError#' }, ...errorResponses }
    }
  }, async (request, reply) => {
    const client = await clients.authenticate(request, readCredentials(request.headers.authorization, request.body))
    // The hint only orders a search (RFC 7009 §2.1); the token's own shape
    // tells a JWT access token from an opaque refresh token, so it is not needed.
    await tokens.revoke(request.body.token, client.id)
    return reply.code(200).send()
  })
}

export default revokeRoute
