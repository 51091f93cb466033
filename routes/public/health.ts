import type { FastifyPluginAsync } from 'fastify'
import { RETRY_AFTER_SECONDS } from '../../plugins/errors.ts'
import type { DependencyState } from '../../plugins/dependency-probe.ts'

// Answered within a second even when a dependency hangs.
const CHECK_TIMEOUT_MS = 800

const state = {
  type: 'object',
  required: ['status'],
  properties: { status: { type: 'string', enum: ['up', 'down', 'unused'] }, error: { type: 'string' } }
} as const

const healthResponse = {
  type: 'object',
  required: ['status', 'postgresql', 'redis'],
  properties: { status: { type: 'string', enum: ['ok', 'unavailable'] }, postgresql: state, redis: state }
} as const

const HEALTHY = { status: 'ok', postgresql: { status: 'up' }, redis: { status: 'up' } }
const UNHEALTHY = { status: 'unavailable', postgresql: { status: 'up' }, redis: { status: 'down', error: 'timeout' } }

type HealthState = { status: 'up' | 'unused' } | { status: 'down', error: 'timeout' | 'unreachable' }

// The body says only what kind of failure it is, since it may be served
// beyond the operators' network; the cause is in the log.
function healthState (state: DependencyState): HealthState {
  return state === 'up' || state === 'unused' ? { status: state } : { status: 'down', error: state }
}

const healthRoute: FastifyPluginAsync = async (fastify) => {
  fastify.get('/health', {
    logLevel: 'warn',
    schema: {
      operationId: 'getHealth',
      summary: 'Whether this instance and its PostgreSQL and Redis answer',
      description: 'A health check for load balancers that can reach only the public port: 200 when PostgreSQL answers and Redis ' +
        '(when configured) too, else 503 Service Unavailable with Retry-After (RFC 9110 §15.6.4, §10.2.3). ' +
        'The body names only the kind of failure; the cause is in the log. Operators\' probes are /ready and /live on the admin listener.',
      response: {
        200: { ...healthResponse, description: 'Healthy: PostgreSQL is up, Redis up or not used', examples: [HEALTHY] },
        503: { ...healthResponse, description: 'Unhealthy: a dependency is down; Retry-After says when to ask again', examples: [UNHEALTHY] }
      }
    }
  }, async (request, reply) => {
    const states = await fastify.probeDependencies(CHECK_TIMEOUT_MS, 'health check')
    const postgresql = healthState(states.postgresql)
    const redis = healthState(states.redis)
    const ok = postgresql.status === 'up' && redis.status !== 'down'
    reply.header('cache-control', 'no-store')
    if (!ok) reply.header('retry-after', String(RETRY_AFTER_SECONDS))
    return reply.code(ok ? 200 : 503).send({ status: ok ? 'ok' : 'unavailable', postgresql, redis })
  })
}

export default healthRoute
