import fp from 'fastify-plugin'
import fastifyMetricsModule from 'fastify-metrics'
import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { GRANT_TYPES } from '../grants/index.ts'
import { answeredErrorCode } from './errors.ts'
import { ADMIN_ONLY } from './admin-listener.ts'
import { serviceVersion } from './openapi.ts'

/** Each ping of a scrape gives up after this long, so a scrape never hangs on a dead dependency. */
const SCRAPE_PING_TIMEOUT_MS = 500

/** The route label of requests that matched no route (one series, whatever the URL). */
const UNMATCHED_ROUTE = '__unknown__'

// A CommonJS package whose plugin is its `default` export.
const fastifyMetrics = fastifyMetricsModule.default

function routeLabel (request: FastifyRequest): string {
  return request.routeOptions.url ?? UNMATCHED_ROUTE
}

/** The client_id label of the clients beyond METRICS_CLIENT_LIMIT, counted together. */
export const OTHER_CLIENTS = 'other'

/**
 * The client_id label of a client's tokens: its id for the first `limit`
 * clients seen, OTHER_CLIENTS for the rest, so that the series stay bounded
 * however many clients there are.
 */
function clientLabeller (limit: number): (clientId: string) => string {
  const labelled = new Set<string>()
  return (clientId) => {
    if (labelled.has(clientId)) return clientId
    if (clientId === OTHER_CLIENTS || labelled.size >= limit) return OTHER_CLIENTS
    labelled.add(clientId)
    return clientId
  }
}

/** With METRICS_PER_CLIENT: tokens issued by client id; otherwise nothing. */
function countTokensPerClient (fastify: FastifyInstance, registry: Registry): ((request: FastifyRequest) => void) | undefined {
  const { config } = fastify
  if (!config.metricsPerClient) return undefined
  const issued = new Counter({
    name: 'session_service_client_tokens_issued_total',
    help: `Token responses (200) of POST /oauth/token, by client id: the first ${config.metricsClientLimit} clients (METRICS_CLIENT_LIMIT) each, the rest as "${OTHER_CLIENTS}"`,
    labelNames: ['client_id'] as const,
    registers: [registry]
  })
  const labelOf = clientLabeller(config.metricsClientLimit)
  return (request) => {
    // The client the grant authenticated and rate-limited: a registered id, never raw input.
    const clientId = request.limitedClient?.id
    if (clientId !== undefined) issued.inc({ client_id: labelOf(clientId) })
  }
}

/** Counters of the answers as they go out: tokens issued by grant (and client), OAuth errors by route and code. */
function countAnswers (fastify: FastifyInstance, registry: Registry): void {
  const tokensIssued = new Counter({
    name: 'session_service_tokens_issued_total',
    help: 'Token responses (200) of POST /oauth/token, by grant type',
    labelNames: ['grant_type'] as const,
    registers: [registry]
  })
  // Every grant's series exists from the start, so rate() sees the first token too.
  for (const grantType of GRANT_TYPES) tokensIssued.inc({ grant_type: grantType }, 0)
  const countForClient = countTokensPerClient(fastify, registry)

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
      countForClient?.(request)
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
    help: 'Share of client lookups since start answered by a cache level, from 0 to 1 (0 before the first lookup)',
    registers: [registry],
    collect () {
      const hits = cacheStats.memoryHits + cacheStats.sharedHits
      const total = hits + cacheStats.misses
      // Never NaN: a ratio of nothing would break sums and alerts over instances.
      this.set(total === 0 ? 0 : hits / total)
    }
  })
}

