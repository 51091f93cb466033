import type { FastifyPluginAsync } from 'fastify'
import { RETRY_AFTER_SECONDS } from '../plugins/errors.js'

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

type State = { status: 'up' | 'unused' } | { status: 'down', error: string }

const healthRoute: FastifyPluginAsync = async (fastify) => {
  // The cause goes to the log; the body says only what kind of failure it is,
  // since it may be served beyond the operators' network.
  async function probe (name: string, check: Promise<void>): Promise<State> {
    try {
      await check
      return { status: 'up' }
    } catch (err) {
      const cause = ((err as Error).cause as Error | undefined)?.message ?? (err as Error).message
      fastify.log.warn({ dependency: name, cause }, 'health check failed')
      return { status: 'down', error: /did not answer/.test(cause) ? 'timeout' : 'unreachable' }
    }
  }

  fastify.get('/health', {
    logLevel: 'warn',
    schema: { response: { 200: healthResponse, 503: healthResponse } }
  }, async (request, reply) => {
    const [postgresql, redis] = await Promise.all([
      probe('postgresql', fastify.pingPostgres(CHECK_TIMEOUT_MS)),
      // Without REDIS_URL there is no Redis to ask: 'unused'.
      fastify.pingRedis === null ? { status: 'unused' } as const : probe('redis', fastify.pingRedis(CHECK_TIMEOUT_MS))
    ])
    const ok = postgresql.status === 'up' && redis.status !== 'down'
    reply.header('cache-control', 'no-store')
    if (!ok) reply.header('retry-after', String(RETRY_AFTER_SECONDS))
    return reply.code(ok ? 200 : 503).send({ status: ok ? 'ok' : 'unavailable', postgresql, redis })
  })
}

export default healthRoute
