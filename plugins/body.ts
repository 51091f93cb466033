import fp from 'fastify-plugin'
import formBody from '@fastify/formbody'
import type { preParsingAsyncHookHandler, preValidationAsyncHookHandler } from 'fastify'
import { invalidRequest } from './errors.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** A preParsing hook refusing any request body that is not of this media type. */
    requireMediaType: (mediaType: string) => preParsingAsyncHookHandler
    /**
     * A preValidation hook refusing a form body that repeats a parameter
     * (RFC 6749 §3.2: parameters must not be included more than once).
     */
    refuseRepeatedParameters: preValidationAsyncHookHandler
  }
}

export default fp(async (fastify) => {
  await fastify.register(formBody, { bodyLimit: fastify.config.bodyLimit })

  fastify.decorate('requireMediaType', (mediaType: string): preParsingAsyncHookHandler => {
    return async (request) => {
      const type = (request.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase()
      if (type !== mediaType) throw invalidRequest(`the request body must be ${mediaType}`)
    }
  })

  fastify.decorate('refuseRepeatedParameters', async (request) => {
    const body = request.body
    if (typeof body !== 'object' || body === null) return
    for (const [name, value] of Object.entries(body)) {
      if (Array.isArray(value)) throw invalidRequest(`parameter ${name} is repeated`)
    }
  })
}, { name: 'body', dependencies: ['config', 'errors'] })