/** A counter of a total that the service keeps itself, read at scrape time. */
function countedSinceStart (registry: Registry, name: string, help: string, read: () => number): void {
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

/** The same, of totals by the values of one label. */
function countedSinceStartBy (registry: Registry, name: string, help: string, label: string, read: () => Record<string, number>): void {
  new Counter({ // eslint-disable-line no-new
    name,
    help,
    labelNames: [label],
    registers: [registry],
    collect () {
      this.reset()
      for (const [value, total] of Object.entries(read())) this.inc({ [label]: value }, total)
    }
  })
}

/** bcrypt work: compares, refusals, drops, the queue, and how long compares wait and take. */
function collectBcrypt (fastify: FastifyInstance, registry: Registry): void {
  const { secrets } = fastify
  const stats = secrets.stats
  countedSinceStart(registry, 'session_service_bcrypt_compares_total',
    'bcrypt compares started since start (a remembered secret, or a compare shared by concurrent requests for one client, runs none)',
    () => stats.compares)
  countedSinceStart(registry, 'session_service_bcrypt_refused_total',
    'Client authentications answered 503 at once because the bcrypt queue was full', () => stats.refused)
  countedSinceStart(registry, 'session_service_bcrypt_dropped_total',
    'Queued bcrypt compares dropped, not run, because their request had gone away', () => stats.dropped)
  new Gauge({ // eslint-disable-line no-new
    name: 'session_service_bcrypt_queue_length',
    help: 'bcrypt compares waiting for a worker now (bounded by BCRYPT_QUEUE_LIMIT)',
    registers: [registry],
    collect () { this.set(secrets.queueLength()) }
  })
  const waits = new Histogram({
    name: 'session_service_bcrypt_queue_wait_seconds',
    help: 'Time a bcrypt compare waited for a worker, from enqueue to start, in seconds (0 when a worker was idle)',
    // A few compares at cost 12 (~0.26 s each) deep, and beyond.
    buckets: [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry]
  })
  const durations = new Histogram({
    name: 'session_service_bcrypt_compare_duration_seconds',
    help: 'Time a bcrypt compare took on its worker, in seconds (grows with the hash cost: ~0.075 s at 10, ~0.26 s at 12)',
    buckets: [0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1, 2, 4],
    registers: [registry]
  })
  secrets.onCompare(({ waitSeconds, compareSeconds }) => {
    waits.observe(waitSeconds)
    durations.observe(compareSeconds)
  })
}

/** Calls to PostgreSQL and Redis: whether each answers at scrape time, and how the service's own calls fared. */
function collectDependencies (fastify: FastifyInstance, registry: Registry): void {
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
  const errors = new Counter({
    name: 'session_service_dependency_errors_total',
    help: 'Calls of the service to PostgreSQL or Redis that failed, by dependency and kind: timeout (ran out DEPENDENCY_TIMEOUT) or unreachable (any other failure)',
    labelNames: ['dependency', 'kind'] as const,
    registers: [registry]
  })
  const latency = new Histogram({
    name: 'session_service_dependency_duration_seconds',
    help: 'Duration of the calls of the service to PostgreSQL or Redis (store, client lookups, rate-limit counts; not the pings), failed ones included, in seconds',
    labelNames: ['dependency'] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [registry]
  })
  // Every series a configured dependency can have exists from the start.
  const dependencies = fastify.config.redisUrl === undefined ? ['postgresql'] : ['postgresql', 'redis']
  for (const dependency of dependencies) {
    for (const kind of ['timeout', 'unreachable']) errors.inc({ dependency, kind }, 0)
  }
  fastify.dependencyCalls.listen(({ dependency, seconds, failure }) => {
    latency.observe({ dependency }, seconds)
    if (failure !== undefined) errors.inc({ dependency, kind: failure })
  })
  countedSinceStart(registry, 'session_service_redis_records_rejected_total',
    'Records read from Redis that failed their integrity check (written by something other than this service) and were ignored',
    () => fastify.store.rejectedRecords())
  collectRevocationsInMemory(fastify, registry)
}

/** The copy of the revocations that answers checks without Redis (with Redis and REVOCATIONS_IN_MEMORY_MAX > 0). */
function collectRevocationsInMemory (fastify: FastifyInstance, registry: Registry): void {
  if (fastify.store.revocationsInMemory() === undefined) return
  new Gauge({ // eslint-disable-line no-new
    name: 'session_service_revocations_in_memory',
    help: 'Revocations in force that this instance holds in memory (bounded by REVOCATIONS_IN_MEMORY_MAX)',
    registers: [registry],
    collect () { this.set(fastify.store.revocationsInMemory()?.entries ?? 0) }
  })
  new Gauge({ // eslint-disable-line no-new
    name: 'session_service_revocations_in_memory_current',
    help: '1 when the revocations in memory answer checks; 0 when checks ask Redis (subscription lost, reloading, or more revocations than REVOCATIONS_IN_MEMORY_MAX)',
    registers: [registry],
    collect () { this.set(fastify.store.revocationsInMemory()?.current === true ? 1 : 0) }
  })
}

/** What the token endpoints refused or revoked, as the domain counts it. */
function collectTokenEvents (fastify: FastifyInstance, registry: Registry): void {
  const { stats } = fastify.tokens
  countedSinceStart(registry, 'session_service_refresh_token_reuses_total',
    'Refresh tokens presented again after they had been used (each revokes its session)', () => stats.refreshTokenReuses)
  countedSinceStartBy(registry, 'session_service_revocations_total',
    'Revocations by POST /oauth/revoke that took effect, by the kind of token revoked: access_token (denied until it expires) or refresh_token (its whole session)',
    'kind', () => stats.revocations)
  countedSinceStartBy(registry, 'session_service_requests_throttled_total',
    'Requests answered 429, by reason: auth_failures (repeated failed client authentications, AUTH_FAILURE_LIMIT*) or rate_limit (the client\'s token requests per minute)',
    'reason', () => ({ auth_failures: fastify.authThrottleStats.refused, rate_limit: fastify.tokenRequestLimitStats.refused }))
}

/** Constant series that say what runs: the build and the signing key. */
function describeInstance (fastify: FastifyInstance, registry: Registry, clock: () => number): void {
  const build = new Gauge({
    name: 'session_service_build_info',
    help: 'Always 1; its labels are the service version and the Node.js version',
    labelNames: ['version', 'node_version'] as const,
    registers: [registry]
  })
  build.set({ version: serviceVersion(), node_version: process.versions.node }, 1)
  const { keys } = fastify
  // Read at each scrape: stored keys rotate while the instance runs.
  new Gauge({ // eslint-disable-line no-new
    name: 'session_service_signing_key_info',
    help: 'Always 1; its labels are the key id (kid, RFC 7638 thumbprint) and algorithm of the key that signs new tokens',
    labelNames: ['kid', 'alg'] as const,
    registers: [registry],
    collect () {
      this.reset()
      this.set({ kid: keys.kid, alg: keys.algorithm }, 1)
    }
  })
  new Gauge({ // eslint-disable-line no-new
    name: 'session_service_signing_key_age_seconds',
    help: 'Age of each stored signing key (KEY_STORE=database) since it was made, by kid, algorithm and state (next, current, retired)',
    labelNames: ['kid', 'alg', 'state'] as const,
    registers: [registry],
    collect () {
      this.reset()
      const now = clock()
      for (const key of keys.inventory) {
        if (key.createdAt !== undefined) this.set({ kid: key.kid, alg: key.algorithm, state: key.state }, Math.max(0, (now - key.createdAt.getTime()) / 1000))
      }
    }
  })
}

export default fp<{ clock?: () => number }>(async (fastify, opts) => {
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
  collectBcrypt(fastify, registry)
  collectClientCache(fastify.clients.cacheStats, registry)
  collectDependencies(fastify, registry)
  collectTokenEvents(fastify, registry)
  describeInstance(fastify, registry, opts.clock ?? Date.now)

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
}, { name: 'metrics', dependencies: ['admin-listener', 'config', 'clients', 'secrets', 'store', 'dependency-probe', 'dependency-calls', 'tokens', 'keys', 'client-auth', 'rate-limit'] })
