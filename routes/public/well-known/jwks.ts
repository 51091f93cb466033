import type { FastifyPluginAsync } from 'fastify'
import { errorResponses, jwks } from '../../../schemas/oauth.ts'

const jwksRoute: FastifyPluginAsync = async (fastify) => {
  const { keys, config } = fastify
  const cacheControl = `public, max-age=${config.jwksMaxAge}`

  // keys.jwksBody is serialized once, when the keys are loaded; a string
  // with a JSON content type is sent as it is.
  fastify.get('/.well-known/jwks.json', {
    schema: {
      operationId: 'getJwks',
      summary: 'The public keys that verify access tokens',
      description: 'A JWK Set (RFC 7517 §5) of the active signing key and of the keys still published during a rotation, ' +
        'each with `kid` its RFC 7638 thumbprint. Published as `jwks_uri` in the metadata (RFC 8414 §2); cacheable for JWKS_MAX_AGE.',
      response: { 200: jwks, ...errorResponses }
    }
  }, async (request, reply) => {
    return reply
      .header('cache-control', cacheControl)
      .type('application/json; charset=utf-8')
      .send(keys.jwksBody)
  })
}

export default jwksRoute
