// Refresh tokens, kept under the SHA-256 of the token. The rules of an
// exchange (ownership, scope narrowing, audience) are judged here, once, on
// the record read back; each backend only provides the step that must be
// atomic: marking a token used, so that of two concurrent exchanges one wins.
import type { RedisClient } from './redis-commands.ts'
import { guard as unrecorded, type Guard } from '../plugins/errors.ts'
import type { Queryable } from './database.ts'
import type { RecordSeal } from './record-seal.ts'
import { execAll, luaScript } from './redis-commands.ts'
import type { Revocations } from './revocations.ts'

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
  /** RFC 7638 thumbprint of the DPoP key the session is bound to (RFC 9449 §5); absent for bearer tokens */
  jkt?: string
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
  /** thumbprint of the key of the request's DPoP proof, if it has one: a bound session needs its own */
  jkt?: string
  /** how long a revoked session stays revoked, seconds */
  sessionTtl: number
}

/**
 * Outcomes of an exchange:
 *   missing  no such token (unknown, expired, forged, or its session was revoked by revocation)
 *   foreign  another client's token; left as it is
 *   revoked  the token's session is revoked
 *   reused   the token was exchanged before: its session is revoked now (RFC 9700 §4.14.2)
 *   scope    a scope beyond the session's was asked for; the token stays usable
 *   target   another audience than the session's was asked for; the token stays usable
 *   lost     the client may no longer use the session's audience; the token is left as it is
 *   key      the session is bound to a DPoP key the request did not prove; the token and its session are left as they are
 *   ok       the token is marked used, and its record returned
 */
export type ExchangeOutcome =
  | { status: 'missing' | 'foreign' | 'revoked' | 'reused' | 'scope' | 'target' | 'lost' | 'key' }
  | { status: 'ok', record: RefreshTokenRecord }

export interface RefreshTokens {
  put: (hash: string, record: RefreshTokenRecord) => Promise<void>
  get: (hash: string) => Promise<RefreshTokenRecord | undefined>
  /** Marks the token used, atomically: of two concurrent exchanges, one succeeds. */
  exchange: (hash: string, request: ExchangeRequest) => Promise<ExchangeOutcome>
  /** Revokes the token's session and forgets the token, if it is `clientId`'s. */
  revoke: (hash: string, clientId: string, sessionTtl: number) => Promise<'missing' | 'foreign' | 'revoked'>
}

/** What a backend keeps for one token: its record, checked, and whether it was exchanged. */
interface StoredToken {
  record: RefreshTokenRecord
  used: boolean
}

/** The part of the refresh tokens that differs by backend. */
interface RefreshTokenRows {
  put: (hash: string, record: RefreshTokenRecord) => Promise<void>
  read: (hash: string) => Promise<StoredToken | undefined>
  /** Marks the token used: 'ok' for the one call that did, 'used' for any other, 'missing' when it is gone. */
  markUsed: (hash: string) => Promise<'ok' | 'used' | 'missing'>
  delete: (hash: string) => Promise<void>
}

/**
 * Whether the request lacks the DPoP key the token is bound to. Judged before
 * anything else, used or not: whoever holds a bound token without its key
 * learns nothing of it, cannot spend it, and cannot end its session by
 * presenting it again (the token alone is worthless, so reuse detection has
 * nothing to stop).
 */
export const lacksBoundKey = (record: RefreshTokenRecord, request: ExchangeRequest): boolean =>
  record.jkt !== undefined && record.jkt !== request.jkt

/** The refusals of an exchange that depend on the record and the request only. */
export function judgeExchange (record: RefreshTokenRecord, request: ExchangeRequest): 'scope' | 'target' | 'lost' | undefined {
  if (request.scope !== '') {
    const granted = new Set(record.scope.split(/\s+/).filter((scope) => scope !== ''))
    if (request.scope.split(/\s+/).some((scope) => scope !== '' && !granted.has(scope))) return 'scope'
  }
  if (request.audience !== '' && request.audience !== record.aud) return 'target'
  if (!request.allowedAudiences.includes(record.aud)) return 'lost'
  return undefined
}

