// Each instance's own copy of the revocations in force, so that verifying
// and introspecting a token costs no round trip to Redis. The copy is loaded
// from PostgreSQL (which holds every revocation), kept current by a notice
// that the revoking instance publishes on Redis before it answers, and read
// again from PostgreSQL every few seconds for what a notice could not bring
// (a revocation made by an instance of an earlier release, a lost notice).
//
// It answers only while it can vouch for itself: its own heartbeat, published
// four times a second on the notices' channel, must come back through the
// subscription. Without it (Redis or the subscription down, a failover in
// progress) or when full, checks go to Redis, until the subscription works
// again and the copy has been loaded anew.
import { randomBytes } from 'node:crypto'
import type { RecordSeal } from './record-seal.ts'
import type { Queryable } from './database.ts'
import { withTimeout } from '../plugins/errors.ts'
import { subscriberOf, type RedisClient } from './redis-commands.ts'

export type RevocationKind = 'access_token' | 'session'

export interface RevocationMirror {
  /**
   * Whether the access token `jti` or the session `sid` is revoked; undefined
   * when the copy cannot vouch for itself (the caller asks Redis).
   */
  check: (jti: string | undefined, sid: string | undefined) => boolean | undefined
  /** Adds a revocation made here and tells the other instances; resolves once the notice is published. */
  publish: (kind: RevocationKind, id: string, exp: number) => Promise<void>
  /** Subscribes, loads the copy and starts the heartbeat and the periodic read. */
  start: () => Promise<void>
  close: () => void
  /** Revocations held, and whether the copy answers checks. */
  stats: () => { entries: number, current: boolean }
}

export interface MirrorLog {
  info: (fields: object, message: string) => void
  warn: (fields: object, message: string) => void
}

export interface MirrorOptions {
  /** the main connection (applies the key prefix); notices go out through it */
  redis: RedisClient
  /** the channel of the notices, prefix included (channels take no key prefix) */
  channel: string
  db: Queryable
  /** notices are sealed with the secret of the Redis records: only an instance can write one */
  seal: RecordSeal
  /** revocations held at most; beyond, checks go to Redis until expiries make room */
  maxEntries: number
  log: MirrorLog
}

const HEARTBEAT_MS = 250
/** Without its own heartbeat back for this long, the copy stops answering (and is loaded anew once it is back). */
const HEARTBEAT_LOST_MS = 1000
/** How often recent revocations are read from PostgreSQL, and how far back each read goes. */
const SYNC_MS = 5000
const SYNC_OVERLAP_SECONDS = 30
const SWEEP_MS = 30_000
const START_WAIT_MS = 5000
const NOTICE_KEY = 'revocation-notice'
const KIND_CODES: Record<RevocationKind, string> = { access_token: 'a', session: 's' }
const MAX_ID_LENGTH = 512

interface RevocationRow { kind: RevocationKind, id: string, exp: number }

/** The revocations themselves: expiry (seconds since epoch) by id, one map per kind. */
class RevocationSet {
  readonly accessTokens = new Map<string, number>()
  readonly sessions = new Map<string, number>()
  /** A revocation was left out for want of room: the set is incomplete until loaded again. */
  overflowed = false

  readonly maxEntries: number

  constructor (maxEntries: number) {
    this.maxEntries = maxEntries
  }

  get size (): number {
    return this.accessTokens.size + this.sessions.size
  }

  add (kind: RevocationKind, id: string, exp: number): void {
    const map = kind === 'session' ? this.sessions : this.accessTokens
    const known = map.get(id)
    if (known !== undefined) {
      if (exp > known) map.set(id, exp)
      return
    }
    if (this.size >= this.maxEntries) {
      this.overflowed = true
      return
    }
    map.set(id, exp)
  }

  has (kind: RevocationKind, id: string, now: number): boolean {
    const exp = (kind === 'session' ? this.sessions : this.accessTokens).get(id)
    return exp !== undefined && exp > now
  }

  sweep (now: number): void {
    for (const map of [this.accessTokens, this.sessions]) {
      for (const [id, exp] of map) if (exp <= now) map.delete(id)
    }
  }
}

const nowSeconds = (): number => Math.floor(Date.now() / 1000)

/** Reads a notice's text back into a revocation; undefined for anything else. */
function parseNotice (text: string): RevocationRow | undefined {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    return undefined
  }
  if (!Array.isArray(value) || value.length !== 3) return undefined
  const [code, id, exp] = value as unknown[]
  const kind = (Object.keys(KIND_CODES) as RevocationKind[]).find((candidate) => KIND_CODES[candidate] === code)
  if (kind === undefined || typeof id !== 'string' || id === '' || id.length > MAX_ID_LENGTH || !Number.isSafeInteger(exp)) return undefined
  return { kind, id, exp: exp as number }
}

async function readRevocations (db: Queryable, since: Date | undefined): Promise<{ rows: RevocationRow[], readAt: Date }> {
  const { rows: [clock] } = await db.query<{ now: Date }>('SELECT now()')
  const recent = since === undefined ? '' : `AND revoked_at > $1::timestamptz - interval '${SYNC_OVERLAP_SECONDS} seconds'`
  const { rows } = await db.query<RevocationRow>(`SELECT kind, id, floor(extract(epoch FROM expires_at))::float8 AS exp
    FROM revocations WHERE expires_at > now() ${recent}`, since === undefined ? [] : [since])
  return { rows, readAt: clock?.now ?? new Date() }
}

