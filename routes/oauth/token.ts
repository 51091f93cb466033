import type { FastifyPluginAsync } from 'fastify'
import { readCredentials, type Client, type CredentialParameters } from '../../plugins/clients.js'
import { invalidGrant, invalidRequest, OAuthError } from '../../plugins/errors.js'
import type { TokenRequest } from '../../plugins/tokens.js'
import { errorResponses, tokenRequest, tokenResponse } from '../../schemas/oauth.js'

interface TokenRequestBody extends CredentialParameters {
  grant_type: string
  refresh_token?: string
  scope?: string
  audience?: string
  resource?: string
}

const GRANT_TYPES = new Set(['client_credentials', 'refresh_token'])

// RFC 6749 §3.3: scope = scope-token *( SP scope-token ).
const SCOPE_TOKEN = /^[\x21\x23-\x5B\x5D-\x7E]+$/

function parseScope (scope: string | undefined): string[] | undefined {
  if (scope === undefined) return undefined
  const scopes = scope.split(' ').filter((value) => value !== '')
  const bad = scopes.find((value) => !SCOPE_TOKEN.test(value))
  if (bad !== undefined) throw new OAuthError(400, 'invalid_scope', 'scope must be space-delimited scope tokens (RFC 6749 §3.3)')
  return scopes.length === 0 ? undefined : [...new Set(scopes)]
}

// `audience` (as many client libraries send it) or `resource` (RFC 8707, an
// absolute URI without fragment); both at once must agree.
function parseAudience (body: TokenRequestBody): string | undefined {
  if (body.resource !== undefined) {
    let url: URL | undefined
    try {
      url = new URL(body.resource)
    } catch {}
    if (url === undefined || url.hash !== '') throw new OAuthError(400, 'invalid_target', 'resource must be an absolute URI without a fragment (RFC 8707)')
    if (body.audience !== undefined && body.audience !== body.resource) throw invalidRequest('audience and resource name different targets')
    return body.resource
  }
  return body.audience
}

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
    // Parsed only once the client is known: a caller with bad credentials
    // learns that (401) before anything about its scope or audience.
    const requested = (): TokenRequest => ({ scope: parseScope(body.scope), audience: parseAudience(body) })

    if (body.grant_type === 'client_credentials') {
      const client = await clients.authenticate(request, credentials)
      await fastify.limitTokenRequests(request, reply, client)
      return await tokens.issueForClient(client, requested())
    }

    const refreshToken = body.refresh_token
    if (refreshToken === undefined) throw invalidRequest('refresh_token is required')
    let client: Client | undefined
    if (credentials.method !== 'none' || config.refreshTokenClientAuth === 'required') {
      client = await clients.authenticate(request, credentials)
    } else {
      // REFRESH_TOKEN_CLIENT_AUTH=optional and no secret presented: the token
      // itself names the client, whose limit and status still apply.
      const ownerId = await tokens.refreshTokenOwner(refreshToken)
      const owner = ownerId === undefined ? undefined : await clients.find(ownerId)
      if (owner === undefined || (credentials.clientId !== undefined && credentials.clientId !== owner.id)) {
        throw invalidGrant('the refresh token is invalid, expired, revoked or already used')
      }
      if (owner.status !== 'enabled') throw new OAuthError(400, 'unauthorized_client', 'the client is disabled')
      client = owner
    }
    await fastify.limitTokenRequests(request, reply, client)
    return await tokens.refresh(refreshToken, client, requested())
  })
}

export default tokenRoute