function refreshTokens (rows: RefreshTokenRows, revocations: Revocations): RefreshTokens {
  return {
    put: rows.put,
    async get (hash) {
      const stored = await rows.read(hash)
      if (stored === undefined) return undefined
      return stored.used ? { ...stored.record, used: true } : stored.record
    },
    async exchange (hash, request) {
      const stored = await rows.read(hash)
      if (stored === undefined) return { status: 'missing' }
      const { record } = stored
      if (record.client_id !== request.clientId) return { status: 'foreign' }
      if (await revocations.isSessionRevoked(record.sid)) return { status: 'revoked' }
      if (lacksBoundKey(record, request)) return { status: 'key' }
      if (!stored.used) {
        const refused = judgeExchange(record, request)
        if (refused !== undefined) return { status: refused }
        const marked = await rows.markUsed(hash)
        if (marked === 'ok') return { status: 'ok', record }
        if (marked === 'missing') return { status: 'missing' }
      }
      // Presented again, or beaten by a concurrent exchange of the same
      // token: either way two parties hold it, and the session ends.
      await revocations.revokeSession(record.sid, request.sessionTtl)
      return { status: 'reused' }
    },
    async revoke (hash, clientId, sessionTtl) {
      const stored = await rows.read(hash)
      if (stored === undefined) return 'missing'
      if (stored.record.client_id !== clientId) return 'foreign'
      await revocations.revokeSession(stored.record.sid, sessionTtl)
      await rows.delete(hash)
      return 'revoked'
    }
  }
}

/** The record as stored: without the used flag, which is kept beside it. */
function recordText (record: RefreshTokenRecord): string {
  const { used, ...fields } = record
  return JSON.stringify(fields)
}

const CONSUME_REFRESH_TOKEN = luaScript('consume-refresh-token')

type RedisWithRefreshScripts = RedisClient & {
  consumeRefreshToken: (key: string) => Promise<'ok' | 'used' | 'missing'>
}

// v2: a hash of the sealed record (r) and the used flag (u). Records of
// earlier releases were not sealed and are not trusted.
const refreshKey = (hash: string): string => `refresh:v2:${hash}`

/**
 * Refresh tokens in Redis (`redis` applies the key prefix), each with a TTL
 * of its expiry. A record is sealed (storage/record-seal.ts) and opened
 * before any rule is judged: a forged or moved record reads as missing.
 * The seal's secret is read from PostgreSQL, and failing that, so is the call;
 * sealing is local work otherwise, so only the Redis calls are recorded.
 */
export function redisRefreshTokens (client: RedisClient, seal: RecordSeal, revocations: Revocations, guard: Guard): RefreshTokens {
  const redis = client as RedisWithRefreshScripts
  redis.defineCommand('consumeRefreshToken', { numberOfKeys: 1, lua: CONSUME_REFRESH_TOKEN })
  return refreshTokens({
    async put (hash, record) {
      const key = refreshKey(hash)
      const sealed = await unrecorded('postgresql', seal.seal(key, recordText(record)))
      await guard('redis', execAll(redis.multi().hset(key, 'r', sealed).expireat(key, record.exp)))
    },
    async read (hash) {
      const key = refreshKey(hash)
      const [sealed, used] = await guard('redis', redis.hmget(key, 'r', 'u'))
      if (sealed === null || sealed === undefined) return undefined
      const text = await unrecorded('postgresql', seal.open(key, sealed))
      if (text === undefined) return undefined
      try {
        return { record: JSON.parse(text) as RefreshTokenRecord, used: used !== null && used !== undefined }
      } catch {
        return undefined
      }
    },
    markUsed: async (hash) => await guard('redis', redis.consumeRefreshToken(refreshKey(hash))),
    delete: async (hash) => { await guard('redis', redis.del(refreshKey(hash))) }
  }, revocations)
}

/** Refresh tokens in the SQL database (migrations/003); rows past their expiry read as absent. */
export function sqlRefreshTokens (db: Queryable, revocations: Revocations, guard: Guard): RefreshTokens {
  const read = async (hash: string): Promise<StoredToken | undefined> => {
    const { rows } = await guard('postgresql', db.query<StoredToken>('SELECT record, used FROM refresh_tokens WHERE token_hash = $1 AND expires_at > now()', [hash]))
    return rows[0]
  }
  return refreshTokens({
    async put (hash, record) {
      await guard('postgresql', db.query(`INSERT INTO refresh_tokens (token_hash, client_id, sid, record, expires_at, jkt)
        VALUES ($1, $2, $3, $4, to_timestamp($5), $6)`, [hash, record.client_id, record.sid, recordText(record), record.exp, record.jkt ?? null]))
    },
    read,
    async markUsed (hash) {
      // A concurrent update of the row waits for this one, then finds it used.
      const { rows } = await guard('postgresql', db.query('UPDATE refresh_tokens SET used = true WHERE token_hash = $1 AND NOT used AND expires_at > now() RETURNING token_hash', [hash]))
      if (rows.length > 0) return 'ok'
      return await read(hash) === undefined ? 'missing' : 'used'
    },
    delete: async (hash) => { await guard('postgresql', db.query('DELETE FROM refresh_tokens WHERE token_hash = $1', [hash])) }
  }, revocations)
}
