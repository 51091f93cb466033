// Cross-origin requests to the public endpoints: a page of another origin
// (the API docs on the admin listener, a browser-based tool) may call them.
// `Access-Control-Allow-Origin: *` without Allow-Credentials is safe here:
// these endpoints take credentials only in explicit headers or the body, never
// cookies, so a foreign page gets nothing a script could not send itself. The
// admin listener answers no cross-origin request at all.
import fp from 'fastify-plugin'
import fastifyCors, { type FastifyCorsOptions } from '@fastify/cors'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { AdminRequest } from './admin-listener.ts'

const PUBLIC_CORS: FastifyCorsOptions = {
  origin: '*',
  credentials: false,
  methods: ['GET', 'HEAD', 'POST'],
  // DPoP (RFC 9449 §4.1) for proof-of-possession clients.
  allowedHeaders: ['Authorization', 'Content-Type', 'DPoP'],
  // What a client reads of an answer: when to retry, the authentication
  // challenge, its rate limit, and the DPoP server nonce (RFC 9449 §8).
  exposedHeaders: ['Retry-After', 'WWW-Authenticate', 'X-RateLimit-Limit', 'X-RateLimit-Remaining', 'X-RateLimit-Reset', 'DPoP-Nonce'],
  maxAge: 600
}

const NO_CORS: FastifyCorsOptions = { origin: false }

/**
 * The CORS answer a request gets: none on the admin listener; a preflight
 * only when it is one (Origin and Access-Control-Request-Method) for a
 * public route and method that exist; any other OPTIONS request stays a 404.
 */
function corsFor (fastify: FastifyInstance, request: FastifyRequest): FastifyCorsOptions {
  if (request.raw instanceof AdminRequest) return NO_CORS
  if (request.method !== 'OPTIONS') return PUBLIC_CORS
  const method = request.headers['access-control-request-method']
  if (request.headers.origin === undefined || typeof method !== 'string') return NO_CORS
  const path = request.url.split('?', 1)[0] ?? ''
  const known = fastify.hasRoute({ url: path, method: method.toUpperCase() as 'GET' })
  return known ? PUBLIC_CORS : NO_CORS
}

export default fp(async (fastify) => {
  await fastify.register(fastifyCors, {
    delegator: (request, callback) => { callback(null, corsFor(fastify, request)) }
  })
  // @fastify/cors answers preflights in its own onRequest hook, before this
  // one. Any other OPTIONS request matched its catch-all route: it is not
  // found, at once, before its body is parsed, as it was without CORS.
  fastify.addHook('onRequest', async (request, reply) => {
    if (request.method === 'OPTIONS' && request.routeOptions.url === '*') return reply.callNotFound()
  })
}, { name: 'cors', dependencies: ['admin-listener'] })
