// Counters of attempts over a window (failed client authentications): each
// call adds one, atomically, so a concurrent burst cannot pass whole.
import type { RedisClient } from './redis-commands.ts'
import type { Guard } from '../plugins/errors.ts'
import { luaScript } from './redis-commands.ts'

export interface Counters {
  /**
   * Adds one to each counter and returns their new values, atomically: of
   * many concurrent calls, each sees a different count. A counter lives
   * `windowSeconds` from its first count.
   */
  count: (keys: string[], windowSeconds: number) => Promise<number[]>
  /** Takes back one count from each counter that still exists (an attempt that succeeded). */
  refund: (keys: string[]) => Promise<void>
}

const COUNT_ATTEMPTS = luaScript('count-attempt')
const REFUND_ATTEMPTS = luaScript('refund-attempt')

type RedisWithCounterScripts = RedisClient & {
  countAttempt: (key: string, windowSeconds: number) => Promise<number>
  refundAttempt: (key: string) => Promise<number>
}

/**
 * Counters in Redis (`redis` applies the key prefix): shared by every
 * instance. One script call per counter, as counters of one attempt (the
 * client's, the address's) live in different cluster slots; each counter is
 * atomic by itself, and the calls of one attempt leave in one write.
 */
export function redisCounters (client: RedisClient, guard: Guard): Counters {
  const redis = client as RedisWithCounterScripts
  redis.defineCommand('countAttempt', { numberOfKeys: 1, lua: COUNT_ATTEMPTS })
  redis.defineCommand('refundAttempt', { numberOfKeys: 1, lua: REFUND_ATTEMPTS })
  return {
    count: async (keys, windowSeconds) => await guard('redis', Promise.all(keys.map(async (key) => await redis.countAttempt(key, windowSeconds)))),
    refund: async (keys) => { await guard('redis', Promise.all(keys.map(async (key) => await redis.refundAttempt(key)))) }
  }
}

/** In-process counters kept at most (the oldest go first). */
const MAX_COUNTERS = 100_000

/**
 * Counters in this process, for the store without Redis: like the rate
 * limits in that mode, they hold for one instance only. Synchronous, so each
 * call sees the counts of the calls before it.
 */
export function processCounters (): Counters {
  const counters = new Map<string, { count: number, until: number }>()
  return {
    async count (keys, windowSeconds) {
      const now = Date.now()
      const counts = keys.map((key) => {
        const counter = counters.get(key)
        if (counter === undefined || counter.until <= now) {
          counters.set(key, { count: 1, until: now + windowSeconds * 1000 })
          return 1
        }
        return ++counter.count
      })
      if (counters.size > MAX_COUNTERS) {
        for (const [key, counter] of counters) if (counter.until <= now) counters.delete(key)
        while (counters.size > MAX_COUNTERS) counters.delete(counters.keys().next().value as string)
      }
      return counts
    },
    async refund (keys) {
      const now = Date.now()
      for (const key of keys) {
        const counter = counters.get(key)
        if (counter !== undefined && counter.until > now && counter.count > 0) counter.count--
      }
    }
  }
}
