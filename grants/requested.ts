import { invalidRequest, OAuthError } from '../plugins/errors.ts'
import type { TokenRequest } from '../plugins/tokens.ts'
import { parseScope } from '../schemas/scope.ts'
import type { TokenRequestBody } from '../schemas/oauth.ts'

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

/**
 * The scope and audience a token request asks for, and the DPoP key the
 * tokens are bound to (GrantContext.dpopKey). Parsed only once the client is
 * known: a caller with bad credentials learns that (401) before anything
 * about its scope or audience.
 */
export function requestedTokens (body: TokenRequestBody, dpopKey: string | undefined): TokenRequest {
  return { scope: parseScope(body.scope), audience: parseAudience(body), jkt: dpopKey }
}
