import fp from 'fastify-plugin'
import rateLimit from '@fastify/rate-limit'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { guard, OAuthError } from './errors.ts'

const WINDOW_MS = 60_000

interface LimitedClient {
  id: string
  rateLimit: number | null
}

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * Counts one token request against the client's per-minute limit (its own
     * rate_limit or RATE_LIMIT_DEFAULT), shared by every instance through
     * Redis. Sets the X-RateLimit-* headers; over the limit, throws a 429.
     */
    limitTokenRequests: (request: FastifyRequest, reply: FastifyReply, client: LimitedClient) => Promise<void>
    /** Token requests refused (429) by the per-client limit since start. */
    tokenRequestLimitStats: { refused: number }
  }
  interface FastifyRequest {
    limitedClient: LimitedClient | null
  }
}

export default fp(async (fastify) => {
  const { config } = fastify
  await fastify.register(rateLimit, {
    global: false,
    // Shared by every instance through Redis; in process without it.
    ...(config.redisUrl === undefined ? {} : { redis: fastify.redis }),
    nameSpace: 'rate-limit:',
    skipOnError: false
  })
  fastify.decorateRequest('limitedClient', null)
  const stats = { refused: 0 }
  fastify.decorate('tokenRequestLimitStats', stats)

  // Keyed by the client, not the address: the limit is the client's own
  // budget, whichever instance or address the requests come through.
  const countRequest = fastify.createRateLimit({
    keyGenerator: (request) => `token:${request.limitedClient?.id ?? ''}`,
    max: async (request) => request.limitedClient?.rateLimit ?? config.rateLimitDefault,
    timeWindow: WINDOW_MS
  })

  // Counted in Redis when it is configured: a failure there is Redis's, and
  // the call is one of Redis's in the metrics; in process it is neither.
  const guardCount = config.redisUrl === undefined ? guard : fastify.dependencyCalls.guard

  fastify.decorate('limitTokenRequests', async (request: FastifyRequest, reply: FastifyReply, client: LimitedClient) => {
    request.limitedClient = client
    const state = await guardCount('redis', countRequest(request))
    if (state.isAllowed) return // only for an allow-list, which is not configured
    reply.header('x-ratelimit-limit', state.max)
    reply.header('x-ratelimit-remaining', state.remaining)
    reply.header('x-ratelimit-reset', state.ttlInSeconds)
    if (state.isExceeded) {
      stats.refused++
      throw new OAuthError(429, 'rate_limit_exceeded', `more than ${state.max} token requests per minute; retry in ${state.ttlInSeconds} s`, {
        'retry-after': String(state.ttlInSeconds)
      })
    }
  })
}, { name: 'rate-limit', dependencies: ['config', 'redis', 'dependency-calls'] })