/** The copy of one instance; see the top of this file. */
export function revocationMirror ({ redis, channel, db, seal, maxEntries, log }: MirrorOptions): RevocationMirror {
  let set = new RevocationSet(maxEntries)
  const instance = randomBytes(9).toString('base64url')
  const heartbeat = `heartbeat:${instance}`
  let lastHeartbeat = 0
  let loaded = false
  let loading: Promise<void> | undefined
  let lastRead: Date | undefined
  let subscriber: RedisClient | undefined
  const timers: NodeJS.Timeout[] = []
  let closed = false

  const current = (): boolean => loaded && !set.overflowed && Date.now() - lastHeartbeat < HEARTBEAT_LOST_MS

  // A fresh set, so that nothing missed while the copy was not current stays missed.
  async function load (): Promise<void> {
    loading ??= (async () => {
      try {
        const fresh = new RevocationSet(maxEntries)
        const { rows, readAt } = await readRevocations(db, undefined)
        for (const row of rows) fresh.add(row.kind, row.id, row.exp)
        // What arrived by notice during the read is in the old set.
        for (const [id, exp] of set.accessTokens) fresh.add('access_token', id, exp)
        for (const [id, exp] of set.sessions) fresh.add('session', id, exp)
        set = fresh
        lastRead = readAt
        loaded = true
        if (set.overflowed) log.warn({ revocations: rows.length, max: maxEntries }, 'more revocations than REVOCATIONS_IN_MEMORY_MAX: checks ask Redis')
      } finally {
        loading = undefined
      }
    })()
    await loading
  }

  async function readRecent (): Promise<void> {
    if (!loaded || loading !== undefined) return
    const { rows, readAt } = await readRevocations(db, lastRead)
    for (const row of rows) set.add(row.kind, row.id, row.exp)
    lastRead = readAt
  }

  async function receive (text: string): Promise<void> {
    if (text === heartbeat) {
      const gap = Date.now() - lastHeartbeat >= HEARTBEAT_LOST_MS
      lastHeartbeat = Date.now()
      // Back after a gap, notices may have been lost meanwhile; a load that
      // failed (PostgreSQL down) is tried again at each heartbeat.
      if (gap || !loaded) {
        loaded = false
        await load()
      }
      return
    }
    if (text.startsWith('heartbeat:')) return
    const opened = await seal.open(NOTICE_KEY, text)
    const row = opened === undefined ? undefined : parseNotice(opened)
    if (row !== undefined) set.add(row.kind, row.id, row.exp)
  }

  const warnOnce = (() => {
    let last = 0
    return (message: string, err: Error): void => {
      if (Date.now() - last < 10_000) return
      last = Date.now()
      log.warn({ cause: err.message }, message)
    }
  })()

  function every (ms: number, work: () => Promise<void> | void, failure: string): void {
    const timer = setInterval(() => {
      Promise.resolve().then(work).catch((err: Error) => { warnOnce(failure, err) })
    }, ms)
    timer.unref()
    timers.push(timer)
  }

  return {
    check (jti, sid) {
      if (!current()) return undefined
      const now = nowSeconds()
      return (jti !== undefined && set.has('access_token', jti, now)) || (sid !== undefined && set.has('session', sid, now))
    },
    async publish (kind, id, exp) {
      set.add(kind, id, exp)
      const notice = await seal.seal(NOTICE_KEY, JSON.stringify([KIND_CODES[kind], id, exp]))
      await redis.publish(channel, notice)
    },
    async start () {
      const connection = subscriberOf(redis, 'session-service-revocations')
      subscriber = connection
      connection.on('error', () => {}) // the main connection reports Redis trouble
      connection.on('node error', () => {})
      // A lost connection may have lost notices: stop answering at once.
      connection.on('close', () => { lastHeartbeat = 0 })
      connection.on('message', (_channel: string, text: string) => {
        receive(text).catch((err: Error) => { warnOnce('could not read a revocation notice', err) })
      })
      every(HEARTBEAT_MS, async () => { await redis.publish(channel, heartbeat) }, 'could not publish the revocations heartbeat')
      every(SYNC_MS, readRecent, 'could not read recent revocations from the database')
      every(SWEEP_MS, async () => {
        set.sweep(nowSeconds())
        // Room again after a revocation was left out: load the whole set anew.
        if (set.overflowed && set.size < maxEntries * 0.9) {
          loaded = false
          await load()
        }
      }, 'could not sweep expired revocations')
      try {
        await withTimeout(connection.subscribe(channel), START_WAIT_MS, 'redis')
        await load()
        if (closed) return
        log.info({ revocations: set.size }, 'revocations loaded into memory')
        await redis.publish(channel, heartbeat)
      } catch (err) {
        // Checks ask Redis meanwhile; the heartbeat tries again.
        warnOnce('could not load the revocations into memory', err as Error)
      }
    },
    close () {
      closed = true
      for (const timer of timers) clearInterval(timer)
      subscriber?.disconnect()
    },
    stats: () => ({ entries: set.size, current: current() })
  }
}
