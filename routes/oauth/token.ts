import type { FastifyPluginAsync } from 'fastify'
import { readCredentials, type Client } from '../../plugins/clients.js'
import { invalidRequest, OAuthError } from '../../plugins/errors.js'
import { errorResponses, tokenRequest, tokenResponse } from '../../schemas/oauth.js'

interface TokenRequestBody {
  grant_type: string
  client_id?: string
  client_secret?: string
  refresh_token?: string
}

const GRANT_TYPES = new Set(['client_credentials', 'refresh_token'])

const tokenRoute: FastifyPluginAsync = async (fastify) => {
  const { clients, tokens, config } = fastify

  fastify.post<{ Body: TokenRequestBody }>('/oauth/token', {
    bodyLimit: config.bodyLimit,
    preParsing: fastify.requireMediaType('application/x-www-form-urlencoded'),
    // RFC 6749 §5.1: no caching, errors included (they may concern credentials).
    onRequest: fastify.noStore,
    preValidation: fastify.normalizeFormParameters,
    schema: {
      body: tokenRequest,
      response: { 200: tokenResponse, 401: { $ref: 'oauthError#' }, 429: { $ref: 'oauthError#' }, ...errorResponses }
    }
  }, async (request, reply) => {
    const body = request.body
    if (!GRANT_TYPES.has(body.grant_type)) {
      throw new OAuthError(400, 'unsupported_grant_type', `grant_type ${body.grant_type.slice(0, 40)} is not supported; use client_credentials or refresh_token`)
    }
    const credentials = readCredentials(request.headers.authorization, body)

    if (body.grant_type === 'client_credentials') {
      const client = await clients.authenticate(request, credentials)
      await fastify.limitTokenRequests(request, reply, client)
      return await tokens.issueForClient(client.id)
    }

    const refreshToken = body.refresh_token
    if (refreshToken === undefined || refreshToken === '') throw invalidRequest('refresh_token is required')
    let client: Client | undefined
    if (credentials.method !== 'none' || config.refreshTokenClientAuth === 'required') {
      client = await clients.authenticate(request, credentials)
      await fastify.limitTokenRequests(request, reply, client)
    } else {
      // REFRESH_TOKEN_CLIENT_AUTH=optional and no secret presented: the token
      // itself names the client, whose limit and status still apply.
      const ownerId = await tokens.refreshTokenOwner(refreshToken)
      const owner = ownerId === undefined ? undefined : await clients.find(ownerId)
      if (owner === undefined || (credentials.clientId !== undefined && credentials.clientId !== owner.id)) {
        throw new OAuthError(400, 'invalid_grant', 'the refresh token is invalid, expired, revoked or already used')
      }
      if (owner.status !== 'enabled') throw new OAuthError(400, 'unauthorized_client', 'the client is disabled')
      client = owner
      await fastify.limitTokenRequests(request, reply, owner)
    }
    const { response } = await tokens.refresh(refreshToken, client.id)
    return response
  })
}

export default tokenRoute
