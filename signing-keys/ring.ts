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

/** Keys whose every read goes to the view of the moment; signing also asks whether the view may sign. */
function followingKeys (view: () => Keys, signing: () => boolean): Keys {
  return {
    get kid () { return view().kid },
    get algorithm () { return view().algorithm },
    get algorithms () { return view().algorithms },
    get jwksBody () { return view().jwksBody },
    get inventory () { return view().inventory },
    // A view older than the removal margin may sign with a key the others
    // have retired and that leaves the JWKS before the token expires.
    sign: (claims) => {
      if (!signing()) throw new DependencyError('postgresql', new Error('the stored signing keys have not been read for too long'))
      return view().sign(claims)
    },
    check: (token, checkOptions) => view().check(token, checkOptions)
  }
}

class StoredKeyRing implements KeyRing {
  readonly keys: Keys
  readonly clock: () => number
  private readonly options: KeyRingOptions
  private readonly keks: Buffer[]
  private readonly pollMs: number
  /** private keys opened so far, by kid: each is opened once */
  private readonly privateKeys = new Map<string, KeyObject>()
  private sealedWithPrevious = false
  private shownFingerprint = ''
  private view: Keys | undefined
  private viewedAt = 0
  private attemptedAt: number
  private steppedAt: number
  private failing = false
  private running: Promise<void> | undefined
  private timer: NodeJS.Timeout | undefined

  constructor (options: KeyRingOptions) {
    this.options = options
    this.clock = options.clock
    this.keks = options.previousKek === undefined ? [options.kek] : [options.kek, options.previousKek]
    this.pollMs = options.pollMs ?? POLL_MS
    this.attemptedAt = this.clock()
    this.steppedAt = this.clock()
    this.keys = followingKeys(() => this.view as Keys, () => this.signing())
  }

  /** The first key if none is stored, the keys opened (before any step), the due steps, then the poll. */
  async start (): Promise<void> {
    const { db, kek, policy, log, settingsKey } = this.options
    const first = await ensureSigningKey(db, kek, policy, this.clock(), settingsKey).catch((err: unknown) => { throw startFailure(err) })
    if (first !== undefined) {
      log.info({ kid: first.kid }, first.action === 'imported'
        ? 'stored the configured signing key in the database: it keeps signing, and the settings may drop it'
        : 'no signing key was stored: made one, and it signs from now')
    }
    try {
      // The stored keys must open before any step: a start with another
      // key-encryption key would otherwise seal a new key with it.
      await this.load()
      if (await scheduledStep(db, kek, policy, this.clock())) await this.load()
    } catch (err) {
      throw startFailure(err)
    }
    if (settingsKey !== undefined) {
      const kid = publicJwk(settingsKey.publicKey, settingsKey.algorithm).kid
      if (!this.privateKeys.has(kid)) {
        log.warn({ kid }, 'the configured signing key (JWT_PRIVATE_KEY) is not a stored key: it is published so that its tokens stay valid, but the stored keys sign; remove it from the settings once its tokens have expired')
      }
    }
    if (this.pollMs > 0) {
      this.timer = setInterval(() => { this.look(false).catch(() => {}) }, this.pollMs)
      this.timer.unref()
    }
  }

  /** Opens the keys not opened yet and forgets those no longer stored; a key that does not open throws. */
  private openKeys (stored: SealedKey[]): void {
    for (const key of stored) {
      if (this.privateKeys.has(key.kid)) continue
      const opened = openWithAny(this.keks, key.kid, key.sealed)
      this.privateKeys.set(key.kid, opened.privateKey)
      if (opened.sealedWith > 0) this.sealedWithPrevious = true
    }
    for (const kid of this.privateKeys.keys()) if (!stored.some((key) => key.kid === kid)) this.privateKeys.delete(kid)
  }

