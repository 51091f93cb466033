// Signing keys kept in the database (KEY_STORE=database) and their life
// cycle: every change (the scheduled steps, a rotation, a retirement) is one
// transaction under one advisory lock, so instances, the CLI and the admin
// API never make two changes from one reading; the partial unique indexes of
// migration 010 hold even if they did. Times come from the caller's clock.
import { createPublicKey, type KeyObject } from 'node:crypto'
import type { Settings } from '../plugins/config.ts'
import type { Database, Queryable } from '../storage/database.ts'
import { publicJwk, type PublicJwk } from '../plugins/keys.ts'
import type { SigningAlgorithm } from './algorithms.ts'
import { openWithAny, sealPrivateKey } from './encryption.ts'
import { generateSigningKeyPairAsync } from './generate.ts'

export type KeyState = 'next' | 'current' | 'retired'

export interface StoredKey {
  kid: string
  algorithm: SigningAlgorithm
  state: KeyState
  publicJwk: PublicJwk
  createdAt: Date
  /** next: the earliest time it signs */
  activateAfter: Date | null
  activatedAt: Date | null
  retiredAt: Date | null
  /** retired: when it leaves the JWKS (its last token has expired by then) */
  removeAfter: Date | null
}

export interface SealedKey extends StoredKey {
  sealed: Buffer
}

export interface KeyPolicy {
  /** how long a key is published before it may sign */
  publishAheadMs: number
  /** how long a key signs before a scheduled rotation replaces it; 0: no scheduled rotation */
  rotationIntervalMs: number
  /** the longest lifetime of a token this service signs (ACCESS_TOKEN_TTL) */
  tokenLifetimeMs: number
  /** the algorithm of keys made without one named */
  algorithm: SigningAlgorithm
}

/** The policy that the settings give. */
export function keyPolicy (settings: Pick<Settings, 'keyPublishAhead' | 'keyRotationInterval' | 'accessTokenTtl' | 'algorithm'>): KeyPolicy {
  return {
    publishAheadMs: settings.keyPublishAhead * 1000,
    rotationIntervalMs: settings.keyRotationInterval * 1000,
    tokenLifetimeMs: settings.accessTokenTtl * 1000,
    algorithm: settings.algorithm
  }
}

/**
 * How long a retired key stays published after its last possible token
 * expired: clock differences between instances, and an instance that has
 * not yet seen the retirement (keys/ring.ts stops signing when its view of
 * the keys is older than this).
 */
export const REMOVAL_MARGIN_MS = 5 * 60_000

/**
 * Stored keys at most: every one is in the JWKS, which gateways fetch and
 * cache. The schedule keeps two or three; only rotations at once, one after
 * another, come near it, and each retired key leaves by itself.
 */
export const MAX_STORED_KEYS = 20

/** Why a rotation that must make a key cannot: the caller has no key-encryption key. */
export const KEK_NEEDED = 'KEY_ENCRYPTION_KEY: is required to make a signing key (or a path in KEY_ENCRYPTION_KEY_FILE): give the key-encryption key the service seals its keys with'

/** The actor of the steps the service takes by itself. */
export const SCHEDULER_ACTOR = 'scheduler'

/** A change the life cycle does not allow, said so that an operator can act. */
export class KeyRuleError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'KeyRuleError'
  }
}

export class KeyNotFoundError extends Error {
  readonly kid: string
  constructor (kid: string) {
    super(`no signing key ${kid}`)
    this.name = 'KeyNotFoundError'
    this.kid = kid
  }
}

// One fixed advisory-lock key for every change of signing keys (the
// migrations use another).
const KEYS_LOCK = 727_274_001

const COLUMNS = 'kid, algorithm, public_jwk, state, created_at, activate_after, activated_at, retired_at, remove_after'
// current first, then next, then retired, newest first within each
const ORDER = "ORDER BY CASE state WHEN 'current' THEN 0 WHEN 'next' THEN 1 ELSE 2 END, created_at DESC, kid"

