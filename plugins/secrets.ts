// Client secret checks. bcrypt is slow on purpose (~260 ms per compare at
// cost 12), which would cap a token endpoint at a few requests per second per
// core and stall every other request meanwhile. So:
// - compares run on worker threads, so the event loop keeps serving;
// - the compares waiting for a worker are bounded (BCRYPT_QUEUE_LIMIT, four
//   per worker by default, about a second of work at cost 12 each): over
//   it, a check is refused at once (503) instead of waiting for seconds; the
//   queue is served round-robin by lane (the caller's address), and when it
//   is full the longest lane gives way, so that a burst from one address
//   cannot delay the others; a queued compare whose request has gone away is
//   dropped, not run;
// - a successful check is remembered in this process only, as an HMAC of the
//   stored hash and the presented secret under a key that is random per
//   process and never leaves it. A rotated secret has another stored hash, so
//   it is checked with bcrypt again; entries expire after SECRET_CACHE_TTL and
//   the cache holds at most MAX_CACHED_SECRETS of them. Failures are never
//   remembered: each wrong secret costs a full compare;
// - a failed check never answers sooner than a compare at the service's cost
//   (BCRYPT_COST) would, so that a client whose hash is cheaper cannot be told
//   from an unknown one (which is compared against a decoy at that cost).
import { createHmac, randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import fp from 'fastify-plugin'
import { SpanStatusCode, trace } from '@opentelemetry/api'
import { BACKGROUND_LANE, BcryptQueue, mainThreadExecutor, workerExecutor, type CompareTiming } from '../workers/bcrypt-queue.ts'

export const MAX_CACHED_SECRETS = 10_000

const tracer = trace.getTracer('session-service')

export interface SecretCheckOptions {
  /** compares are shared in flight only between requests for the same client */
  clientId: string
  /** the queue lane: the requester's address */
  lane: string
  /** runs (and may throw) only when a bcrypt compare is about to be queued */
  beforeCompare?: () => Promise<void>
  /** true once the request has gone away: its queued compare is then dropped */
  isGone?: () => boolean
}

export interface SecretCheck {
  /** whether the secret matches; null when the stored hash is not a bcrypt hash */
  matches: boolean | null
  /** how long the bcrypt work took; undefined when the secret was remembered */
  compareMs?: number
  /** the cost of the stored hash (0 when it is not a bcrypt hash) */
  cost: number
}

export interface Secrets {
  check: (secret: string, hash: string, options: SecretCheckOptions) => Promise<SecretCheck>
  /** Whether `secret` was verified against `hash` recently enough that check() needs no compare. */
  remembers: (secret: string, hash: string) => boolean
  /** Waits until a failed check has taken as long as a compare at BCRYPT_COST would. */
  padFailure: (check: SecretCheck) => Promise<void>
  /** A new hash of `secret` at BCRYPT_COST (on a worker), remembered as verified. */
  rehash: (secret: string) => Promise<string>
  /** bcrypt compares started, checks refused because the queue was full, compares dropped for a gone request, rehashes */
  stats: { compares: number, refused: number, dropped: number, rehashes: number }
  /** compares waiting for a worker now */
  queueLength: () => number
  /** Adds a listener told of each compare that ran: how long it waited in the queue, and how long it took. */
  onCompare: (listener: (timing: CompareTiming) => void) => void
}

export type { CompareTiming }

declare module 'fastify' {
  interface FastifyInstance {
    secrets: Secrets
  }
}

/** The cost of a bcrypt hash (`$2b$12$...`), or 0. */
export function bcryptCost (hash: string): number {
  const match = /^\$2[abxy]\$(\d{2})\$/.exec(hash)
  return match === null ? 0 : Number(match[1])
}

/**
 * The last few durations of one kind of work, and their median: one slow
 * outlier (a cold worker's first compare, a pause of the machine) moves it
 * no more than any other sample, and it is forgotten after `size` more.
 */
class RecentDurations {
  readonly #samples: number[] = []
  readonly #size: number

  constructor (size: number) {
    this.#size = size
  }

  add (ms: number): void {
    this.#samples.push(ms)
    if (this.#samples.length > this.#size) this.#samples.shift()
  }

  median (): number | undefined {
    if (this.#samples.length === 0) return undefined
    const sorted = [...this.#samples].sort((a, b) => a - b)
    return sorted[Math.floor(sorted.length / 2)]
  }
}

/**
 * Secrets verified recently, by an HMAC of secret and hash under a key of
 * this process (never the secret itself), each for `ttlMs` after its check.
 * Insertion order is expiry order (every entry lives ttlMs), so the oldest
 * entry is always the first.
 */
class RememberedSecrets {
  readonly #key = randomBytes(32)
  readonly #ttlMs: number
  /** the last tenth of an entry's life (at most 30 s) is its renewal window */
  readonly #renewWindowMs: number
  readonly #expiries = new Map<string, number>()

  constructor (ttlMs: number) {
    this.#ttlMs = ttlMs
    this.#renewWindowMs = Math.min(30_000, ttlMs / 10)
  }

  fingerprint (secret: string, hash: string): string {
    return createHmac('sha256', this.#key).update(hash).update('\0').update(secret).digest('base64url')
  }

  /** 'fresh' or 'renew' (remembered, close to expiry), else 'unknown'. */
  state (id: string, now: number): 'fresh' | 'renew' | 'unknown' {
    const expires = this.#expiries.get(id)
    if (expires === undefined) return 'unknown'
    if (expires <= now) {
      this.#expiries.delete(id)
      return 'unknown'
    }
    return expires - now < this.#renewWindowMs ? 'renew' : 'fresh'
  }

  add (id: string, now: number): void {
    if (this.#ttlMs === 0) return
    this.#expiries.delete(id)
    this.#expiries.set(id, now + this.#ttlMs)
    if (this.#expiries.size > MAX_CACHED_SECRETS) {
      const oldest = this.#expiries.keys().next().value
      if (oldest !== undefined) this.#expiries.delete(oldest)
    }
  }

  forget (id: string): void {
    this.#expiries.delete(id)
  }
}

/**
 * One compare through the queue, in one span for the wait and the compare
 * (no instrumentation covers bcrypt); a no-op unless tracing is on. Never the
 * secret or hash in it.
 */
async function tracedCompare (queue: BcryptQueue, secret: string, hash: string, lane: string, isGone?: () => boolean): Promise<SecretCheck & { compareMs: number }> {
  const cost = bcryptCost(hash)
  return await tracer.startActiveSpan('bcrypt compare', { attributes: { 'bcrypt.cost': cost } }, async (span) => {
    try {
      const result = await queue.submit({ op: 'compare', secret, hash }, lane, isGone)
      span.setAttribute('bcrypt.compare_ms', result.ms)
      return { matches: result.matches ?? null, compareMs: result.ms, cost }
    } catch (err) {
      span.setStatus({ code: SpanStatusCode.ERROR })
      throw err
    } finally {
      span.end()
    }
  })
}

/**
 * check() over remembered secrets: a remembered one costs no compare (and is
 * renewed in the background close to its expiry); concurrent requests with
 * one secret for one client share one compare.
 */
function rememberingCheck (
  remembered: RememberedSecrets,
  compare: (secret: string, hash: string, lane: string, isGone?: () => boolean) => Promise<SecretCheck>
): Secrets['check'] {
  const inFlight = new Map<string, Promise<SecretCheck>>()

  function renew (secret: string, hash: string, id: string, flight: string): void {
    const comparing = compare(secret, hash, BACKGROUND_LANE)
    inFlight.set(flight, comparing)
    comparing.then((result) => {
      // A secret that no longer matches (it cannot, for one hash) is forgotten.
      if (result.matches === true) remembered.add(id, Date.now())
      else remembered.forget(id)
    }, () => {}).finally(() => inFlight.delete(flight))
  }

  async function check (secret: string, hash: string, options: SecretCheckOptions): Promise<SecretCheck> {
    const now = Date.now()
    const id = remembered.fingerprint(secret, hash)
    // Shared in flight per client too: otherwise a secret sent to two unknown
    // ids (both compared against the decoy) would share one compare where a
    // known id would not, and the gap between the answers would tell them apart.
    const flight = `${options.clientId}\0${id}`
    const state = remembered.state(id, now)
    if (state !== 'unknown') {
      // Close to expiry, one compare in the background renews it, so that a
      // busy client never waits for bcrypt when its entry runs out.
      if (state === 'renew' && !inFlight.has(flight)) renew(secret, hash, id, flight)
      return { matches: true, cost: bcryptCost(hash) }
    }
    // Concurrent requests with the same secret for the same client share one
    // compare: when a remembered secret expires under load, every request
    // that arrives before the new compare ends would otherwise queue its own.
    const running = inFlight.get(flight)
    if (running !== undefined) return await running
    // Registered before anything is awaited, so that requests arriving
    // meanwhile join this compare instead of starting theirs.
    const comparing = (async () => {
      await options.beforeCompare?.()
      return await compare(secret, hash, options.lane, options.isGone)
    })()
    inFlight.set(flight, comparing)
    let result: SecretCheck
    try {
      result = await comparing
    } finally {
      inFlight.delete(flight)
    }
    if (result.matches === true) remembered.add(id, now)
    return result
  }

  return check
}

export default fp(async (fastify) => {
  const { config } = fastify
  const stats = { compares: 0, refused: 0, dropped: 0, rehashes: 0 }
  const executors = config.bcryptWorkers === 0
    ? [mainThreadExecutor()]
    : Array.from({ length: config.bcryptWorkers }, (_, index) => workerExecutor(index))
  const compareListeners: Array<(timing: CompareTiming) => void> = []
  const queue = new BcryptQueue(executors, config.bcryptQueueLimit, stats, (timing) => {
    for (const listener of compareListeners) listener(timing)
  })
  fastify.addHook('onClose', async () => { await Promise.all(executors.map(async (executor) => await executor.close())) })

  const remembered = new RememberedSecrets(config.secretCacheTtl * 1000)

  // The time of a compare at the service's cost, as measured here (the median
  // of the last fifteen); before the first such compare, estimated from the
  // one at hand.
  const serviceCompares = new RecentDurations(15)
  function observe (cost: number, ms: number): void {
    if (cost === config.bcryptCost) serviceCompares.add(ms)
  }

  async function compare (secret: string, hash: string, lane: string, isGone?: () => boolean): Promise<SecretCheck> {
    const result = await tracedCompare(queue, secret, hash, lane, isGone)
    observe(result.cost, result.compareMs)
    return result
  }

  const check = rememberingCheck(remembered, compare)

  async function padFailure (result: SecretCheck): Promise<void> {
    if (result.compareMs === undefined || result.cost === 0 || result.cost >= config.bcryptCost) return
    const expected = serviceCompares.median() ?? result.compareMs * 2 ** (config.bcryptCost - result.cost)
    const wait = expected - result.compareMs
    if (wait > 0) await sleep(wait)
  }

  async function rehash (secret: string): Promise<string> {
    stats.rehashes++
    const result = await queue.submit({ op: 'hash', secret, cost: config.bcryptCost }, BACKGROUND_LANE)
    const hash = result.hash as string
    remembered.add(remembered.fingerprint(secret, hash), Date.now())
    return hash
  }

  const remembers = (secret: string, hash: string): boolean => remembered.state(remembered.fingerprint(secret, hash), Date.now()) !== 'unknown'

  fastify.decorate('secrets', {
    check,
    remembers,
    padFailure,
    rehash,
    stats,
    queueLength: () => queue.length,
    onCompare: (listener) => { compareListeners.push(listener) }
  })
}, { name: 'secrets', dependencies: ['config'] })
