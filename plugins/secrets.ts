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
import { Worker } from 'node:worker_threads'
import fp from 'fastify-plugin'
import { SpanStatusCode, trace } from '@opentelemetry/api'
import { runBcryptJob, type BcryptJob, type BcryptResult } from '../workers/bcrypt.js'
import { OAuthError } from './errors.js'

export const MAX_CACHED_SECRETS = 10_000

const tracer = trace.getTracer('session-service')

/** The lane of background work (renewals, rehashes): it never evicts a request. */
const BACKGROUND_LANE = '\0background'

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

/** One compare: from enqueue to start on a worker, and the compare itself, seconds. */
export interface CompareTiming {
  waitSeconds: number
  compareSeconds: number
}

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

const busy = (): OAuthError => new OAuthError(503, 'temporarily_unavailable', 'too many client authentications are waiting; retry shortly', { 'retry-after': '1' })

type JobSpec = BcryptJob extends infer J ? J extends BcryptJob ? Omit<J, 'id'> : never : never

interface Executor {
  busy: boolean
  run: (job: JobSpec) => Promise<BcryptResult>
  close: () => Promise<void>
}

function mainThreadExecutor (): Executor {
  let nextId = 0
  return {
    busy: false,
    run: async (job) => await runBcryptJob({ ...job, id: nextId++ } as BcryptJob),
    close: async () => {}
  }
}

// Worker threads are shared by every app in the process (the tests build
// many; starting a thread costs far more than a compare), started at their
// first job and unref'd, so that an idle one never keeps the process alive.
// Each app's executor uses one of them as if it were its own: in a service
// process there is one app, so one job at a time runs on each thread.
interface SharedWorker {
  worker: Worker
  pending: Map<number, { resolve: (result: BcryptResult) => void, reject: (err: Error) => void }>
}
const sharedWorkers: Array<SharedWorker | undefined> = []
let nextJobId = 0

function sharedWorker (index: number): SharedWorker {
  const existing = sharedWorkers[index]
  if (existing !== undefined) return existing
  // The worker module sits beside this one's directory, with this module's
  // extension (.ts under the test loader, .js when built).
  const extension = import.meta.url.endsWith('.ts') ? '.ts' : '.js'
  const worker = new Worker(new URL(`../workers/bcrypt${extension}`, import.meta.url))
  const entry: SharedWorker = { worker, pending: new Map() }
  worker.on('message', (result: BcryptResult) => {
    const waiter = entry.pending.get(result.id)
    entry.pending.delete(result.id)
    waiter?.resolve(result)
  })
  const fail = (err: Error): void => {
    // A thread that died is replaced at the next job; its jobs fail.
    if (sharedWorkers[index] === entry) sharedWorkers[index] = undefined
    for (const waiter of entry.pending.values()) waiter.reject(err)
    entry.pending.clear()
  }
  worker.on('error', fail)
  worker.on('exit', () => fail(new Error('the bcrypt worker stopped')))
  // After the listeners: adding a 'message' listener refs the thread again.
  worker.unref()
  sharedWorkers[index] = entry
  return entry
}

function workerExecutor (index: number): Executor {
  return {
    busy: false,
    run: async (job) => {
      const { worker, pending } = sharedWorker(index)
      const id = nextJobId++
      return await new Promise<BcryptResult>((resolve, reject) => {
        pending.set(id, { resolve, reject })
        worker.postMessage({ ...job, id })
      })
    },
    close: async () => {}
  }
}

interface Queued {
  job: JobSpec
  lane: string
  isGone: (() => boolean) | undefined
  resolve: (result: BcryptResult) => void
  reject: (err: Error) => void
  /** performance.now() when it was submitted */
  submittedAt: number
}

/** bcrypt work for the executors, queued by lane with a bound. */
class BcryptQueue {
  private readonly lanes = new Map<string, Queued[]>()
  private queued = 0
  /** the lane of the compare started last: it waits behind every other lane */
  private lastServed: string | undefined

  constructor (
    private readonly executors: Executor[],
    private readonly limit: number,
    private readonly stats: Secrets['stats'],
    private readonly observeCompare: (timing: CompareTiming) => void
  ) {}

  get length (): number {
    return this.queued
  }