interface KeyRow {
  kid: string
  algorithm: SigningAlgorithm
  public_jwk: PublicJwk
  state: KeyState
  created_at: Date
  activate_after: Date | null
  activated_at: Date | null
  retired_at: Date | null
  remove_after: Date | null
  private_key?: Uint8Array
}

function fromRow (row: KeyRow): StoredKey {
  return {
    kid: row.kid,
    algorithm: row.algorithm,
    state: row.state,
    publicJwk: typeof row.public_jwk === 'string' ? JSON.parse(row.public_jwk) as PublicJwk : row.public_jwk,
    createdAt: new Date(row.created_at),
    activateAfter: row.activate_after === null ? null : new Date(row.activate_after),
    activatedAt: row.activated_at === null ? null : new Date(row.activated_at),
    retiredAt: row.retired_at === null ? null : new Date(row.retired_at),
    removeAfter: row.remove_after === null ? null : new Date(row.remove_after)
  }
}

/** The stored keys, without their private parts: current, next, then retired. */
export async function listKeys (db: Queryable): Promise<StoredKey[]> {
  const { rows } = await db.query<KeyRow>(`SELECT ${COLUMNS} FROM signing_keys ${ORDER}`)
  return rows.map(fromRow)
}

/** The stored keys with their sealed private parts. */
export async function readSealedKeys (db: Queryable): Promise<SealedKey[]> {
  const { rows } = await db.query<KeyRow>(`SELECT ${COLUMNS}, private_key FROM signing_keys ${ORDER}`)
  return rows.map((row) => ({ ...fromRow(row), sealed: Buffer.from(row.private_key ?? new Uint8Array()) }))
}

export interface KeyEvent {
  id: number
  kid: string
  action: 'created' | 'imported' | 'activated' | 'retired' | 'removed' | 'rescheduled' | 'rewrapped'
  actor: string
  at: Date
  details: Record<string, unknown>
}

/** The history of the keys, newest first; `before`: only events older than that id. */
export async function listKeyEvents (db: Queryable, options: { limit: number, before?: number }): Promise<KeyEvent[]> {
  const { rows } = await db.query<KeyEvent & { id: string | number }>(
    'SELECT id, kid, action, actor, at, details FROM signing_key_events WHERE ($1::bigint IS NULL OR id < $1) ORDER BY id DESC LIMIT $2',
    [options.before ?? null, options.limit])
  return rows.map((row) => ({ ...row, id: Number(row.id), at: new Date(row.at) }))
}

async function recordEvent (tx: Queryable, kid: string, action: KeyEvent['action'], actor: string, at: number, details: Record<string, unknown> = {}): Promise<void> {
  await tx.query('INSERT INTO signing_key_events (kid, action, actor, at, details) VALUES ($1, $2, $3, $4, $5)',
    [kid, action, actor, new Date(at), JSON.stringify(details)])
}

/** A private key of the algorithm, new, with its published form. */
export async function newKey (algorithm: SigningAlgorithm): Promise<{ privateKey: KeyObject, jwk: PublicJwk }> {
  const pair = await generateSigningKeyPairAsync(algorithm)
  return { privateKey: pair.privateKey, jwk: publicJwk(pair.publicKey, algorithm) }
}

interface NewRow {
  privateKey: KeyObject
  algorithm: SigningAlgorithm
  state: 'next' | 'current'
  at: number
  activateAfter?: number
}