  /** The view of `stored`: the current key signs; the others, the settings' key and additional keys are published. */
  private build (stored: SealedKey[]): Keys {
    const current = stored.find((key) => key.state === 'current')
    if (current === undefined) throw new Error('no current signing key is stored')
    this.openKeys(stored)
    const privateKey = this.privateKeys.get(current.kid) as KeyObject
    const others: AdditionalKey[] = stored.filter((key) => key !== current)
      .map((key) => ({ publicKey: createPublicKey(this.privateKeys.get(key.kid) as KeyObject), algorithm: key.algorithm }))
    const { settingsKey } = this.options
    const extra = settingsKey === undefined ? [] : [{ publicKey: settingsKey.publicKey, algorithm: settingsKey.algorithm }]
    const keys = createKeys({
      privateKey,
      publicKey: createPublicKey(privateKey),
      algorithm: current.algorithm,
      additionalKeys: [...others, ...extra, ...this.options.additionalKeys],
      issuer: this.options.issuer,
      audience: this.options.audience
    })
    const states = new Map(stored.map((key) => [key.kid, key]))
    const inventory: KeyInfo[] = keys.inventory.map((info) => {
      const key = states.get(info.kid)
      return key === undefined ? info : { ...info, state: key.state, createdAt: key.createdAt }
    })
    return { ...keys, inventory }
  }

  /** Reads the states; the sealed keys and a new view only when they changed. */
  private async load (): Promise<void> {
    const { db, log } = this.options
    if (fingerprint(await listKeys(db)) !== this.shownFingerprint || this.view === undefined) {
      const stored = await readSealedKeys(db)
      const before = this.view?.kid
      this.view = this.build(stored)
      this.shownFingerprint = fingerprint(stored)
      if (before !== undefined && before !== this.view.kid) log.info({ kid: this.view.kid, previous: before }, 'signing with the new current key')
    }
    this.viewedAt = this.clock()
    await this.rewrapIfNeeded()
  }

  private async rewrapIfNeeded (): Promise<void> {
    const { db, kek, previousKek, log } = this.options
    if (!this.sealedWithPrevious || previousKek === undefined) return
    const kids = await rewrapKeys(db, kek, previousKek, this.clock())
    this.sealedWithPrevious = false
    if (kids.length > 0) log.info({ kids }, 'sealed the stored signing keys again with the current KEY_ENCRYPTION_KEY')
  }

  /** One look: the due steps (every STEP_MS, or when asked), then the keys. Failures are said once per run of them. */
  private async refreshOnce (step: boolean): Promise<void> {
    const { db, kek, policy, log } = this.options
    this.attemptedAt = this.clock()
    try {
      if (step || this.clock() - this.steppedAt >= STEP_MS) {
        await scheduledStep(db, kek, policy, this.clock())
        this.steppedAt = this.clock()
      }
      await this.load()
      if (this.failing) log.info({}, 'the stored signing keys are read again')
      this.failing = false
    } catch (err) {
      // The previous view serves meanwhile.
      if (!this.failing) {
        const message = err instanceof KeyDecryptionError ? lostKeyError(err).message : (err as Error).message
        log.error({ cause: message }, 'could not read the stored signing keys; the previous view serves until they are read')
      }
      this.failing = true
    }
  }

  /** One look at a time: a slow database does not pile them up. */
  private async look (step: boolean): Promise<void> {
    this.running ??= this.refreshOnce(step).finally(() => { this.running = undefined })
    await this.running
  }

  // A look that started before the caller's change may have missed it: wait for it, then look again.
  async refresh (): Promise<void> {
    await this.running
    await this.look(true)
  }

  signing (): boolean {
    return this.clock() - this.viewedAt <= REMOVAL_MARGIN_MS
  }

  // By the last attempt, not the last success: while the database is
  // down, requests are not held up by a look each.
  stale (): boolean {
    return this.clock() - this.attemptedAt > Math.max(5 * this.pollMs, 5000)
  }

  close (): void {
    if (this.timer !== undefined) clearInterval(this.timer)
  }
}

export async function openKeyRing (options: KeyRingOptions): Promise<KeyRing> {
  const ring = new StoredKeyRing(options)
  await ring.start()
  return ring
}