  async submit (job: JobSpec, lane: string, isGone?: () => boolean): Promise<BcryptResult> {
    return await new Promise<BcryptResult>((resolve, reject) => {
      const entry: Queued = { job, lane, isGone, resolve, reject, submittedAt: performance.now() }
      const idle = this.executors.find((executor) => !executor.busy)
      if (idle !== undefined && this.queued === 0) {
        this.start(idle, entry)
        return
      }
      if (this.queued >= this.limit && !this.makeRoom(lane)) {
        this.stats.refused++
        reject(busy())
        return
      }
      const entries = this.lanes.get(lane)
      if (entries === undefined) this.lanes.set(lane, [entry])
      else entries.push(entry)
      this.queued++
    })
  }

  // A full queue takes a newcomer only from a lane shorter than the longest
  // by two or more: the longest lane's newest entry gives way (refused).
  // Background work never pushes out a request.
  private makeRoom (lane: string): boolean {
    if (lane === BACKGROUND_LANE) return false
    let longest: Queued[] | undefined
    for (const entries of this.lanes.values()) if (longest === undefined || entries.length > longest.length) longest = entries
    const mine = this.lanes.get(lane)?.length ?? 0
    if (longest === undefined || longest.length <= mine + 1) return false
    const evicted = longest.pop() as Queued
    this.queued--
    if (longest.length === 0) this.lanes.delete(evicted.lane)
    this.stats.refused++
    evicted.reject(busy())
    return true
  }

  // Round-robin over lanes: each lane's first entry in turn; a lane served
  // goes to the back.
  private next (): Queued | undefined {
    const recent = this.lastServed === undefined ? undefined : this.lanes.get(this.lastServed)
    if (recent !== undefined && this.lanes.size > 1) {
      this.lanes.delete(this.lastServed as string)
      this.lanes.set(this.lastServed as string, recent)
    }
    for (;;) {
      const first = this.lanes.entries().next()
      if (first.done === true) return undefined
      const [lane, entries] = first.value
      const entry = entries.shift() as Queued
      this.queued--
      this.lanes.delete(lane)
      if (entries.length > 0) this.lanes.set(lane, entries)
      if (entry.isGone?.() === true) {
        this.stats.dropped++
        entry.reject(new OAuthError(503, 'temporarily_unavailable', 'the request went away before its turn'))
        continue
      }
      return entry
    }
  }

  private start (executor: Executor, entry: Queued): void {
    if (entry.job.op === 'compare') this.stats.compares++
    this.lastServed = entry.lane
    executor.busy = true
    const waitSeconds = (performance.now() - entry.submittedAt) / 1000
    executor.run(entry.job).then((result) => {
      if (entry.job.op === 'compare') this.observeCompare({ waitSeconds, compareSeconds: result.ms / 1000 })
      entry.resolve(result)
    }, entry.reject).finally(() => {
      executor.busy = false
      const following = this.next()
      if (following !== undefined) this.start(executor, following)
    })
  }
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
  const inFlight = new Map<string, Promise<SecretCheck>>()

  // The time of a compare at the service's cost, as measured here (the median
  // of the last fifteen); before the first such compare, estimated from the
  // one at hand.
  const serviceCompares = new RecentDurations(15)
  function observe (cost: number, ms: number): void {
    if (cost === config.bcryptCost) serviceCompares.add(ms)
  }

  async function compare (secret: string, hash: string, lane: string, isGone?: () => boolean): Promise<SecretCheck> {
    const cost = bcryptCost(hash)
    // One span for the wait in the queue and the compare (no instrumentation
    // covers bcrypt); a no-op unless tracing is on. Never the secret or hash.
    return await tracer.startActiveSpan('bcrypt compare', { attributes: { 'bcrypt.cost': cost } }, async (span) => {
      try {
        const result = await queue.submit({ op: 'compare', secret, hash }, lane, isGone)
        span.setAttribute('bcrypt.compare_ms', result.ms)
        observe(cost, result.ms)
        return { matches: result.matches ?? null, compareMs: result.ms, cost }
      } catch (err) {
        span.setStatus({ code: SpanStatusCode.ERROR })
        throw err
      } finally {
        span.end()
      }
    })
  }

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
