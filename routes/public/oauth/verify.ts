import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { comparableUrl } from '../../../dpop/proof.ts'
import type { DpopPresentation } from '../../../plugins/dpop.ts'
import { invalidRequest } from '../../../plugins/errors.ts'
import { errorResponses, verifyRequest, verifyResponse } from '../../../schemas/oauth.ts'

/** The DPoP proof given with the token, with its request's method and URL: all three, or none. */
function presentationOf (body: { dpop?: string, method?: string, url?: string }): DpopPresentation | undefined {
  const { dpop, method, url } = body
  if (dpop === undefined && method === undefined && url === undefined) return undefined
  if (dpop === undefined || method === undefined || url === undefined) throw invalidRequest('dpop, method and url go together: give all three or none')
  if (comparableUrl(url) === undefined) throw invalidRequest('url must be the absolute http(s) URL of the request the proof came with')
  return { proof: dpop, method, url }
}

const verifyRoute: FastifyPluginAsyncTypebox = async (fastify) => {
  const { tokens, config, dpop } = fastify

  fastify.post('/oauth/verify', {
    bodyLimit: config.bodyLimit,
    preParsing: fastify.requireMediaType('application/json'),
    schema: {
      operationId: 'verifyToken',
      summary: 'Check an access token for a service that cannot validate JWTs itself',
      description: 'Validates an access token as a resource server would by RFC 9068 §4: signature with a published key, `typ` at+jwt, ' +
        'issuer, audience (`audience`, or JWT_AUDIENCE), expiry (RFC 7519 §7.2), and that it is not revoked. ' +
        'An invalid token is a 200 with `valid: false` and the reason. No client authentication: the token is the only input.\n\n' +
        'DPoP (RFC 9449 §7): with `dpop` (the proof the resource server received), `method` and `url` (of that request), the proof is ' +
        'checked as RFC 9449 §4.3 says, its `ath` against the token and its key against the token\'s `cnf.jkt`, and it is recorded as used; ' +
        'any failure is `valid: false` with a `dpop_` reason, and so is a proof sent with a token that is not DPoP-bound. ' +
        'Without a proof, a bound token is reported valid with its `cnf` claim: the caller must then refuse it as a bearer token.',
      body: verifyRequest,
      response: { 200: verifyResponse, ...errorResponses }
    }
  }, async (request) => {
    const presentation = presentationOf(request.body)
    const result = await tokens.verify(request.body.token, request.body.audience)
    if (!result.valid) return { valid: false, error: result.error }
    if (presentation !== undefined) {
      const rejection = await dpop.checkPresentation(presentation, request.body.token, result.claims)
      if (rejection !== undefined) return { valid: false, error: rejection }
    }
    return { valid: true, claims: result.claims }
  })
}

export default verifyRoute
