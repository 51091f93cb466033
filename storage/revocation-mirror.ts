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
// progress) or when full, checks go to Redis; a heartbeat missing from the
// sequence or a lost connection (notices may have been lost too) has the copy
// loaded anew, and checks go to Redis until it is.
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
/** Without its own heartbeat back for this long, the copy stops answering. */
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

/**
 * The heartbeat of one instance on the notices' channel: numbered, so that a
 * missing one (notices may have been lost with it) tells apart from a late
 * one (while this process was busy, say loading a large copy, none was sent).
 */
class Heartbeat {
  readonly #prefix = `heartbeat:${randomBytes(9).toString('base64url')}:`
  #sent = 0
  /** the number of the last one back (0: none since the connection opened), and when it came */
  #seen = 0
  #lastAt = 0

  next (): string {
    return `${this.#prefix}${++this.#sent}`
  }

  isOwn (text: string): boolean {
    return text.startsWith(this.#prefix)
  }

  /** Records one back; false when one before it never came. */
  receive (text: string): boolean {
    const sequence = Number(text.slice(this.#prefix.length))
    const complete = this.#seen === 0 || sequence === this.#seen + 1
    this.#seen = sequence
    this.#lastAt = Date.now()
    return complete
  }

  /** The connection closed: what was sent meanwhile is lost. */
  reset (): void {
    this.#seen = 0
    this.#lastAt = 0
  }

  get recent (): boolean {
    return Date.now() - this.#lastAt < HEARTBEAT_LOST_MS
  }
}

/** The copy of one instance; see the top of this file. */
class RevocationCopy implements RevocationMirror {
  readonly #options: MirrorOptions
  readonly #heartbeat = new Heartbeat()
  #set: RevocationSet
  #loaded = false
  /** Loaded never, or notices may have been lost since: the next heartbeat loads the copy anew. */
  #needsLoad = true
  #loading: Promise<void> | undefined
  #lastRead: Date | undefined
  #subscriber: RedisClient | undefined
  readonly #timers: NodeJS.Timeout[] = []
  #closed = false
  #lastWarning = 0

  constructor (options: MirrorOptions) {
    this.#options = options
    this.#set = new RevocationSet(options.maxEntries)
  }

  check (jti: string | undefined, sid: string | undefined): boolean | undefined {
    if (!this.#current()) return undefined
    const now = nowSeconds()
    return (jti !== undefined && this.#set.has('access_token', jti, now)) || (sid !== undefined && this.#set.has('session', sid, now))
  }

  async publish (kind: RevocationKind, id: string, exp: number): Promise<void> {
    this.#set.add(kind, id, exp)
    const notice = await this.#options.seal.seal(NOTICE_KEY, JSON.stringify([KIND_CODES[kind], id, exp]))
    await this.#options.redis.publish(this.#options.channel, notice)
  }

  async start (): Promise<void> {
    const subscribed = this.#subscribe()
    this.#every(HEARTBEAT_MS, async () => { await this.#sendHeartbeat() }, 'could not publish the revocations heartbeat')
    this.#every(SYNC_MS, async () => { await this.#readRecent() }, 'could not read recent revocations from the database')
    this.#every(SWEEP_MS, async () => {
      this.#set.sweep(nowSeconds())
      // Room again after a revocation was left out: load the whole set anew.
      if (this.#set.overflowed && this.#set.size < this.#options.maxEntries * 0.9) await this.#load()
    }, 'could not sweep expired revocations')
    try {
      await withTimeout(subscribed, START_WAIT_MS, 'redis')
      await this.#load()
      if (this.#closed) return
      this.#options.log.info({ revocations: this.#set.size }, 'revocations loaded into memory')
      await this.#sendHeartbeat()
    } catch (err) {
      // Checks ask Redis meanwhile; the heartbeat tries again.
      this.#warn('could not load the revocations into memory', err as Error)
    }
  }

  close (): void {
    this.#closed = true
    for (const timer of this.#timers) clearInterval(timer)
    this.#subscriber?.disconnect()
  }

  stats (): { entries: number, current: boolean } {
    return { entries: this.#set.size, current: this.#current() }
  }

  #current (): boolean {
    return this.#loaded && !this.#set.overflowed && this.#heartbeat.recent
  }

  /** Resolves once subscribed. */
  #subscribe (): Promise<unknown> {
    const { connection, subscribed } = subscriberOf(this.#options.redis, 'session-service-revocations', this.#options.channel)
    this.#subscriber = connection
    connection.on('error', () => {}) // the main connection reports Redis trouble
    connection.on('node error', () => {})
    // A lost connection may have lost notices: stop answering at once.
    connection.on('close', () => {
      this.#heartbeat.reset()
      this.#needsLoad = true
    })
    connection.on('message', (_channel: string, text: string) => {
      this.#receive(text).catch((err: Error) => { this.#warn('could not read a revocation notice', err) })
    })
    return subscribed
  }

  async #sendHeartbeat (): Promise<void> {
    await this.#options.redis.publish(this.#options.channel, this.#heartbeat.next())
  }

  async #receive (text: string): Promise<void> {
    if (this.#heartbeat.isOwn(text)) {
      if (!this.#heartbeat.receive(text)) this.#needsLoad = true
      if (this.#needsLoad && this.#loading === undefined) await this.#load()
      return
    }
    if (text.startsWith('heartbeat:')) return
    const opened = await this.#options.seal.open(NOTICE_KEY, text)
    const row = opened === undefined ? undefined : parseNotice(opened)
    if (row !== undefined) this.#set.add(row.kind, row.id, row.exp)
  }

  // A fresh set, so that nothing missed while the copy was not current stays missed.
  async #load (): Promise<void> {
    this.#loading ??= (async () => {
      this.#loaded = false
      this.#needsLoad = false
      try {
        const fresh = new RevocationSet(this.#options.maxEntries)
        const { rows, readAt } = await readRevocations(this.#options.db, undefined)
        for (const row of rows) fresh.add(row.kind, row.id, row.exp)
        // What arrived by notice during the read is in the old set.
        for (const [id, exp] of this.#set.accessTokens) fresh.add('access_token', id, exp)
        for (const [id, exp] of this.#set.sessions) fresh.add('session', id, exp)
        this.#set = fresh
        this.#lastRead = readAt
        this.#loaded = true
        if (fresh.overflowed) this.#options.log.warn({ revocations: rows.length, max: this.#options.maxEntries }, 'more revocations than REVOCATIONS_IN_MEMORY_MAX: checks ask Redis')
      } catch (err) {
        this.#needsLoad = true
        throw err
      } finally {
        this.#loading = undefined
      }
    })()
    await this.#loading
  }

  async #readRecent (): Promise<void> {
    if (!this.#loaded || this.#loading !== undefined) return
    const { rows, readAt } = await readRevocations(this.#options.db, this.#lastRead)
    for (const row of rows) this.#set.add(row.kind, row.id, row.exp)
    this.#lastRead = readAt
  }

  #every (ms: number, work: () => Promise<void>, failure: string): void {
    const timer = setInterval(() => { work().catch((err: Error) => { this.#warn(failure, err) }) }, ms)
    timer.unref()
    this.#timers.push(timer)
  }

  /** At most one warning per 10 s: a Redis or PostgreSQL outage fails every timer. */
  #warn (message: string, err: Error): void {
    if (Date.now() - this.#lastWarning < 10_000) return
    this.#lastWarning = Date.now()
    this.#options.log.warn({ cause: err.message }, message)
  }
}

/** The copy of one instance; see the top of this file. */
export function revocationMirror (options: MirrorOptions): RevocationMirror {
  return new RevocationCopy(options)
}
