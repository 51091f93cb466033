// Records that grant something (a cached client, a refresh token) are sealed
// before they go to Redis: an HMAC-SHA256 under a secret that lives in the
// SQL database (migrations/004) and never in Redis, over the record's key
// and its text. A record written by anyone without that secret, or moved to
// another key, fails the check and counts as absent. Redis stays a cache and
// a coordinator, never a root of trust.
import { createHmac, timingSafeEqual } from 'node:crypto'
import type { Queryable } from './database.ts'

export const RECORD_SECRET_NAME = 'redis-records'

/** Keys whose failed check was already logged (each is logged once). */
const MAX_LOGGED_KEYS = 10_000

export interface RecordSealLog {
  warn: (fields: object, message: string) => void
}

export interface RecordSeal {
  /** `value` with its seal, for `key`. */
  seal: (key: string, value: string) => Promise<string>
  /** The value of a sealed record stored under `key`, or undefined when the seal does not check out. */
  open: (key: string, sealed: string) => Promise<string | undefined>
  /** Reads the secret now (at start), so that the first request does not wait for it. */
  load: () => Promise<void>
  /** Records refused since start (for metrics). */
  readonly stats: { rejected: number }
}

const MAC_LENGTH = 43 // base64url of 32 bytes

/**
 * `loadSecret` reads the secret from the database; it is read once, when
 * first needed, and read again after a failure (the database may be down
 * at start: the service starts anyway, and what needs the secret fails as a
 * dependency failure until it answers).
 */
export function recordSeal (loadSecret: () => Promise<Buffer>, log: RecordSealLog): RecordSeal {
  const stats = { rejected: 0 }
  const logged = new Set<string>()
  let loading: Promise<Buffer> | undefined
  async function secret (): Promise<Buffer> {
    loading ??= loadSecret().catch((err: unknown) => {
      loading = undefined
      throw err
    })
    return await loading
  }
  const mac = async (key: string, value: string): Promise<Buffer> =>
    createHmac('sha256', await secret()).update(key).update('\0').update(value).digest()

  function reject (key: string): undefined {
    stats.rejected++
    if (!logged.has(key)) {
      if (logged.size >= MAX_LOGGED_KEYS) logged.clear()
      logged.add(key)
      log.warn({ key }, 'a record in Redis failed its integrity check and is ignored; something other than this service wrote it')
    }
    return undefined
  }

  return {
    seal: async (key, value) => `${(await mac(key, value)).toString('base64url')}.${value}`,
    async open (key, sealed) {
      if (sealed.length <= MAC_LENGTH || sealed[MAC_LENGTH] !== '.') return reject(key)
      const given = Buffer.from(sealed.slice(0, MAC_LENGTH), 'base64url')
      const value = sealed.slice(MAC_LENGTH + 1)
      const expected = await mac(key, value)
      if (given.length !== expected.length || !timingSafeEqual(given, expected)) return reject(key)
      return value
    },
    load: async () => { await secret() },
    stats
  }
}

/**
 * Reads a secret the instances share (service_secrets, made by the migration
 * named): a database without it has not been migrated.
 */
export async function readServiceSecret (db: Queryable, name: string, migration: string): Promise<Buffer> {
  let rows: Array<{ secret: Buffer | Uint8Array }>
  try {
    rows = (await db.query<{ secret: Buffer | Uint8Array }>('SELECT secret FROM service_secrets WHERE name = $1', [name])).rows
  } catch (err) {
    if ((err as { code?: string }).code === '42P01') rows = []
    else throw err
  }
  const secret = rows[0]?.secret
  if (secret === undefined) {
    throw new Error(`the database has no ${name} secret (migration ${migration}): run the migrations (npm run migrate, or MIGRATE_ON_START=true)`)
  }
  return Buffer.from(secret)
}

/** Reads the secret that seals Redis records. */
export const readRecordSecret = async (db: Queryable): Promise<Buffer> => await readServiceSecret(db, RECORD_SECRET_NAME, '004')
