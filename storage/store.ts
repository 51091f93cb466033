// Where the short-lived state lives: refresh tokens, revocations, used client
// assertions and the shared client cache. With REDIS_URL that is Redis (one
// script per change, so concurrent instances agree); without it, tables of
// the SQL database (row locks do the same), and no shared cache.
import type { Redis } from 'ioredis'
import type { Database } from './database.js'
import type { RecordSeal } from './record-seal.js'

/** What is kept for a refresh token, under the SHA-256 of the token. */
export interface RefreshTokenRecord {
  client_id: string
  /** the session: one client_credentials grant and every refresh from it */
  sid: string
  /** the session's scope, space-delimited ('' for none); a refresh may narrow its access token, never this */
  scope: string
  /** the session's audience */
  aud: string
  /** seconds since epoch */
  iat: number
  exp: number
  /** set when the token has been exchanged; presenting it again revokes the session */
  used?: boolean
}

export interface ExchangeRequest {
  /** the client that must own the token */
  clientId: string
  /** requested scopes, space-delimited ('' for none) */
  scope: string
  /** requested audience ('' for the session's) */
  audience: string
  /** the audiences the client may still use */
  allowedAudiences: string[]
  /** how long a revoked session stays revoked, seconds */
  sessionTtl: number
}

/**
 * Outcomes of an exchange:
 *   missing  no such token (unknown, expired, or its session was revoked by revocation)
 *   foreign  another client's token; left as it is
 *   revoked  the token's session is revoked
 *   reused   the token was exchanged before: its session is revoked now (RFC 9700 §4.14.2)
 *   scope    a scope beyond the session's was asked for; the token stays usable
 *   target   another audience than the session's was asked for; the token stays usable
 *   lost     the client may no longer use the session's audience; the token is left as it is
 *   ok       the token is marked used, and its record returned
 */
export type ExchangeOutcome =
  | { status: 'missing' | 'foreign' | 'revoked' | 'reused' | 'scope' | 'target' | 'lost' }
  | { status: 'ok', record: RefreshTokenRecord }

/**
 * The cache shared by instances. Values are sealed on the way in and checked
 * on the way out: a value that anyone but this service wrote reads as absent.
 */
export interface SharedCache {
  get: (key: string) => Promise<string | null>
  set: (key: string, value: string, ttlMs: number) => Promise<void>
  del: (key: string) => Promise<void>
}

export interface Store {
  /** 'redis', or 'database' (the SQL database; one instance only, as rate limits stay in process) */
  readonly kind: 'redis' | 'database'
  /** the dependency named in errors and health answers */
  readonly dependency: 'redis' | 'postgresql'
  putRefreshToken: (hash: string, record: RefreshTokenRecord) => Promise<void>
  getRefreshToken: (hash: string) => Promise<RefreshTokenRecord | undefined>
  /** Marks the token used, atomically: of two concurrent exchanges, one succeeds. */
  exchangeRefreshToken: (hash: string, request: ExchangeRequest) => Promise<ExchangeOutcome>
  /** Revokes the token's session and forgets the token, if it is `clientId`'s. */
  revokeRefreshToken: (hash: string, clientId: string, sessionTtl: number) => Promise<'missing' | 'foreign' | 'revoked'>
  /** Denies an access token until it expires (`exp`, seconds since epoch). */
  denyAccessToken: (jti: string, exp: number) => Promise<void>
  /** Whether the access token or its session is revoked. */
  isRevoked: (jti: string, sid: string | undefined) => Promise<boolean>
  isSessionRevoked: (sid: string) => Promise<boolean>
  /** Records `key` until `exp`; false when it was already recorded (single use). */
  recordOnce: (key: string, exp: number) => Promise<boolean>
  /**
   * Adds one to each counter and returns their new values, atomically: of
   * many concurrent calls, each sees a different count. A counter lives
   * `windowSeconds` from its first count.
   */
  countAttempts: (keys: string[], windowSeconds: number) => Promise<number[]>
  /** Takes back one count from each counter that still exists (an attempt that succeeded). */
  refundAttempts: (keys: string[]) => Promise<void>
  /** Records in Redis refused by their integrity check since start (0 without Redis). */
  readonly rejectedRecords: () => number
  /** The cache shared by instances, or undefined when there is no shared store. */
  readonly sharedCache: SharedCache | undefined
  /** Brings the store up to date at start (the Redis store restores revocations). */
  start: () => Promise<void>
  /** Stops background work (the sweepers of expired rows). */
  close: () => void
}

