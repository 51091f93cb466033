import type { FastifyPluginAsync } from 'fastify'
import { errorResponses, jwks } from '../../../schemas/oauth.js'

const jwksRoute: FastifyPluginAsync = async (fastify) => {
  const { keys, config } = fastify
  const cacheControl = `public, max-age=${config.jwksMaxAge}`

  // keys.jwksBody is serialized once, when the keys are loaded; a string
  // with a JSON content type is sent as it is.
  fastify.get('/.well-known/jwks.json', { schema: { response: { 200: jwks, ...errorResponses } } }, async (request, reply) => {
    return reply
      .header('cache-control', cacheControl)
      .type('application/json; charset=utf-8')
      .send(keys.jwksBody)
  })
}

export default jwksRoute
