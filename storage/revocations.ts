// Revocations: access tokens denied until they expire, and sessions revoked
// (every token of one client_credentials grant). PostgreSQL holds every one
// of them (migrations/003), whichever store enforces them, so that they
// outlive that store; with Redis, Redis answers the checks.
import type { RedisClient } from './redis-commands.ts'
import { DependencyError, type Guard } from '../plugins/errors.ts'
import type { Queryable } from './database.ts'
import { execAll, luaScript } from './redis-commands.ts'
import type { RevocationKind, RevocationMirror } from './revocation-mirror.ts'

export interface Revocations {
  /** Denies an access token until it expires (`exp`, seconds since epoch). */
  denyAccessToken: (jti: string, exp: number) => Promise<void>
  /** Revokes a session for `ttl` seconds from now (a revocation that lasts longer already stays). */
  revokeSession: (sid: string, ttl: number) => Promise<void>
  /** Whether the access token or its session is revoked. */
  isRevoked: (jti: string, sid: string | undefined) => Promise<boolean>
  isSessionRevoked: (sid: string) => Promise<boolean>
  /** Brings the store up to date at start (the Redis one puts back what Redis lost). */
  start: () => Promise<void>
}

export interface RevocationsLog {
  info: (fields: object, message: string) => void
  error: (fields: object, message: string) => void
}

/**
 * Records a revocation in PostgreSQL: the one statement that every store
 * writes them with. Recorded twice, a revocation keeps the later expiry, so
 * that nothing revoked comes back to life early.
 */
export async function insertRevocation (db: Queryable, guard: Guard, kind: RevocationKind, id: string, expiresAt: number): Promise<void> {
  await guard('postgresql', db.query(`INSERT INTO revocations (kind, id, expires_at) VALUES ($1, $2, to_timestamp($3))
    ON CONFLICT (kind, id) DO UPDATE SET expires_at = GREATEST(revocations.expires_at, EXCLUDED.expires_at), revoked_at = now()`, [kind, id, expiresAt]))
}

const secondsFromNow = (ttl: number): number => Math.floor(Date.now() / 1000) + ttl

/** Revocations in the SQL database alone (no Redis). */
export function sqlRevocations (db: Queryable, guard: Guard): Revocations {
  return {
    denyAccessToken: async (jti, exp) => { await insertRevocation(db, guard, 'access_token', jti, exp) },
    revokeSession: async (sid, ttl) => { await insertRevocation(db, guard, 'session', sid, secondsFromNow(ttl)) },
    async isRevoked (jti, sid) {
      const { rows } = await guard('postgresql', db.query(`SELECT 1 FROM revocations WHERE expires_at > now()
        AND ((kind = 'access_token' AND id = $1) OR (kind = 'session' AND id = $2)) LIMIT 1`, [jti, sid ?? null]))
      return rows.length > 0
    },
    async isSessionRevoked (sid) {
      const { rows } = await guard('postgresql', db.query("SELECT 1 FROM revocations WHERE kind = 'session' AND id = $1 AND expires_at > now()", [sid]))
      return rows.length > 0
    },
    start: async () => {}
  }
}

const CHECK_REVOKED = luaScript('check-revoked')

type RedisWithRevocationScripts = RedisClient & {
  checkRevoked: (numberOfKeys: number, ...keys: string[]) => Promise<number>
}

/**
 * The Redis keys of the revocations. In a cluster they share one hash slot
 * with the marker that says the dataset holds them, so that the node which
 * loses them loses the marker too, and the check (one script) can read both.
 * A single server keeps the names of earlier releases, which instances of
 * both read during a rolling update.
 */
export interface RevocationKeys {
  deny: (jti: string) => string
  session: (sid: string) => string
  /** Marks a Redis dataset that holds the durable revocations. */
  restored: string
}

export function revocationKeys (cluster: boolean): RevocationKeys {
  const tag = cluster ? '{revocations}' : ''
  return {
    deny: (jti) => `${tag}deny:${jti}`,
    session: (sid) => `${tag}revoked-session:${sid}`,
    restored: `${tag}store:revocations-restored`
  }
}