/** In-process failure counters kept at most (the oldest go first). */
const MAX_COUNTERS = 100_000

/** How often expired rows are deleted from the database. */
const SWEEP_INTERVAL_MS = 10 * 60_000

// v2: a hash of the sealed record (r) and the used flag (u). Records of
// earlier releases were not sealed and are not trusted.
const refreshKey = (hash: string): string => `refresh:v2:${hash}`
const denyKey = (jti: string): string => `deny:${jti}`
const sessionKey = (sid: string): string => `revoked-session:${sid}`

// Exchanges a refresh token, in one round trip. KEYS[1]: the token's record
// (a hash: r the sealed record, u set once used). ARGV: the client that must
// own it, the key prefix, the requested scopes, how long a revoked session
// stays revoked, the requested audience, and the audiences the client may
// still use (a JSON array). Outcomes as ExchangeOutcome; 'ok' returns the
// sealed record, whose seal the caller checks (the script cannot: the key is
// not in Redis), so a forged record can only be refused, never honoured.
const EXCHANGE_REFRESH_TOKEN = `
local fields = redis.call('HMGET', KEYS[1], 'r', 'u')
local value = fields[1]
if not value then return {'missing'} end
local text = string.match(value, '^[A-Za-z0-9_-]+%.(.*)$')
if not text then return {'missing'} end
local ok, record = pcall(cjson.decode, text)
if not ok or type(record) ~= 'table' or type(record.sid) ~= 'string' then return {'missing'} end
if record.client_id ~= ARGV[1] then return {'foreign'} end
local session = ARGV[2] .. 'revoked-session:' .. record.sid
if redis.call('EXISTS', session) == 1 then return {'revoked'} end
if fields[2] then
  redis.call('SET', session, '1', 'EX', ARGV[4])
  return {'reused', value}
end
if ARGV[3] ~= '' then
  local granted = {}
  for scope in string.gmatch(record.scope, '%S+') do granted[scope] = true end
  for scope in string.gmatch(ARGV[3], '%S+') do
    if not granted[scope] then return {'scope'} end
  end
end
if ARGV[5] ~= '' and ARGV[5] ~= record.aud then return {'target'} end
local allowed = false
for _, audience in ipairs(cjson.decode(ARGV[6])) do
  if audience == record.aud then allowed = true end
end
if not allowed then return {'lost'} end
redis.call('HSET', KEYS[1], 'u', '1')
return {'ok', value}
`

// Revokes the session of a refresh token. KEYS[1]: the token's record. ARGV:
// the client that must own it, the key prefix, and the session's revocation
// lifetime. Returns 'missing', 'foreign' or 'revoked'.
const REVOKE_REFRESH_TOKEN = `
local value = redis.call('HGET', KEYS[1], 'r')
if not value then return 'missing' end
local text = string.match(value, '^[A-Za-z0-9_-]+%.(.*)$')
if not text then return 'missing' end
local ok, record = pcall(cjson.decode, text)
if not ok or type(record) ~= 'table' or type(record.sid) ~= 'string' then return 'missing' end
if record.client_id ~= ARGV[1] then return 'foreign' end
redis.call('SET', ARGV[2] .. 'revoked-session:' .. record.sid, '1', 'EX', ARGV[3])
redis.call('DEL', KEYS[1])
return 'revoked'
`

