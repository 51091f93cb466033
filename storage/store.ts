// Where the short-lived state lives: refresh tokens, revocations, used client
// assertions and the shared client cache. With REDIS_URL that is Redis (one
// script per change, so concurrent instances agree); without it, tables of
// the SQL database (row locks do the same), and no shared cache.
import type { Redis } from 'ioredis'
import type { Database } from './database.js'

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
  /** The cache shared by instances, or undefined when there is no shared store. */
  readonly sharedCache: SharedCache | undefined
  /** Stops background work (the SQL store's sweeper). */
  close: () => void
}

const refreshKey = (hash: string): string => `refresh:${hash}`
const denyKey = (jti: string): string => `deny:${jti}`
const sessionKey = (sid: string): string => `revoked-session:${sid}`

// Exchanges a refresh token, in one round trip. KEYS[1]: the token's record.
// ARGV: the client that must own it, the key prefix, the requested scopes,
// how long a revoked session stays revoked, the requested audience, and the
// audiences the client may still use (a JSON array). Outcomes as ExchangeOutcome.
const EXCHANGE_REFRESH_TOKEN = `
local value = redis.call('GET', KEYS[1])
if not value then return {'missing'} end
local ok, record = pcall(cjson.decode, value)
if not ok or type(record) ~= 'table' or type(record.sid) ~= 'string' then return {'missing'} end
if record.client_id ~= ARGV[1] then return {'foreign'} end
local session = ARGV[2] .. 'revoked-session:' .. record.sid
if redis.call('EXISTS', session) == 1 then return {'revoked'} end
if record.used then
  redis.call('SET', session, '1', 'EX', ARGV[4])
  return {'reused'}
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
record.used = true
redis.call('SET', KEYS[1], cjson.encode(record), 'KEEPTTL')
return {'ok', value}
`

// Revokes the session of a refresh token. KEYS[1]: the token's record. ARGV:
// the client that must own it, the key prefix, and the session's revocation
// lifetime. Returns 'missing', 'foreign' or 'revoked'.
const REVOKE_REFRESH_TOKEN = `
local value = redis.call('GET', KEYS[1])
if not value then return 'missing' end
local ok, record = pcall(cjson.decode, value)
if not ok or type(record) ~= 'table' or type(record.sid) ~= 'string' then return 'missing' end
if record.client_id ~= ARGV[1] then return 'foreign' end
redis.call('SET', ARGV[2] .. 'revoked-session:' .. record.sid, '1', 'EX', ARGV[3])
redis.call('DEL', KEYS[1])
return 'revoked'
`

interface RedisWithScripts extends Redis {
  exchangeRefreshToken: (key: string, clientId: string, prefix: string, scope: string, ttl: number, audience: string, allowedAudiences: string) => Promise<[string, string?]>
  revokeRefreshToken: (key: string, clientId: string, prefix: string, ttl: number) => Promise<string>
}

/** The store in Redis. `redis` applies `prefix` to every key it is given. */
export function redisStore (client: Redis, prefix: string): Store {
  const redis = client as RedisWithScripts
  redis.defineCommand('exchangeRefreshToken', { numberOfKeys: 1, lua: EXCHANGE_REFRESH_TOKEN })
  redis.defineCommand('revokeRefreshToken', { numberOfKeys: 1, lua: REVOKE_REFRESH_TOKEN })
  return {
    kind: 'redis',
    dependency: 'redis',
    async putRefreshToken (hash, record) {
      await redis.set(refreshKey(hash), JSON.stringify(record), 'EXAT', record.exp)
    },
    async getRefreshToken (hash) {
      const value = await redis.get(refreshKey(hash))
      return value === null ? undefined : JSON.parse(value) as RefreshTokenRecord
    },
    async exchangeRefreshToken (hash, request) {
      const [status, value] = await redis.exchangeRefreshToken(refreshKey(hash), request.clientId, prefix, request.scope,
        request.sessionTtl, request.audience, JSON.stringify(request.allowedAudiences))
      if (status === 'ok' && value !== undefined) return { status, record: JSON.parse(value) as RefreshTokenRecord }
      return { status: status as Exclude<ExchangeOutcome['status'], 'ok'> }
    },
    async revokeRefreshToken (hash, clientId, sessionTtl) {
      return await redis.revokeRefreshToken(refreshKey(hash), clientId, prefix, sessionTtl) as 'missing' | 'foreign' | 'revoked'
    },
    async denyAccessToken (jti, exp) {
      await redis.set(denyKey(jti), '1', 'EXAT', exp)
    },
    async isRevoked (jti, sid) {
      const names = sid === undefined ? [denyKey(jti)] : [denyKey(jti), sessionKey(sid)]
      return (await redis.exists(...names)) > 0
    },
    async isSessionRevoked (sid) {
      return (await redis.exists(sessionKey(sid))) > 0
    },
    async recordOnce (key, exp) {
      return (await redis.set(key, '1', 'EXAT', exp, 'NX')) !== null
    },
    sharedCache: {
      get: async (key) => await redis.get(key),
      set: async (key, value, ttlMs) => { await redis.set(key, value, 'PX', ttlMs) },
      del: async (key) => { await redis.del(key) }
    },
    close: () => {}
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

const SWEEP_INTERVAL_MS = 10 * 60_000

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
    sharedCache: undefined,
    close: () => { clearInterval(sweeper) }
  }
}
