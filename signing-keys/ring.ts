// This instance's view of the keys kept in the database: it publishes every
// stored key and signs with the current one. Every POLL_MS it reads the
// keys' states (one small query; the sealed keys only when they changed), so
// a change made anywhere (another instance, the CLI, the admin API) is seen
// within that time; every STEP_MS it takes the steps that are due, unless
// another instance holds the keys' lock and takes them. The view is swapped whole, so the
// JWKS, the discovery document and the signing key change together.
import { createPublicKey, type KeyObject } from 'node:crypto'
import { ConfigError } from '../plugins/config.ts'
import { DependencyError } from '../plugins/errors.ts'
import { createKeys, publicJwk, type Keys, type KeyInfo } from '../plugins/keys.ts'
import type { Database } from '../storage/database.ts'
import type { SigningAlgorithm } from './algorithms.ts'
import { KeyDecryptionError, openWithAny } from './encryption.ts'
import type { AdditionalKey } from './pem.ts'
import { ensureSigningKey, listKeys, readSealedKeys, rewrapKeys, REMOVAL_MARGIN_MS, scheduledStep, type KeyPolicy, type SealedKey, type StoredKey } from './stored.ts'

/** How often an instance reads the stored keys' states, milliseconds: a change is seen within a second. */
export const POLL_MS = 500
/** How often an instance takes the due steps: the schedule's margins are hours, the lock is taken once per step. */
export const STEP_MS = 5000

export interface KeyRingLog {
  info: (fields: object, message: string) => void
  warn: (fields: object, message: string) => void
  error: (fields: object, message: string) => void
}

export interface KeyRingOptions {
  db: Database
  kek: Buffer
  /** KEY_ENCRYPTION_KEY_PREVIOUS: keys sealed with it still open, and are sealed again with `kek` */
  previousKek?: Buffer
  policy: KeyPolicy
  /** milliseconds since the epoch: Date.now, or a test's clock */
  clock: () => number
  log: KeyRingLog
  issuer: string
  audience: string
  /** public keys from the settings, published besides the stored ones */
  additionalKeys: AdditionalKey[]
  /** the settings' signing key: stored on the first start in this mode, else published while it is not stored */
  settingsKey: { privateKey: KeyObject, publicKey: KeyObject, algorithm: SigningAlgorithm } | undefined
  /** look at the stored keys every this many milliseconds; 0: only when refresh() is called (tests) */
  pollMs?: number
}

export interface KeyRing {
  /** the keys as they are now; a stable object whose reads follow every change */
  readonly keys: Keys
  /** the clock the life cycle runs on (KeyRingOptions.clock): changes made elsewhere, the admin API's, use it too */
  readonly clock: () => number
  /** whether this instance signs: false once its view is older than the removal margin */
  signing: () => boolean
  /** whether the keys were last looked at longer ago than a few polls (the process was paused) */
  stale: () => boolean
  /** takes the due steps now and reads the keys again (tests, the admin API after a change, a paused process) */
  refresh: () => Promise<void>
  close: () => void
}

/** The view's identity: what a change of state or schedule changes. */
const fingerprint = (keys: StoredKey[]): string =>
  keys.map((key) => `${key.kid}:${key.state}:${key.activateAfter?.getTime() ?? ''}:${key.removeAfter?.getTime() ?? ''}`).join(',')

function lostKeyError (err: KeyDecryptionError): ConfigError {
  return new ConfigError('KEY_ENCRYPTION_KEY', `does not decrypt the signing key ${err.kid} stored in the database; give the key-encryption key the keys were stored with (no new key is made while stored keys exist)`)
}

/** Why the start cannot read the stored keys, in one line naming what to fix. */
function startFailure (err: unknown): Error {
  if (err instanceof KeyDecryptionError) return lostKeyError(err)
  if ((err as { code?: unknown }).code === '42P01') {
    return new ConfigError('KEY_STORE', 'is database, but the database has no signing_keys table: apply the migrations (`session-service migrate`, or MIGRATE_ON_START=true)')
  }
  return new Error(`cannot read the stored signing keys (KEY_STORE=database): ${(err as Error).message}`)
}

