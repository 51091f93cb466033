// Where the short-lived state lives, by concern: refresh tokens, revocations,
// single-use markers, attempt counters and the shared client cache. With
// REDIS_URL that is Redis (scripts make each change atomic, so concurrent
// instances agree; revocations are kept in the database too); without it,
// tables of the SQL database, counters in the process and no shared cache.
// Each call fails as a DependencyError naming what it really touched.
import type { RedisClient } from './redis-commands.ts'
import { guard as unrecorded, type Guard } from '../plugins/errors.ts'
import type { Database } from './database.ts'
import type { RecordSeal } from './record-seal.ts'
import { noClientCache, redisClientCache, type ClientCache } from './client-cache.ts'
import { processCounters, redisCounters, type Counters } from './counters.ts'
import { redisRefreshTokens, sqlRefreshTokens, type RefreshTokens } from './refresh-tokens.ts'
import { redisReplayGuard, sqlReplayGuard, type ReplayGuard } from './replay-guard.ts'
import { redisRevocations, sqlRevocations, type Revocations } from './revocations.ts'
import { revocationMirror } from './revocation-mirror.ts'
import { sweepExpired, type ExpiringTable } from './sweeper.ts'

export type { ClientCache } from './client-cache.ts'
export type { Counters } from './counters.ts'
export type { ExchangeOutcome, ExchangeRequest, RefreshTokenRecord, RefreshTokens } from './refresh-tokens.ts'
export type { ReplayGuard } from './replay-guard.ts'
export type { Revocations } from './revocations.ts'

export interface Store {
  /** 'redis', or 'database' (the SQL database; one instance only, as rate limits stay in process) */
  readonly kind: 'redis' | 'database'
  readonly refreshTokens: RefreshTokens
  readonly revocations: Revocations
  readonly replayGuard: ReplayGuard
  readonly counters: Counters
  /** Shared by instances with Redis; without it, a cache that holds nothing. */
  readonly clientCache: ClientCache
  /** Records in Redis refused by their integrity check since start (0 without Redis). */
  readonly rejectedRecords: () => number
  /** The revocations this instance holds in memory, and whether they answer checks; undefined without such a copy. */
  readonly revocationsInMemory: () => { entries: number, current: boolean } | undefined
  /** Brings the store up to date at start (the Redis store restores revocations). */
  start: () => Promise<void>
  /** Stops background work (the sweepers of expired rows). */
  close: () => void
}

export interface StoreLog {
  info: (fields: object, message: string) => void
  warn: (fields: object, message: string) => void
  error: (fields: object, message: string) => void
}

/** Sweeps the expired rows of `tables` in the background; returns the stop of them all. */
function sweepTables (db: Database, tables: ExpiringTable[], log: StoreLog): () => void {
  const stops = tables.map((table) => sweepExpired(db, table, (err) => log.warn({ table, cause: err.message }, 'could not delete expired rows')))
  return () => { for (const stop of stops) stop() }
}

export interface RedisStoreOptions {
  /** applies `prefix` to every key it is given */
  redis: RedisClient
  prefix: string
  /** where revocations are kept durably, and the seal's secret */
  db: Database
  seal: RecordSeal
  log: StoreLog
  /** what each call to Redis or PostgreSQL goes through (default: one that records nothing) */
  guard?: Guard
  /** revocations kept in this instance's memory at most (storage/revocation-mirror.ts); 0: none, every check asks Redis */
  revocationsInMemoryMax?: number
}

/** Redis channel (after the key prefix) of the revocation notices. */
export const REVOCATION_NOTICES_CHANNEL = 'revocations:notices'

/** The store in Redis, revocations written through to the database. */
export function redisStore ({ redis, prefix, db, seal, log, guard = unrecorded, revocationsInMemoryMax = 0 }: RedisStoreOptions): Store {
  const mirror = revocationsInMemoryMax === 0
    ? undefined
    : revocationMirror({ redis, channel: `${prefix}${REVOCATION_NOTICES_CHANNEL}`, db, seal, maxEntries: revocationsInMemoryMax, log })
  const revocations = redisRevocations(redis, db, log, guard, mirror)
  const stopSweeping = sweepTables(db, ['revocations'], log)
  return {
    kind: 'redis',
    refreshTokens: redisRefreshTokens(redis, seal, revocations, guard),
    revocations,
    replayGuard: redisReplayGuard(redis, guard),
    counters: redisCounters(redis, guard),
    clientCache: redisClientCache(redis, prefix, seal, guard),
    rejectedRecords: () => seal.stats.rejected,
    revocationsInMemory: () => mirror?.stats(),
    start: revocations.start,
    // Expired revocations leave the database as they leave Redis.
    close: () => {
      stopSweeping()
      mirror?.close()
    }
  }
}

/** The store in the SQL database (tables of migrations/003): one instance only. `guard`: as for redisStore. */
export function sqlStore (db: Database, log: StoreLog, guard: Guard = unrecorded): Store {
  const revocations = sqlRevocations(db, guard)
  return {
    kind: 'database',
    refreshTokens: sqlRefreshTokens(db, revocations, guard),
    revocations,
    replayGuard: sqlReplayGuard(db, guard),
    counters: processCounters(),
    clientCache: noClientCache(),
    rejectedRecords: () => 0,
    revocationsInMemory: () => undefined,
    start: revocations.start,
    close: sweepTables(db, ['refresh_tokens', 'revocations', 'used_client_assertions'], log)
  }
}
