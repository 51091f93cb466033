import type { Queryable } from './database.ts'

/** How often expired rows are deleted from the database. */
export const SWEEP_INTERVAL_MS = 10 * 60_000

export type ExpiringTable = 'refresh_tokens' | 'revocations' | 'used_client_assertions'

/**
 * Deletes the rows of `table` past their expiry every ten minutes (every
 * read ignores them already; this keeps the table small). Returns the stop.
 */
export function sweepExpired (db: Queryable, table: ExpiringTable, onError: (err: Error) => void): () => void {
  const sweeper = setInterval(() => {
    db.query(`DELETE FROM ${table} WHERE expires_at <= now()`).catch(onError)
  }, SWEEP_INTERVAL_MS)
  sweeper.unref()
  return () => { clearInterval(sweeper) }
}