async function insertKey (tx: Queryable, kek: Buffer, row: NewRow): Promise<PublicJwk> {
  const jwk = publicJwk(createPublicKey(row.privateKey), row.algorithm)
  await tx.query(
    `INSERT INTO signing_keys (kid, algorithm, public_jwk, private_key, state, created_at, activate_after, activated_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
    [jwk.kid, row.algorithm, JSON.stringify(jwk), sealPrivateKey(kek, jwk.kid, row.privateKey), row.state, new Date(row.at),
      row.activateAfter === undefined ? null : new Date(row.activateAfter), row.state === 'current' ? new Date(row.at) : null])
  return jwk
}

/** Runs `work` in one transaction holding the keys' lock; 'try' gives undefined at once when another holds it. */
export async function underKeysLock<T> (db: Database, mode: 'wait' | 'try', work: (tx: Queryable) => Promise<T>): Promise<T | undefined> {
  return await db.transaction(async (tx) => {
    if (mode === 'wait') {
      await tx.query('SELECT pg_advisory_xact_lock($1)', [KEYS_LOCK])
    } else {
      const { rows } = await tx.query<{ locked: boolean }>('SELECT pg_try_advisory_xact_lock($1) AS locked', [KEYS_LOCK])
      if (rows[0]?.locked !== true) return undefined
    }
    return await work(tx)
  })
}

/** The current key retires (published until its last token expired) and `next` signs from `at`. */
async function promote (tx: Queryable, next: StoredKey, current: StoredKey | undefined, at: number, actor: string, policy: KeyPolicy): Promise<void> {
  if (current !== undefined) {
    const removeAfter = at + policy.tokenLifetimeMs + REMOVAL_MARGIN_MS
    await tx.query("UPDATE signing_keys SET state = 'retired', retired_at = $2, remove_after = $3 WHERE kid = $1 AND state = 'current'",
      [current.kid, new Date(at), new Date(removeAfter)])
    await recordEvent(tx, current.kid, 'retired', actor, at, { remove_after: new Date(removeAfter).toISOString(), replaced_by: next.kid })
  }
  await tx.query("UPDATE signing_keys SET state = 'current', activate_after = NULL, activated_at = $2 WHERE kid = $1 AND state = 'next'",
    [next.kid, new Date(at)])
  await recordEvent(tx, next.kid, 'activated', actor, at, { published_since: next.createdAt.toISOString() })
}

async function removeKey (tx: Queryable, key: StoredKey, at: number, actor: string, details: Record<string, unknown>): Promise<void> {
  await tx.query('DELETE FROM signing_keys WHERE kid = $1', [key.kid])
  await recordEvent(tx, key.kid, 'removed', actor, at, details)
}

/**
 * A signing key where there is none (the first start in this mode): the
 * settings' key when given (tokens it signed stay valid and no gateway sees
 * a new kid), else a new one. Nothing when a key signs already: a stored key
 * is never replaced here, whatever happens to decrypt.
 */
export async function ensureSigningKey (db: Database, kek: Buffer, policy: KeyPolicy, at: number,
  imported: { privateKey: KeyObject, algorithm: SigningAlgorithm } | undefined): Promise<{ kid: string, action: 'imported' | 'created' } | undefined> {
  return await underKeysLock(db, 'wait', async (tx) => {
    const { rows } = await tx.query("SELECT 1 FROM signing_keys WHERE state = 'current'")
    if (rows.length > 0) return undefined
    const key = imported ?? { ...await newKey(policy.algorithm), algorithm: policy.algorithm }
    const jwk = await insertKey(tx, kek, { privateKey: key.privateKey, algorithm: key.algorithm, state: 'current', at })
    const action = imported === undefined ? 'created' : 'imported'
    await recordEvent(tx, jwk.kid, action, SCHEDULER_ACTOR, at, { algorithm: key.algorithm, state: 'current' })
    await recordEvent(tx, jwk.kid, 'activated', SCHEDULER_ACTOR, at)
    return { kid: jwk.kid, action }
  })
}

/**
 * The steps that are due at `at`, taken by whichever instance holds the
 * lock (the others skip this round): retired keys whose last token has
 * expired leave; a next key signs once it is due and has been published
 * KEY_PUBLISH_AHEAD; and a next key is made KEY_PUBLISH_AHEAD before the
 * current key has signed for KEY_ROTATION_INTERVAL. Returns whether anything changed.
 */
export async function scheduledStep (db: Database, kek: Buffer, policy: KeyPolicy, at: number): Promise<boolean> {
  const changed = await underKeysLock(db, 'try', async (tx) => {
    const keys = await listKeys(tx)
    let changes = 0
    for (const key of keys) {
      if (key.state === 'retired' && (key.removeAfter?.getTime() ?? Infinity) <= at) {
        await removeKey(tx, key, at, SCHEDULER_ACTOR, { reason: 'its last token has expired' })
        changes++
      }
    }
    const current = keys.find((key) => key.state === 'current')
    const next = keys.find((key) => key.state === 'next')
    if (next !== undefined) {
      if ((next.activateAfter?.getTime() ?? Infinity) <= at && next.createdAt.getTime() + policy.publishAheadMs <= at) {
        await promote(tx, next, current, at, SCHEDULER_ACTOR, policy)
        changes++
      }
    } else if (current !== undefined && policy.rotationIntervalMs > 0) {
      const due = (current.activatedAt?.getTime() ?? at) + policy.rotationIntervalMs
      if (due - policy.publishAheadMs <= at) {
        const activateAfter = Math.max(due, at + policy.publishAheadMs)
        const key = await newKey(policy.algorithm)
        await insertKey(tx, kek, { privateKey: key.privateKey, algorithm: policy.algorithm, state: 'next', at, activateAfter })
        await recordEvent(tx, key.jwk.kid, 'created', SCHEDULER_ACTOR, at, { algorithm: policy.algorithm, state: 'next', activate_after: new Date(activateAfter).toISOString() })
        changes++
      }
    }
    return changes > 0
  })
  return changed === true
}

export interface RotationResult {
  kid: string
  algorithm: SigningAlgorithm
  /** 'current': it signs now; 'next': it signs from activateAfter */
  state: 'current' | 'next'
  activateAfter: Date | null
  /** the key that retired (with --now) */
  retired: string | undefined
  /** whether the key was made by this rotation (else the waiting next key was used) */
  created: boolean
}

/**
 * `keys rotate`: a next key (the waiting one, else a new one) that signs as
 * soon as it has been published KEY_PUBLISH_AHEAD. With `immediately`
 * (`--now`), it signs at once and the current key retires: gateways that
 * cached the JWKS before the key was published refuse its tokens until they
 * fetch it again; for a key that must stop signing now.
 */
export async function rotateKeys (db: Database, kek: Buffer | undefined, policy: KeyPolicy, at: number,
  options: { immediately: boolean, algorithm?: SigningAlgorithm, actor: string }): Promise<RotationResult> {
  const result = await underKeysLock(db, 'wait', async (tx) => {
    const keys = await listKeys(tx)
    const current = keys.find((key) => key.state === 'current')
    let next = keys.find((key) => key.state === 'next')
    let created = false
    if (next !== undefined && options.algorithm !== undefined && options.algorithm !== next.algorithm) {
      throw new KeyRuleError(`the next key ${next.kid} (${next.algorithm}) is waiting to sign; retire it first to rotate to ${options.algorithm}`)
    }
    if (next === undefined) {
      if (keys.length >= MAX_STORED_KEYS) {
        throw new KeyRuleError(`${keys.length} keys are stored, the most the JWKS publishes; retired keys leave once their tokens have expired (or retire one at once: \`keys retire <kid> --now\`, or {"now":true})`)
      }
      // The CLI may come without one when a waiting key is to be used.
      if (kek === undefined) throw new KeyRuleError(KEK_NEEDED)
      const algorithm = options.algorithm ?? policy.algorithm
      const key = await newKey(algorithm)
      const activateAfter = at + policy.publishAheadMs
      await insertKey(tx, kek, { privateKey: key.privateKey, algorithm, state: 'next', at, activateAfter })
      await recordEvent(tx, key.jwk.kid, 'created', options.actor, at, { algorithm, state: 'next', activate_after: new Date(activateAfter).toISOString() })
      next = (await listKeys(tx)).find((stored) => stored.kid === key.jwk.kid)
      created = true
    }
    if (next === undefined) throw new Error('the new key was not stored')
    if (options.immediately) {
      await promote(tx, next, current, at, options.actor, policy)
      return { kid: next.kid, algorithm: next.algorithm, state: 'current' as const, activateAfter: null, retired: current?.kid, created }
    }
    const earliest = next.createdAt.getTime() + policy.publishAheadMs
    let activateAfter = next.activateAfter?.getTime() ?? earliest
    if (!created && activateAfter > earliest) {
      activateAfter = earliest
      await tx.query('UPDATE signing_keys SET activate_after = $2 WHERE kid = $1', [next.kid, new Date(activateAfter)])
      await recordEvent(tx, next.kid, 'rescheduled', options.actor, at, { activate_after: new Date(activateAfter).toISOString() })
    }
    return { kid: next.kid, algorithm: next.algorithm, state: 'next' as const, activateAfter: new Date(activateAfter), retired: undefined, created }
  })
  if (result === undefined) throw new Error('the keys lock was not taken')
  return result
}

