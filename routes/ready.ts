import type { FastifyPluginAsync } from 'fastify'
import { RETRY_AFTER_SECONDS } from '../plugins/errors.js'

// Answered within a second even when a dependency hangs.
const CHECK_TIMEOUT_MS = 800

type DependencyState = 'up' | 'timeout' | 'unreachable' | 'unused'

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
    signing_key: { type: 'string', enum: ['loaded', 'missing'] }
  }
} as const

// Readiness, not liveness: a 503 here asks the load balancer to stop sending
// traffic to this instance; it is no reason to restart it (that is /health's
// question). While the server closes, Fastify itself answers 503
// (return503OnClosing), so draining instances leave the pool.
const readyRoute: FastifyPluginAsync = async (fastify) => {
  async function probe (name: string, check: Promise<void>): Promise<DependencyState> {
    try {
      await check
      return 'up'
    } catch (err) {
      const cause = ((err as Error).cause as Error | undefined)?.message ?? (err as Error).message
      fastify.log.warn({ dependency: name, cause }, 'readiness check failed')
      return /did not answer/.test(cause) ? 'timeout' : 'unreachable'
    }
  }

  fastify.get('/ready', {
    // Probed every few seconds: only failures are worth a log line.
    logLevel: 'warn',
    schema: {
      summary: 'Readiness: whether this instance can serve token requests now',
      response: { 200: readyResponse, 503: unavailableResponse }
    }
  }, async (request, reply) => {
    const [postgresql, redis] = await Promise.all([
      probe('postgresql', fastify.pingPostgres(CHECK_TIMEOUT_MS)),
      // Without REDIS_URL there is no Redis to wait for.
      fastify.pingRedis === null ? 'unused' as const : probe('redis', fastify.pingRedis(CHECK_TIMEOUT_MS))
    ])
    // The keys plugin refuses to boot without a key; checked anyway so that
    // readiness never claims more than it verified.
    const signingKey = fastify.hasDecorator('keys') && fastify.keys.kid !== '' ? 'loaded' : 'missing'
    reply.header('cache-control', 'no-store')
    if (postgresql === 'up' && (redis === 'up' || redis === 'unused') && signingKey === 'loaded') {
      return reply.code(200).send({ status: 'ready' })
    }
    reply.header('retry-after', String(RETRY_AFTER_SECONDS))
    return reply.code(503).send({ status: 'unavailable', postgresql, redis, signing_key: signingKey })
  })
}

export default readyRoute