/**
 * Puts the durable revocations back into a Redis dataset that lacks them
 * (flushed, or restarted with no persistence); one restore at a time. A
 * marker key says that the dataset holds them.
 */
function revocationRestorer (redis: RedisClient, keys: RevocationKeys, db: Queryable, log: RevocationsLog, guard: Guard): () => Promise<void> {
  async function restore (): Promise<void> {
    const { rows } = await guard('postgresql', db.query<{ kind: string, id: string, exp: number }>(
      "SELECT kind, id, floor(extract(epoch FROM expires_at))::float8 AS exp FROM revocations WHERE expires_at > now() + interval '1 second'"))
    const pipeline = redis.pipeline()
    for (const row of rows) pipeline.set(row.kind === 'session' ? keys.session(row.id) : keys.deny(row.id), '1', 'EXAT', row.exp)
    pipeline.set(keys.restored, new Date().toISOString())
    await guard('redis', execAll(pipeline))
    log.info({ revocations: rows.length }, 'revocations restored to Redis from the database')
  }
  let restoring: Promise<void> | undefined
  return async function ensureRestored (): Promise<void> {
    restoring ??= (async () => {
      try {
        if (await guard('redis', redis.exists(keys.restored)) === 0) await restore()
      } finally {
        restoring = undefined
      }
    })()
    await restoring
  }
}

/**
 * Revocations enforced by Redis (`redis` applies the key prefix) and kept
 * in the database, so that when Redis comes back without its data they are
 * put back before any token is checked against them: a check that finds the
 * restore marker missing restores first. With `mirror`, checks are answered
 * from this instance's memory while it can vouch for itself, and each
 * revocation is announced to the other instances before it is answered.
 */
export function redisRevocations (client: RedisClient, db: Queryable, log: RevocationsLog, guard: Guard, mirror?: RevocationMirror): Revocations {
  const redis = client as RedisWithRevocationScripts
  redis.defineCommand('checkRevoked', { lua: CHECK_REVOKED })
  const keys = revocationKeys(client.isCluster)
  const ensureRestored = revocationRestorer(redis, keys, db, log, guard)
  const logRestoreFailure = (err: Error): void => {
    log.error({ cause: (err.cause as Error | undefined)?.message ?? err.message }, 'could not restore revocations to Redis')
  }
  // At every reconnection: Redis may have come back empty.
  redis.on('ready', () => { ensureRestored().catch(logRestoreFailure) })

  async function countRevoked (ids: string[]): Promise<number> {
    const check = async (): Promise<number> => await guard('redis', redis.checkRevoked(ids.length + 1, keys.restored, ...ids))
    let found = await check()
    if (found < 0) {
      await ensureRestored()
      found = await check()
      if (found < 0) throw new DependencyError('redis', new Error('revocations are not restored in Redis'))
    }
    return found
  }

  // Enforced at once (and announced), then recorded durably; the caller
  // waits for both, so a revocation that was answered survives Redis, and
  // one whose durable record failed (a reuse found while PostgreSQL is down)
  // still holds.
  async function revoke (kind: RevocationKind, key: string, id: string, exp: number): Promise<void> {
    await guard('redis', Promise.all([redis.set(key, '1', 'EXAT', exp), mirror?.publish(kind, id, exp)]))
    await insertRevocation(db, guard, kind, id, exp)
  }

  return {
    denyAccessToken: async (jti, exp) => { await revoke('access_token', keys.deny(jti), jti, exp) },
    revokeSession: async (sid, ttl) => { await revoke('session', keys.session(sid), sid, secondsFromNow(ttl)) },
    async isRevoked (jti, sid) {
      const known = mirror?.check(jti, sid)
      if (known !== undefined) return known
      return await countRevoked(sid === undefined ? [keys.deny(jti)] : [keys.deny(jti), keys.session(sid)]) > 0
    },
    async isSessionRevoked (sid) {
      const known = mirror?.check(undefined, sid)
      if (known !== undefined) return known
      return await countRevoked([keys.session(sid)]) > 0
    },
    // A database without the table yet (MIGRATE_ON_START=false) must not stop
    // the start: checks restore on demand, and fail with 503 until they can.
    start: async () => {
      await ensureRestored().catch(logRestoreFailure)
      await mirror?.start()
    }
  }
}