export interface RetirementResult {
  kid: string
  /** 'removed': it left the JWKS now; 'retired': it leaves at removeAfter */
  outcome: 'removed' | 'retired'
  removeAfter: Date | null
}

/**
 * `keys retire <kid>`: a next key leaves at once (it signed nothing); a
 * retired key leaves at once only with `immediately` (its tokens then fail
 * everywhere: for a key that leaked). The current key cannot retire: a
 * rotation replaces it.
 */
export async function retireKey (db: Database, kid: string, at: number, options: { immediately: boolean, actor: string }): Promise<RetirementResult> {
  const result = await underKeysLock(db, 'wait', async (tx) => {
    const key = (await listKeys(tx)).find((stored) => stored.kid === kid)
    if (key === undefined) throw new KeyNotFoundError(kid)
    if (key.state === 'current') {
      throw new KeyRuleError(`${kid} is the signing key; a rotation makes another key sign first (at once with now: \`keys rotate --now\`, or POST /admin/keys/rotate {"now":true}), and retires it`)
    }
    if (key.state === 'next') {
      await recordEvent(tx, kid, 'retired', options.actor, at, { never_signed: true })
      await removeKey(tx, key, at, options.actor, { reason: 'retired before it signed' })
      return { kid, outcome: 'removed' as const, removeAfter: null }
    }
    if (!options.immediately) {
      throw new KeyRuleError(`${kid} is retired already and leaves the JWKS at ${key.removeAfter?.toISOString() ?? '?'}, once its last token has expired; retiring it with now (\`--now\`, {"now":true}) removes it at once, and every token it signed stops being valid`)
    }
    await removeKey(tx, key, at, options.actor, { reason: 'removed before its tokens expired', remove_after: key.removeAfter?.toISOString() })
    return { kid, outcome: 'removed' as const, removeAfter: null }
  })
  if (result === undefined) throw new Error('the keys lock was not taken')
  return result
}

/**
 * While the key-encryption key changes (KEY_ENCRYPTION_KEY_PREVIOUS set):
 * every stored key sealed with the previous one is sealed again with the
 * current one, in one transaction. A key that opens with neither changes
 * nothing and throws KeyDecryptionError. Returns the kids sealed again.
 */
export async function rewrapKeys (db: Database, kek: Buffer, previous: Buffer, at: number): Promise<string[]> {
  const rewrapped = await underKeysLock(db, 'wait', async (tx) => {
    const done: string[] = []
    for (const key of await readSealedKeys(tx)) {
      const opened = openWithAny([kek, previous], key.kid, key.sealed)
      if (opened.sealedWith === 0) continue
      await tx.query('UPDATE signing_keys SET private_key = $2 WHERE kid = $1', [key.kid, sealPrivateKey(kek, key.kid, opened.privateKey)])
      await recordEvent(tx, key.kid, 'rewrapped', SCHEDULER_ACTOR, at)
      done.push(key.kid)
    }
    return done
  })
  return rewrapped ?? []
}
