// Client secret checks. bcrypt is slow on purpose (~65 ms per compare at cost
// 10), which would cap a token endpoint at ~15 requests per second per core
// and stall every other request meanwhile. Two measures:
// - compares run on worker threads, so the event loop keeps serving;
// - a successful check is remembered in this process only, as an HMAC of the
//   stored hash and the presented secret under a key that is random per
//   process and never leaves it. A rotated secret has another stored hash, so
//   it is checked with bcrypt again; entries expire after SECRET_CACHE_TTL and
//   the cache holds at most MAX_CACHED_SECRETS of them. Failures are never
//   remembered: each wrong secret costs a full compare.
import { createHmac, randomBytes } from 'node:crypto'
import { Worker } from 'node:worker_threads'
import fp from 'fastify-plugin'
import bcrypt from 'bcryptjs'
import type { CompareRequest, CompareResult } from '../workers/bcrypt.js'

export const MAX_CACHED_SECRETS = 10_000

export interface Secrets {
  /**
   * Whether `secret` matches the bcrypt `hash`; null when `hash` is not a
   * bcrypt hash. `beforeCompare` runs (and may throw) only when a bcrypt
   * compare is needed, that is when the secret is not one remembered as right.
   */
  matches: (secret: string, hash: string, beforeCompare?: () => Promise<void>) => Promise<boolean | null>
  /** bcrypt compares run since start (for metrics) */
  stats: { compares: number }
}

declare module 'fastify' {
  interface FastifyInstance {
    secrets: Secrets
  }
}

type Pending = (result: boolean | null) => void

/**
 * Worker threads shared by every app in the process (tests build many). The
 * workers are unref'd: an idle pool never keeps the process alive.
 */
class BcryptPool {
  private readonly workers: Array<{ worker: Worker, busy: number }> = []
  private readonly pending = new Map<number, Pending>()
  private nextId = 0

  constructor (size: number) {
    // The worker module sits beside this one's directory, with this module's
    // extension (.ts under the test loader, .js when built).
    const extension = import.meta.url.endsWith('.ts') ? '.ts' : '.js'
    const url = new URL(`../workers/bcrypt${extension}`, import.meta.url)
    for (let i = 0; i < size; i++) {
      const worker = new Worker(url)
      const entry = { worker, busy: 0 }
      worker.on('message', (result: CompareResult) => {
        entry.busy--
        const resolve = this.pending.get(result.id)
        this.pending.delete(result.id)
        resolve?.(result.matches)
      })
      worker.unref()
      this.workers.push(entry)
    }
  }

  async compare (secret: string, hash: string): Promise<boolean | null> {
    // The least busy worker; each runs its queue in order.
    let entry = this.workers[0]
    for (const candidate of this.workers) if (entry === undefined || candidate.busy < entry.busy) entry = candidate
    if (entry === undefined) throw new Error('empty bcrypt pool')
    const id = this.nextId++
    entry.busy++
    return await new Promise<boolean | null>((resolve) => {
      this.pending.set(id, resolve)
      entry.worker.postMessage({ id, secret, hash } satisfies CompareRequest)
    })
  }
}

const pools = new Map<number, BcryptPool>()

function poolOf (size: number): BcryptPool {
  let pool = pools.get(size)
  if (pool === undefined) {
    pool = new BcryptPool(size)
    pools.set(size, pool)
  }
  return pool
}

async function compareOnMainThread (secret: string, hash: string): Promise<boolean | null> {
  try {
    return await bcrypt.compare(secret, hash)
  } catch {
    return null
  }
}

export default fp(async (fastify) => {
  const { config } = fastify
  const compare = config.bcryptWorkers === 0
    ? compareOnMainThread
    : async (secret: string, hash: string) => await poolOf(config.bcryptWorkers).compare(secret, hash)

  const key = randomBytes(32)
  const ttlMs = config.secretCacheTtl * 1000
  // Insertion order is expiry order (every entry lives ttlMs), so the oldest
  // entry is always the first.
  const verified = new Map<string, number>()
  const inFlight = new Map<string, Promise<boolean | null>>()
  const stats = { compares: 0 }

  const fingerprint = (secret: string, hash: string): string =>
    createHmac('sha256', key).update(hash).update('\0').update(secret).digest('base64url')

  // The last tenth of an entry's life (at most 30 s) is its renewal window.
  const renewWindowMs = Math.min(30_000, ttlMs / 10)
  function remember (id: string, now: number): void {
    verified.delete(id)
    verified.set(id, now + ttlMs)
    if (verified.size > MAX_CACHED_SECRETS) {
      const oldest = verified.keys().next().value
      if (oldest !== undefined) verified.delete(oldest)
    }
  }
  function renew (secret: string, hash: string, id: string): void {
    stats.compares++
    const comparing = compare(secret, hash)
    inFlight.set(id, comparing)
    comparing.then((result) => {
      // A secret that no longer matches (it cannot, for one hash) is forgotten.
      if (result === true) remember(id, Date.now())
      else verified.delete(id)
    }, () => {}).finally(() => inFlight.delete(id))
  }

  async function matches (secret: string, hash: string, beforeCompare?: () => Promise<void>): Promise<boolean | null> {
    const now = Date.now()
    const id = ttlMs > 0 ? fingerprint(secret, hash) : ''
    const expires = verified.get(id)
    if (expires !== undefined) {
      if (expires > now) {
        // Close to expiry, one compare in the background renews it, so that a
        // busy client never waits for bcrypt when its entry runs out.
        if (expires - now < renewWindowMs && !inFlight.has(id)) renew(secret, hash, id)
        return true
      }
      verified.delete(id)
    }
    // Concurrent requests with the same secret share one compare: when a
    // remembered secret expires under load, every request that arrives before
    // the new compare ends would otherwise start its own, and they would queue
    // on the bcrypt workers for seconds.
    const flight = id === '' ? fingerprint(secret, hash) : id
    const running = inFlight.get(flight)
    if (running !== undefined) return await running
    // Registered before anything is awaited, so that requests arriving
    // meanwhile join this compare instead of starting theirs.
    const comparing = (async () => {
      await beforeCompare?.()
      stats.compares++
      return await compare(secret, hash)
    })()
    inFlight.set(flight, comparing)
    let result: boolean | null
    try {
      result = await comparing
    } finally {
      inFlight.delete(flight)
    }
    if (result === true && ttlMs > 0) remember(id, now)
    return result
  }

  fastify.decorate('secrets', { matches, stats })
}, { name: 'secrets', dependencies: ['config'] })