// Whether an access token or its session is revoked, in one round trip.
// KEYS: the restore marker, then the deny-list and session keys. Returns -1
// when the marker is missing (Redis lost its data and the revocations have
// not been put back yet), else how many of the other keys exist.
// Counts an attempt in each of KEYS, atomically, and returns the new counts.
// ARGV[1]: the window in seconds, which starts at a counter's first count.
const COUNT_ATTEMPTS = `
local counts = {}
for i = 1, #KEYS do
  counts[i] = redis.call('INCR', KEYS[i])
  if counts[i] == 1 then redis.call('EXPIRE', KEYS[i], ARGV[1]) end
end
return counts
`

// Takes one count back from each of KEYS that still exists (an expired
// counter is not brought back as a negative one without an expiry).
const REFUND_ATTEMPTS = `
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 and tonumber(redis.call('GET', KEYS[i])) > 0 then redis.call('DECR', KEYS[i]) end
end
return 0
`

const CHECK_REVOKED = `
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local found = 0
for i = 2, #KEYS do found = found + redis.call('EXISTS', KEYS[i]) end
return found
`

interface RedisWithScripts extends Redis {
  exchangeRefreshToken: (key: string, clientId: string, prefix: string, scope: string, ttl: number, audience: string, allowedAudiences: string) => Promise<[string, string?]>
  revokeRefreshToken: (key: string, clientId: string, prefix: string, ttl: number) => Promise<string>
  checkRevoked: (numberOfKeys: number, ...keys: string[]) => Promise<number>
  countAttempts: (numberOfKeys: number, ...keysAndWindow: Array<string | number>) => Promise<number[]>
  refundAttempts: (numberOfKeys: number, ...keys: string[]) => Promise<number>
}

/** Marks a Redis dataset that holds the durable revocations (see redisStore). */
const RESTORED_MARKER = 'store:revocations-restored'

export interface StoreLog {
  info: (fields: object, message: string) => void
  error: (fields: object, message: string) => void
}

// Revocations are written to the database too (migrations/003), so that they
// outlive the store that enforces them.
async function recordRevocation (db: Pick<Database, 'query'>, kind: 'access_token' | 'session', id: string, expiresAt: number): Promise<void> {
  await db.query(`INSERT INTO revocations (kind, id, expires_at) VALUES ($1, $2, to_timestamp($3))
    ON CONFLICT (kind, id) DO UPDATE SET expires_at = GREATEST(revocations.expires_at, EXCLUDED.expires_at)`, [kind, id, expiresAt])
}

/**
 * The store in Redis. `redis` applies `prefix` to every key it is given.
 *
 * Revocations are durable: each is also written to the database, and when
 * Redis comes back without its data (flushed, or restarted with no
 * persistence) they are put back before any token is checked against them.
 * A marker key says that the dataset holds them; a check that finds it
 * missing restores first, then answers.
 */
