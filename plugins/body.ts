import fp from 'fastify-plugin'
import formBody from '@fastify/formbody'
import type { FastifyInstance, onRequestAsyncHookHandler, preParsingAsyncHookHandler, preValidationAsyncHookHandler } from 'fastify'
import type { TSchema } from 'typebox'
import { clientErrorResponses } from '../schemas/oauth.ts'
import { invalidRequest } from './errors.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** A preParsing hook refusing any request body that is not of this media type. */
    requireMediaType: (mediaType: string) => preParsingAsyncHookHandler
    /**
     * A preValidation hook for OAuth form bodies (RFC 6749 §3.2): a repeated
     * parameter is refused, and a parameter without a value is treated as
     * omitted.
     */
    normalizeFormParameters: preValidationAsyncHookHandler
    /** An onRequest hook marking every answer of the route Cache-Control: no-store, Pragma: no-cache. */
    noStore: onRequestAsyncHookHandler
  }
}

/** What the API documentation says of an operation (Fastify validates nothing of it). */
export interface OperationDocs {
  operationId: string
  summary: string
  description: string
}

/**
 * The route options of an OAuth form endpoint that authenticates a client
 * (token, revoke, introspect): the body limit, the form media type, no
 * caching, RFC 6749 §3.2 parameters, and the schemas with every error status.
 */
export function formEndpointOptions<Body extends TSchema, Ok extends TSchema> (fastify: FastifyInstance, body: Body, ok: Ok, docs: OperationDocs, headers?: TSchema) {
  return {
    bodyLimit: fastify.config.bodyLimit,
    preParsing: fastify.requireMediaType('application/x-www-form-urlencoded'),
    // RFC 6749 §5.1: no caching, errors included (they may concern credentials).
    onRequest: fastify.noStore,
    preValidation: fastify.normalizeFormParameters,
    schema: { ...docs, body, ...(headers === undefined ? {} : { headers }), response: { 200: ok, ...clientErrorResponses } }
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

  fastify.decorate('noStore', async (request, reply) => {
    reply.header('cache-control', 'no-store').header('pragma', 'no-cache')
  })

  fastify.decorate('normalizeFormParameters', async (request) => {
    const body = request.body
    if (typeof body !== 'object' || body === null) return
    const fields = body as Record<string, unknown>
    for (const [name, value] of Object.entries(fields)) {
      if (Array.isArray(value)) throw invalidRequest(`parameter ${name.slice(0, 64)} is repeated`)
      if (value === '') Reflect.deleteProperty(fields, name)
    }
  })
}, { name: 'body', dependencies: ['config', 'errors'] })
