// Single-use markers: what may be presented once only (a client assertion's
// jti, RFC 7523 §3) is recorded until it expires.
import type { RedisClient } from './redis-commands.ts'
import type { Guard } from '../plugins/errors.ts'
import type { Queryable } from './database.ts'

export interface ReplayGuard {
  /** Records `key` until `exp` (seconds since epoch); false when it was already recorded (single use). */
  recordOnce: (key: string, exp: number) => Promise<boolean>
}

/** Markers in Redis (`redis` applies the key prefix), each expiring by itself. */
export function redisReplayGuard (redis: RedisClient, guard: Guard): ReplayGuard {
  return {
    recordOnce: async (key, exp) => (await guard('redis', redis.set(key, '1', 'EXAT', exp, 'NX'))) !== null
  }
}

/** Markers in the SQL database (migrations/003). */
export function sqlReplayGuard (db: Queryable, guard: Guard): ReplayGuard {
  return {
    async recordOnce (key, exp) {
      // A row past its expiry counts as absent: it is taken over.
      const { rows } = await guard('postgresql', db.query(`INSERT INTO used_client_assertions (key, expires_at) VALUES ($1, to_timestamp($2))
        ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at WHERE used_client_assertions.expires_at <= now()
        RETURNING key`, [key, exp]))
      return rows.length > 0
    }
  }
}