export function redisStore (client: Redis, prefix: string, db: Database, log: StoreLog, seal: RecordSeal): Store {
  const redis = client as RedisWithScripts
  redis.defineCommand('exchangeRefreshToken', { numberOfKeys: 1, lua: EXCHANGE_REFRESH_TOKEN })
  redis.defineCommand('revokeRefreshToken', { numberOfKeys: 1, lua: REVOKE_REFRESH_TOKEN })
  redis.defineCommand('checkRevoked', { lua: CHECK_REVOKED })
  redis.defineCommand('countAttempts', { lua: COUNT_ATTEMPTS })
  redis.defineCommand('refundAttempts', { lua: REFUND_ATTEMPTS })

  /** The record of a sealed value, or undefined when the seal or the JSON is bad. */
  async function openRecord (key: string, sealed: string): Promise<RefreshTokenRecord | undefined> {
    const text = await seal.open(key, sealed)
    if (text === undefined) return undefined
    try {
      return JSON.parse(text) as RefreshTokenRecord
    } catch {
      return undefined
    }
  }

  let restoring: Promise<void> | undefined
  async function restore (): Promise<void> {
    const { rows } = await db.query<{ kind: string, id: string, exp: number }>(
      "SELECT kind, id, floor(extract(epoch FROM expires_at))::float8 AS exp FROM revocations WHERE expires_at > now() + interval '1 second'")
    const pipeline = redis.pipeline()
    for (const row of rows) pipeline.set(row.kind === 'session' ? sessionKey(row.id) : denyKey(row.id), '1', 'EXAT', row.exp)
    pipeline.set(RESTORED_MARKER, new Date().toISOString())
    const results = await pipeline.exec()
    const failed = results?.find(([err]) => err !== null)?.[0]
    if (failed !== undefined && failed !== null) throw failed
    log.info({ revocations: rows.length }, 'revocations restored to Redis from the database')
  }
  /** Puts the revocations back unless the dataset has them; one restore at a time. */
  async function ensureRestored (): Promise<void> {
    restoring ??= (async () => {
      try {
        if (await redis.exists(RESTORED_MARKER) === 0) await restore()
      } finally {
        restoring = undefined
      }
    })()
    await restoring
  }
  // Expired revocations leave the database as they leave Redis.
  const sweeper = setInterval(() => {
    db.query('DELETE FROM revocations WHERE expires_at <= now()').catch((err: Error) => log.error({ cause: err.message }, 'could not delete expired revocations'))
  }, SWEEP_INTERVAL_MS)
  sweeper.unref()
  // At every reconnection: Redis may have come back empty.
  redis.on('ready', () => {
    ensureRestored().catch((err: Error) => log.error({ cause: err.message }, 'could not restore revocations to Redis'))
  })
  async function getRefreshToken (hash: string): Promise<RefreshTokenRecord | undefined> {
    const key = refreshKey(hash)
    const [sealed, used] = await redis.hmget(key, 'r', 'u')
    if (sealed === null || sealed === undefined) return undefined
    const record = await openRecord(key, sealed)
    if (record === undefined) return undefined
    return used === null || used === undefined ? record : { ...record, used: true }
  }
  async function countRevoked (keys: string[]): Promise<number> {
    let found = await redis.checkRevoked(keys.length + 1, RESTORED_MARKER, ...keys)
    if (found < 0) {
      await ensureRestored()
      found = await redis.checkRevoked(keys.length + 1, RESTORED_MARKER, ...keys)
      if (found < 0) throw new Error('revocations are not restored in Redis')
    }
    return found
  }

  return {
    kind: 'redis',
    dependency: 'redis',
    async putRefreshToken (hash, record) {
      const key = refreshKey(hash)
      const { used, ...fields } = record
      const results = await redis.multi().hset(key, 'r', await seal.seal(key, JSON.stringify(fields))).expireat(key, record.exp).exec()
      const failed = results?.find(([err]) => err !== null)?.[0]
      if (failed !== undefined && failed !== null) throw failed
    },
    getRefreshToken,
    async exchangeRefreshToken (hash, request) {
      const key = refreshKey(hash)
      const [status, value] = await redis.exchangeRefreshToken(key, request.clientId, prefix, request.scope,
        request.sessionTtl, request.audience, JSON.stringify(request.allowedAudiences))
      if (status === 'ok' && value !== undefined) {
        const record = await openRecord(key, value)
        return record === undefined ? { status: 'missing' } : { status, record }
      }
      if (status === 'reused' && value !== undefined) {
        // Already in force in Redis; the durable record follows, for a
        // record this service wrote (a forged one names no real session).
        const record = await openRecord(key, value)
        if (record !== undefined) await recordRevocation(db, 'session', record.sid, Math.floor(Date.now() / 1000) + request.sessionTtl)
      }
      return { status: status as Exclude<ExchangeOutcome['status'], 'ok'> }
    },
    async revokeRefreshToken (hash, clientId, sessionTtl) {
      // The durable record first: a revocation that was answered must survive.
      const record = await getRefreshToken(hash)
      if (record === undefined) return 'missing'
      if (record.client_id !== clientId) return 'foreign'
      await recordRevocation(db, 'session', record.sid, Math.floor(Date.now() / 1000) + sessionTtl)
      return await redis.revokeRefreshToken(refreshKey(hash), clientId, prefix, sessionTtl) as 'missing' | 'foreign' | 'revoked'
    },
    async denyAccessToken (jti, exp) {
      await recordRevocation(db, 'access_token', jti, exp)
      await redis.set(denyKey(jti), '1', 'EXAT', exp)
    },
    async isRevoked (jti, sid) {
      return await countRevoked(sid === undefined ? [denyKey(jti)] : [denyKey(jti), sessionKey(sid)]) > 0
    },
    async isSessionRevoked (sid) {
      return await countRevoked([sessionKey(sid)]) > 0
    },
    async recordOnce (key, exp) {
      return (await redis.set(key, '1', 'EXAT', exp, 'NX')) !== null
    },
    async countAttempts (keys, windowSeconds) {
      return await redis.countAttempts(keys.length, ...keys, windowSeconds)
    },
    async refundAttempts (keys) {
      await redis.refundAttempts(keys.length, ...keys)
    },
    rejectedRecords: () => seal.stats.rejected,
    sharedCache: {
      get: async (key) => {
        const sealed = await redis.get(key)
        return sealed === null ? null : await seal.open(key, sealed) ?? null
      },
      set: async (key, value, ttlMs) => { await redis.set(key, await seal.seal(key, value), 'PX', ttlMs) },
      del: async (key) => { await redis.del(key) }
    },
    // A database without the table yet (MIGRATE_ON_START=false) must not stop
    // the start: checks restore on demand, and fail with 503 until they can.
    start: async () => { await ensureRestored().catch((err: Error) => log.error({ cause: err.message }, 'could not restore revocations to Redis')) },
    close: () => { clearInterval(sweeper) }
  }
}