export async function openKeyRing (options: KeyRingOptions): Promise<KeyRing> {
  const { db, kek, policy, clock, log } = options
  const keks = options.previousKek === undefined ? [kek] : [kek, options.previousKek]
  let sealedWithPrevious = false
  const privateKeys = new Map<string, KeyObject>()
  let shownFingerprint = ''
  let view: Keys | undefined
  let viewedAt = 0

  // Private keys are opened once per kid; a key that does not open stops
  // the start, and later keeps the previous view.
  function build (stored: SealedKey[]): Keys {
    const current = stored.find((key) => key.state === 'current')
    if (current === undefined) throw new Error('no current signing key is stored')
    for (const key of stored) {
      if (privateKeys.has(key.kid)) continue
      const opened = openWithAny(keks, key.kid, key.sealed)
      privateKeys.set(key.kid, opened.privateKey)
      if (opened.sealedWith > 0) sealedWithPrevious = true
    }
    for (const kid of privateKeys.keys()) if (!stored.some((key) => key.kid === kid)) privateKeys.delete(kid)
    const privateKey = privateKeys.get(current.kid) as KeyObject
    const others: AdditionalKey[] = stored.filter((key) => key !== current)
      .map((key) => ({ publicKey: createPublicKey(privateKeys.get(key.kid) as KeyObject), algorithm: key.algorithm }))
    const settingsKey = options.settingsKey
    const extra = settingsKey === undefined ? [] : [{ publicKey: settingsKey.publicKey, algorithm: settingsKey.algorithm }]
    const keys = createKeys({
      privateKey,
      publicKey: createPublicKey(privateKey),
      algorithm: current.algorithm,
      additionalKeys: [...others, ...extra, ...options.additionalKeys],
      issuer: options.issuer,
      audience: options.audience
    })
    const states = new Map(stored.map((key) => [key.kid, key]))
    const inventory: KeyInfo[] = keys.inventory.map((info) => {
      const key = states.get(info.kid)
      return key === undefined ? info : { ...info, state: key.state, createdAt: key.createdAt }
    })
    return { ...keys, inventory }
  }

  async function load (): Promise<void> {
    if (fingerprint(await listKeys(db)) !== shownFingerprint || view === undefined) {
      const stored = await readSealedKeys(db)
      const before = view?.kid
      view = build(stored)
      shownFingerprint = fingerprint(stored)
      if (before !== undefined && before !== view.kid) log.info({ kid: view.kid, previous: before }, 'signing with the new current key')
    }
    viewedAt = clock()
    if (sealedWithPrevious && options.previousKek !== undefined) {
      const kids = await rewrapKeys(db, kek, options.previousKek, clock())
      sealedWithPrevious = false
      if (kids.length > 0) log.info({ kids }, 'sealed the stored signing keys again with the current KEY_ENCRYPTION_KEY')
    }
  }

  const imported = options.settingsKey
  const first = await ensureSigningKey(db, kek, policy, clock(), imported).catch((err: unknown) => { throw startFailure(err) })
  if (first !== undefined) {
    log.info({ kid: first.kid }, first.action === 'imported'
      ? 'stored the configured signing key in the database: it keeps signing, and the settings may drop it'
      : 'no signing key was stored: made one, and it signs from now')
  }
  try {
    // The stored keys must open before any step: a start with another
    // key-encryption key would otherwise seal a new key with it.
    await load()
    if (await scheduledStep(db, kek, policy, clock())) await load()
  } catch (err) {
    throw startFailure(err)
  }

  if (imported !== undefined) {
    const kid = publicJwk(imported.publicKey, imported.algorithm).kid
    if (!privateKeys.has(kid)) {
      log.warn({ kid }, 'the configured signing key (JWT_PRIVATE_KEY) is not a stored key: it is published so that its tokens stay valid, but the stored keys sign; remove it from the settings once its tokens have expired')
    }
  }

  let failing = false
  let attemptedAt = clock()
  let steppedAt = clock()
  const refresh = async (step: boolean): Promise<void> => {
    attemptedAt = clock()
    try {
      if (step || clock() - steppedAt >= STEP_MS) {
        await scheduledStep(db, kek, policy, clock())
        steppedAt = clock()
      }
      await load()
      if (failing) log.info({}, 'the stored signing keys are read again')
      failing = false
    } catch (err) {
      // Said once per run of failures; the previous view serves meanwhile.
      if (!failing) {
        const message = err instanceof KeyDecryptionError ? lostKeyError(err).message : (err as Error).message
        log.error({ cause: message }, 'could not read the stored signing keys; the previous view serves until they are read')
      }
      failing = true
    }
  }

  // One look at a time: a slow database does not pile them up.
  let running: Promise<void> | undefined
  const look = async (step: boolean): Promise<void> => {
    running ??= refresh(step).finally(() => { running = undefined })
    await running
  }
  const pollMs = options.pollMs ?? POLL_MS
  const timer = pollMs > 0 ? setInterval(() => { look(false).catch(() => {}) }, pollMs) : undefined
  timer?.unref()

  const currentView = (): Keys => view as Keys
  const signing = (): boolean => clock() - viewedAt <= REMOVAL_MARGIN_MS
  const keys: Keys = {
    get kid () { return currentView().kid },
    get algorithm () { return currentView().algorithm },
    get algorithms () { return currentView().algorithms },
    get jwksBody () { return currentView().jwksBody },
    get inventory () { return currentView().inventory },
    // A view older than the removal margin may sign with a key the others
    // have retired and that leaves the JWKS before the token expires.
    sign: (claims) => {
      if (!signing()) throw new DependencyError('postgresql', new Error('the stored signing keys have not been read for too long'))
      return currentView().sign(claims)
    },
    check: (token, checkOptions) => currentView().check(token, checkOptions)
  }
  return {
    keys,
    clock,
    // A look that started before the caller's change may have missed it: wait for it, then look again.
    refresh: async () => {
      await running
      await look(true)
    },
    // By the last attempt, not the last success: while the database is
    // down, requests are not held up by a look each.
    signing,
    stale: () => clock() - attemptedAt > Math.max(5 * pollMs, 5000),
    close: () => { if (timer !== undefined) clearInterval(timer) }
  }
}
