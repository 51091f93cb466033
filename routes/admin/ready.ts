import type { FastifyPluginAsync } from 'fastify'
import { RETRY_AFTER_SECONDS } from '../../plugins/errors.ts'

// Answered within a second even when a dependency hangs.
const CHECK_TIMEOUT_MS = 800

const dependencyState = { type: 'string', enum: ['up', 'timeout', 'unreachable', 'unused'] } as const

const readyResponse = {
  type: 'object',
  required: ['status'],
  properties: { status: { type: 'string', enum: ['ready'] } }
} as const

const unavailableResponse = {
  type: 'object',
  required: ['status', 'postgresql', 'redis', 'signing_key'],
  properties: {
    status: { type: 'string', enum: ['unavailable'] },
    postgresql: dependencyState,
    redis: dependencyState,
    signing_key: { type: 'string', enum: ['loaded', 'missing', 'stale'] }
  }
} as const

const drainingResponse = {
  type: 'object',
  required: ['status'],
  properties: { status: { type: 'string', enum: ['draining'] } },
  additionalProperties: false
} as const

// Readiness, not liveness: a 503 here asks the load balancer to stop sending
// traffic to this instance; it is no reason to restart it (that is /live's
// question). A draining instance answers 503 at once, without probing, so
// that load balancers take it out of the pool before it stops listening.
const readyRoute: FastifyPluginAsync = async (fastify) => {
  fastify.get('/ready', {
    // Probed every few seconds: only failures are worth a log line.
    logLevel: 'warn',
    schema: {
      operationId: 'getReadiness',
      summary: 'Readiness: whether this instance can serve token requests now',
      description: 'For a load balancer\'s or an orchestrator\'s readiness probe. 200 when PostgreSQL, Redis (when configured) and the ' +
        'signing key are usable; else 503 Service Unavailable (RFC 9110 §15.6.4) with what failed and Retry-After. ' +
        'A draining instance (shutting down) answers 503 `draining` at once, without Retry-After.',
      response: {
        200: { ...readyResponse, description: 'Ready for traffic', examples: [{ status: 'ready' }] },
        503: {
          anyOf: [unavailableResponse, drainingResponse],
          description: 'Not ready: a dependency or the signing key is missing, or the instance is draining',
          examples: [{ status: 'unavailable', postgresql: 'up', redis: 'timeout', signing_key: 'loaded' }]
        }
      }
    }
  }, async (request, reply) => {
    reply.header('cache-control', 'no-store')
    // No Retry-After: this instance is not coming back.
    if (fastify.draining) return reply.code(503).send({ status: 'draining' })
    const { postgresql, redis } = await fastify.probeDependencies(CHECK_TIMEOUT_MS, 'readiness check')
    // The keys plugin refuses to boot without a key; checked anyway so that
    // readiness never claims more than it verified.
    // Stored keys (KEY_STORE=database) that this instance has not read for
    // longer than the removal margin: it refuses to sign (signing-keys/ring.ts).
    const signingKey = !fastify.hasDecorator('keys') || fastify.keys.kid === ''
      ? 'missing'
      : fastify.keyRing?.signing() === false ? 'stale' : 'loaded'
    if (postgresql === 'up' && (redis === 'up' || redis === 'unused') && signingKey === 'loaded') {
      return reply.code(200).send({ status: 'ready' })
    }
    reply.header('retry-after', String(RETRY_AFTER_SECONDS))
    return reply.code(503).send({ status: 'unavailable', postgresql, redis, signing_key: signingKey })
  })
}

export default readyRoute