/** The checks of an exchange that depend on the record only (the SQL store's half of the Lua script). */
function judgeExchange (record: RefreshTokenRecord, request: ExchangeRequest): ExchangeOutcome['status'] | undefined {
  if (request.scope !== '') {
    const granted = new Set(record.scope.split(/\s+/).filter((scope) => scope !== ''))
    if (request.scope.split(/\s+/).some((scope) => scope !== '' && !granted.has(scope))) return 'scope'
  }
  if (request.audience !== '' && request.audience !== record.aud) return 'target'
  if (!request.allowedAudiences.includes(record.aud)) return 'lost'
  return undefined
}

/**
 * The store in the SQL database (tables of migrations/003). Rows past their
 * expiry are ignored by every read and deleted by a sweep every ten minutes.
 */
export function databaseStore (db: Database, onSweepError: (err: Error) => void = () => {}): Store {
  async function revokeSession (tx: Pick<Database, 'query'>, sid: string, ttl: number): Promise<void> {
    await tx.query(`INSERT INTO revocations (kind, id, expires_at) VALUES ('session', $1, now() + make_interval(secs => $2))
      ON CONFLICT (kind, id) DO UPDATE SET expires_at = GREATEST(revocations.expires_at, EXCLUDED.expires_at)`, [sid, ttl])
  }
  async function sweep (): Promise<void> {
    await db.query('DELETE FROM refresh_tokens WHERE expires_at <= now()')
    await db.query('DELETE FROM revocations WHERE expires_at <= now()')
    await db.query('DELETE FROM used_client_assertions WHERE expires_at <= now()')
  }
  const sweeper = setInterval(() => { sweep().catch(onSweepError) }, SWEEP_INTERVAL_MS)
  sweeper.unref()

  interface Row { record: RefreshTokenRecord, used: boolean }
  const counters = new Map<string, { count: number, until: number }>()

  return {
    kind: 'database',
    dependency: 'postgresql',
    async putRefreshToken (hash, record) {
      await db.query(`INSERT INTO refresh_tokens (token_hash, client_id, sid, record, expires_at)
        VALUES ($1, $2, $3, $4, to_timestamp($5))`, [hash, record.client_id, record.sid, JSON.stringify(record), record.exp])
    },
    async getRefreshToken (hash) {
      const { rows } = await db.query<Row>('SELECT record, used FROM refresh_tokens WHERE token_hash = $1 AND expires_at > now()', [hash])
      const row = rows[0]
      return row === undefined ? undefined : { ...row.record, ...(row.used ? { used: true } : {}) }
    },
    async exchangeRefreshToken (hash, request) {
      return await db.transaction(async (tx): Promise<ExchangeOutcome> => {
        // FOR UPDATE: a concurrent exchange of the same token waits here and
        // then finds it used.
        const { rows } = await tx.query<Row>('SELECT record, used FROM refresh_tokens WHERE token_hash = $1 AND expires_at > now() FOR UPDATE', [hash])
        const row = rows[0]
        if (row === undefined) return { status: 'missing' }
        const record = row.record
        if (record.client_id !== request.clientId) return { status: 'foreign' }
        const revoked = await tx.query("SELECT 1 FROM revocations WHERE kind = 'session' AND id = $1 AND expires_at > now()", [record.sid])
        if (revoked.rows.length > 0) return { status: 'revoked' }
        if (row.used) {
          await revokeSession(tx, record.sid, request.sessionTtl)
          return { status: 'reused' }
        }
        const refused = judgeExchange(record, request)
        if (refused !== undefined) return { status: refused } as ExchangeOutcome
        await tx.query('UPDATE refresh_tokens SET used = true WHERE token_hash = $1', [hash])
        return { status: 'ok', record }
      })
    },
    async revokeRefreshToken (hash, clientId, sessionTtl) {
      return await db.transaction(async (tx) => {
        const { rows } = await tx.query<Row>('SELECT record, used FROM refresh_tokens WHERE token_hash = $1 AND expires_at > now() FOR UPDATE', [hash])
        const row = rows[0]
        if (row === undefined) return 'missing'
        if (row.record.client_id !== clientId) return 'foreign'
        await revokeSession(tx, row.record.sid, sessionTtl)
        await tx.query('DELETE FROM refresh_tokens WHERE token_hash = $1', [hash])
        return 'revoked'
      })
    },
    async denyAccessToken (jti, exp) {
      await db.query(`INSERT INTO revocations (kind, id, expires_at) VALUES ('access_token', $1, to_timestamp($2))
        ON CONFLICT (kind, id) DO NOTHING`, [jti, exp])
    },
    async isRevoked (jti, sid) {
      const { rows } = await db.query(`SELECT 1 FROM revocations WHERE expires_at > now()
        AND ((kind = 'access_token' AND id = $1) OR (kind = 'session' AND id = $2)) LIMIT 1`, [jti, sid ?? null])
      return rows.length > 0
    },
    async isSessionRevoked (sid) {
      const { rows } = await db.query("SELECT 1 FROM revocations WHERE kind = 'session' AND id = $1 AND expires_at > now()", [sid])
      return rows.length > 0
    },
    async recordOnce (key, exp) {
      // A row past its expiry counts as absent: it is taken over.
      const { rows } = await db.query(`INSERT INTO used_client_assertions (key, expires_at) VALUES ($1, to_timestamp($2))
        ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at WHERE used_client_assertions.expires_at <= now()
        RETURNING key`, [key, exp])
      return rows.length > 0
    },
    // Attempt counters are per process in this mode, like the rate limits;
    // synchronous, so each call sees the counts of the calls before it.
    async countAttempts (keys, windowSeconds) {
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
    async refundAttempts (keys) {
      const now = Date.now()
      for (const key of keys) {
        const counter = counters.get(key)
        if (counter !== undefined && counter.until > now && counter.count > 0) counter.count--
      }
    },
    rejectedRecords: () => 0,
    sharedCache: undefined,
    start: async () => {},
    close: () => { clearInterval(sweeper) }
  }
}
