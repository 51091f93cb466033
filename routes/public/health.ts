import type { FastifyPluginAsync } from 'fastify'
import { RETRY_AFTER_SECONDS } from '../../plugins/errors.js'
import type { DependencyState } from '../../plugins/dependency-probe.js'

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

type HealthState = { status: 'up' | 'unused' } | { status: 'down', error: 'timeout' | 'unreachable' }

// The body says only what kind of failure it is, since it may be served
// beyond the operators' network; the cause is in the log.
function healthState (state: DependencyState): HealthState {
  return state === 'up' || state === 'unused' ? { status: state } : { status: 'down', error: state }
}

const healthRoute: FastifyPluginAsync = async (fastify) => {
  fastify.get('/health', {
    logLevel: 'warn',
    schema: { response: { 200: healthResponse, 503: healthResponse } }
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
