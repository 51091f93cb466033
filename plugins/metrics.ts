import fp from 'fastify-plugin'
import fastifyMetricsModule from 'fastify-metrics'
import { Counter, Gauge, Registry } from 'prom-client'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { GRANT_TYPES } from '../grants/index.js'
import { ADMIN_ONLY } from './admin-listener.js'

/** Each ping of a scrape gives up after this long, so a scrape never hangs on a dead dependency. */
const SCRAPE_PING_TIMEOUT_MS = 500

/** The route label of requests that matched no route (one series, whatever the URL). */
const UNMATCHED_ROUTE = '__unknown__'

// Error codes are the service's own, but the body is only parsed, not
// trusted: anything unexpected is left out rather than becoming a label.
const ERROR_CODE = /^[a-z_]{1,64}$/

/** The `error` member of an OAuth error body as sent, or undefined for any other answer. */
function answeredErrorCode (reply: FastifyReply, payload: unknown): string | undefined {
  if (typeof payload !== 'string' || !String(reply.getHeader('content-type') ?? '').includes('json')) return undefined
  try {
    const error = (JSON.parse(payload) as { error?: unknown } | null)?.error
    return typeof error === 'string' && ERROR_CODE.test(error) ? error : undefined
  } catch {
    return undefined
  }
}

// A CommonJS package whose plugin is its `default` export.
const fastifyMetrics = fastifyMetricsModule.default

function routeLabel (request: FastifyRequest): string {
  return request.routeOptions.url ?? UNMATCHED_ROUTE
}

/** Counters of the answers as they go out: tokens issued by grant, OAuth errors by route and code. */
function countAnswers (fastify: FastifyInstance, registry: Registry): void {
  const tokensIssued = new Counter({
    name: 'session_service_tokens_issued_total',
    help: 'Token responses (200) of POST /oauth/token, by grant type',
    labelNames: ['grant_type'] as const,
    registers: [registry]
  })
  // Every grant's series exists from the start, so rate() sees the first token too.
  for (const grantType of GRANT_TYPES) tokensIssued.inc({ grant_type: grantType }, 0)

  const oauthErrors = new Counter({
    name: 'session_service_oauth_errors_total',
    help: 'Error answers (RFC 6749 section 5.2 body), by route pattern and error code',
    labelNames: ['route', 'error'] as const,
    registers: [registry]
  })

  // onSend sees the answer as it goes out, whichever handler produced it
  // (a route, the error handler, the not-found handler).
  fastify.addHook('onSend', async (request, reply, payload) => {
    const status = reply.statusCode
    if (status === 200 && request.method === 'POST' && request.routeOptions.url === '/oauth/token') {
      const grantType = (request.body as { grant_type?: unknown } | undefined)?.grant_type
      if (typeof grantType === 'string' && GRANT_TYPES.includes(grantType)) tokensIssued.inc({ grant_type: grantType })
    } else if (status >= 400) {
      const error = answeredErrorCode(reply, payload)
      if (error !== undefined) oauthErrors.inc({ route: routeLabel(request), error })
    }
    return payload
  })
}

/** How the client lookups since start were answered. */
function collectClientCache (cacheStats: FastifyInstance['clients']['cacheStats'], registry: Registry): void {
  // Cumulative counts, so a counter: rate() then survives restarts.
  new Counter({ // eslint-disable-line no-new
    name: 'session_service_client_cache_lookups_total',
    help: 'Client record lookups since start, by the level that answered: memory, shared (Redis) or miss (PostgreSQL)',
    labelNames: ['result'] as const,
    registers: [registry],
    collect () {
      this.reset()
      this.inc({ result: 'memory' }, cacheStats.memoryHits)
      this.inc({ result: 'shared' }, cacheStats.sharedHits)
      this.inc({ result: 'miss' }, cacheStats.misses)
    }
  })
  new Gauge({ // eslint-disable-line no-new
    name: 'session_service_client_cache_hit_ratio',
    help: 'Share of client lookups since start answered by a cache level (NaN before the first lookup)',
    registers: [registry],
    collect () {
      const hits = cacheStats.memoryHits + cacheStats.sharedHits
      const total = hits + cacheStats.misses
      this.set(total === 0 ? Number.NaN : hits / total)
    }
  })
}

