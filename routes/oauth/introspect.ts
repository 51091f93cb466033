import type { FastifyPluginAsync } from 'fastify'
import { readCredentials } from '../../plugins/clients.js'
import { errorResponses, introspectionResponse, revokeRequest } from '../../schemas/oauth.js'

interface IntrospectRequestBody {
  token: string
  token_type_hint?: string
  client_id?: string
  client_secret?: string
}

const introspectRoute: FastifyPluginAsync = async (fastify) => {
  const { clients, tokens, config } = fastify

  fastify.post<{ Body: IntrospectRequestBody }>('/oauth/introspect', {
    bodyLimit: config.bodyLimit,
    preParsing: fastify.requireMediaType('application/x-www-form-urlencoded'),
    // RFC 6749 §5.1: no caching, errors included (they may concern credentials).
    onRequest: fastify.noStore,
    preValidation: fastify.normalizeFormParameters,
    schema: {
      // Same parameters as revocation: token, token_type_hint, credentials.
      body: revokeRequest,
      response: { 200: introspectionResponse, 401: { $ref: 'oauthError#' }, ...errorResponses }
    }
  }, async (request, reply) => {
    const client = await clients.authenticate(request, readCredentials(request.headers.authorization, request.body))
    return await tokens.introspect(request.body.token, client.id)
  })
}

export default introspectRoute