/** What the service keeps count of itself (bcrypt work, the client cache, sealed records) and its dependencies, read at scrape time. */
function collectServiceState (fastify: FastifyInstance, registry: Registry): void {
  const secretStats = fastify.secrets.stats
  // A total the service keeps itself, read at scrape time.
  function countedSinceStart (name: string, help: string, read: () => number): void {
    new Counter({ // eslint-disable-line no-new
      name,
      help,
      registers: [registry],
      collect () {
        this.reset()
        this.inc(read())
      }
    })
  }
  countedSinceStart('session_service_bcrypt_compares_total',
    'bcrypt compares started since start (a remembered secret, or a compare shared by concurrent requests for one client, runs none)',
    () => secretStats.compares)
  countedSinceStart('session_service_bcrypt_refused_total',
    'Client authentications answered 503 at once because the bcrypt queue was full', () => secretStats.refused)
  countedSinceStart('session_service_bcrypt_dropped_total',
    'Queued bcrypt compares dropped, not run, because their request had gone away', () => secretStats.dropped)
  countedSinceStart('session_service_redis_records_rejected_total',
    'Records read from Redis that failed their integrity check (written by something other than this service) and were ignored',
    () => fastify.store.rejectedRecords())
  new Gauge({ // eslint-disable-line no-new
    name: 'session_service_bcrypt_queue_length',
    help: 'bcrypt compares waiting for a worker now (bounded by BCRYPT_QUEUE_LIMIT)',
    registers: [registry],
    collect () { this.set(fastify.secrets.queueLength()) }
  })
  collectClientCache(fastify.clients.cacheStats, registry)
  new Gauge({ // eslint-disable-line no-new
    name: 'session_service_dependency_up',
    help: `1 when the dependency answered a ping within ${SCRAPE_PING_TIMEOUT_MS} ms at scrape time, else 0`,
    labelNames: ['dependency'] as const,
    registers: [registry],
    async collect () {
      const states = await fastify.probeDependencies(SCRAPE_PING_TIMEOUT_MS, 'metrics dependency check')
      for (const [dependency, state] of Object.entries(states)) {
        // No series for a Redis that is not configured.
        if (state !== 'unused') this.set({ dependency }, state === 'up' ? 1 : 0)
      }
    }
  })
}

export default fp(async (fastify) => {
  // A registry of this instance, not prom-client's global one: several apps
  // in one process (the tests) would otherwise register the same names twice.
  const registry = new Registry()

  await fastify.register(fastifyMetrics, {
    // Served by the route below, which can hide itself from the API docs.
    endpoint: null,
    defaultMetrics: { enabled: true, register: registry },
    routeMetrics: {
      // Summaries cannot be aggregated across instances; histograms can.
      enabled: { histogram: true, summary: false },
      // Label by route pattern; requests matching no route are not timed, so
      // scanners cannot create series.
      registeredRoutesOnly: true,
      routeBlacklist: [/^\/docs(\/|$)/],
      overrides: {
        histogram: {
          registers: [registry],
          // From sub-millisecond verifications to bcrypt-bound token requests.
          buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]
        },
        // fastify-metrics builds the summary even when disabled; in no registry, it is never scraped.
        summary: { registers: [] }
      }
    }
  })

  countAnswers(fastify, registry)
  collectServiceState(fastify, registry)

  // Plain text for Prometheus; hidden from the API docs and from the latency
  // histogram, since it is not part of the API.
  fastify.get('/metrics', {
    constraints: ADMIN_ONLY,
    logLevel: 'warn',
    exposeHeadRoute: false,
    config: { disableMetrics: true },
    schema: { hide: true, response: { 200: { type: 'string', description: 'Prometheus text exposition format' } } }
  }, async (request, reply) => {
    const text = await registry.metrics()
    return reply.header('cache-control', 'no-store').type(registry.contentType).send(text)
  })
}, { name: 'metrics', dependencies: ['admin-listener', 'clients', 'secrets', 'store', 'dependency-probe'] })
