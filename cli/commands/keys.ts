// `keys generate`: a signing key pair written as PEM files. `keys list`,
// `rotate`, `retire` and `history`: the keys kept in the database
// (KEY_STORE=database), changed by the life-cycle rules of
// signing-keys/stored.ts, each change recorded with the operator's name.
import { existsSync, mkdirSync, rmSync, statSync } from 'node:fs'
import { createPublicKey, type JsonWebKey } from 'node:crypto'
import { dirname, join, resolve } from 'node:path'
import type { Settings } from '../../plugins/config.ts'
import { publicJwk, type PublicJwk } from '../../plugins/keys.ts'
import { isKid } from '../../signing-keys/kid.ts'
import { isSigningAlgorithm, SIGNING_ALGORITHMS, type SigningAlgorithm } from '../../signing-keys/algorithms.ts'
import { KeyDecryptionError, openWithAny } from '../../signing-keys/encryption.ts'
import { generatePrivateKeyPem } from '../../signing-keys/generate.ts'
import { iso, keyEventView, keyView, retirementView, rotationView } from '../../schemas/keys.ts'
import {
  KEK_NEEDED, KeyNotFoundError, keyPolicy, KeyRuleError, listKeyEvents, listKeys, readSealedKeys, retireKey, rotateKeys,
  type KeyEvent, type RotationResult, type StoredKey
} from '../../signing-keys/stored.ts'
import { writeOwnerOnly } from '../../storage/data-dir.ts'
import type { Queryable } from '../../storage/database.ts'
import { cliActor } from '../actor.ts'
import { JSON_OPTION, noPositionals, wholeNumberOption, type CommandContext, type CommandTable } from '../command.ts'
import { withDatabase, type Connection } from '../connection.ts'
import { CliError, describeFailure, printTable, usage, type Output } from '../io.ts'

/** Why a file operation failed, without the path that the message names already. */
const reasonOf = (err: unknown): string => describeFailure(err).replace(/, \w+ '[^']*'$/, '')

const cannotCreate = (dir: string, err: unknown): CliError => new CliError(`cannot create the key directory ${dir}: ${reasonOf(err)}`)

function mkdirOwnerOnly (dir: string): 'made' | 'exists' | 'no parent' {
  try {
    mkdirSync(dir, { mode: 0o700 })
    return 'made'
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EEXIST') return 'exists'
    if (code === 'ENOENT') return 'no parent'
    throw cannotCreate(dir, err)
  }
}

/**
 * Makes the key folder and its missing parents. Not mkdirSync's recursive
 * option: where a folder exists yet refuses a new entry with ENOENT (under
 * /proc), Node's walk steps back to the parent, finds it, steps forward and
 * retries for ever. Here each folder is tried at most twice.
 */
function makeKeyFolder (dir: string): void {
  let made = mkdirOwnerOnly(dir)
  if (made === 'no parent' && dirname(dir) !== dir) {
    makeKeyFolder(dirname(dir))
    made = mkdirOwnerOnly(dir)
  }
  if (made === 'no parent') throw new CliError(`cannot create the key directory ${dir}: ${dirname(dir)} accepts no new directory`)
  if (made === 'exists' && !isFolder(dir)) throw new CliError(`${dir} exists and is not a directory; choose another --out`)
}

function isFolder (path: string): boolean {
  try {
    return statSync(path).isDirectory()
  } catch {
    return false
  }
}

/** Both PEM files, or neither: a private key without its public half is of no use and must not linger. */
function writeKeyPair (privatePath: string, publicPath: string, pair: { privateKey: string, publicKey: string }): void {
  let written: string | undefined
  try {
    writeOwnerOnly(privatePath, pair.privateKey)
    written = privatePath
    writeOwnerOnly(publicPath, pair.publicKey)
  } catch (err) {
    if (written !== undefined) rmSync(written, { force: true })
    throw new CliError(`cannot write ${written === undefined ? privatePath : publicPath}: ${reasonOf(err)}`)
  }
}

/** The commands on stored keys refuse where keys come from the settings. */
function requireStoredKeys (config: Settings, command: string): void {
  if (config.keyStore === 'database') return
  throw new CliError(`KEY_STORE is settings: keys come from JWT_PRIVATE_KEY (or the data directory) in this mode, and \`${command}\` works on keys kept in the database; set KEY_STORE=database (see the README's section on key rotation)`)
}

/** The SPKI PEM of a published key: what JWT_ADDITIONAL_PUBLIC_KEYS takes. */
const publicKeyPem = (jwk: PublicJwk): string =>
  createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' }).export({ type: 'spki', format: 'pem' }).toString()

/** A stored key as `keys list --json` gives it: the admin API's view, and the PEM of its public key. */
const storedKeyView = (key: StoredKey): Record<string, unknown> => ({ ...keyView(key), public_key_pem: publicKeyPem(key.publicJwk) })

/** The time that matters for a key in its state. */
function keySchedule (key: StoredKey): string {
  if (key.state === 'next') return `signs from ${iso(key.activateAfter) ?? '-'}`
  if (key.state === 'current') return `signing since ${iso(key.activatedAt) ?? '-'}`
  return `removed after ${iso(key.removeAfter) ?? '-'}`
}

async function listStoredKeys ({ positionals, config, out }: CommandContext): Promise<void> {
  const command = 'keys list'
  noPositionals(positionals, command)
  requireStoredKeys(config, command)
  await withDatabase(config, async ({ db }) => {
    const keys = await listKeys(db)
    if (out.json) out.data(keys.map(storedKeyView))
    else if (keys.length === 0) out.print('no stored keys: the service makes one when it starts with KEY_STORE=database')
    else {
      printTable(out, [['KID', 'ALG', 'STATE', 'CREATED', 'WHEN'],
        ...keys.map((key) => [key.kid, key.algorithm, key.state, key.createdAt.toISOString(), keySchedule(key)])])
    }
  })
}

/** The refusals of the keys' life cycle, as the operator reads them. */
async function refusingKeyChange<T> (work: () => Promise<T>): Promise<T> {
  try {
    return await work()
  } catch (err) {
    if (err instanceof KeyRuleError || err instanceof KeyNotFoundError) throw new CliError(err.message)
    throw err
  }
}

/**
 * What to seal a key made here with. A key is made when none waits as the
 * next one; then KEY_ENCRYPTION_KEY must be set, and open the keys already
 * stored: a key sealed with another would not open where the service runs.
 * When none is to be made, the key given, if any (should a key be needed
 * after all, the rotation refuses with the same message).
 */
async function sealingKey (db: Queryable, config: Settings): Promise<Buffer | undefined> {
  const stored = await readSealedKeys(db)
  const kek = config.keyEncryptionKey
  if (stored.some((key) => key.state === 'next')) return kek
  if (kek === undefined) {
    throw new CliError(KEK_NEEDED)
  }
  const sample = stored[0]
  const previous = config.keyEncryptionKeyPrevious
  try {
    // During a change of key-encryption key, a key may still be sealed with the previous one.
    if (sample !== undefined) openWithAny(previous === undefined ? [kek] : [kek, previous], sample.kid, sample.sealed)
  } catch (err) {
    if (!(err instanceof KeyDecryptionError)) throw err
    throw new CliError(`KEY_ENCRYPTION_KEY: does not decrypt the stored signing key ${sample?.kid ?? ''}; a key sealed with it would not open where the service runs: give the key-encryption key the service uses`)
  }
  return kek
}

/** How running instances learn of a change: the embedded service has served it already; instances on a server read the keys every second. */
function announceKeyChange (config: Settings, connection: Connection, out: Output): void {
  if (connection.service === undefined && config.databaseUrl !== undefined) out.note('running instances serve the change within a second (each reads the keys twice a second)')
}

function algorithmOption (text: string | undefined, command: string): SigningAlgorithm | undefined {
  if (text === undefined) return undefined
  if (!isSigningAlgorithm(text)) throw usage(`--algorithm must be one of ${SIGNING_ALGORITHMS.join(', ')}`, command)
  return text
}

async function rotate (connection: Connection, config: Settings, options: { immediately: boolean, algorithm?: SigningAlgorithm }): Promise<RotationResult> {
  const change = { ...options, actor: cliActor() }
  if (connection.service !== undefined) return await connection.service.rotateKeys(change)
  return await rotateKeys(connection.db, await sealingKey(connection.db, config), keyPolicy(config), Date.now(), change)
}

function printRotation (out: Output, config: Settings, rotation: RotationResult, retired: StoredKey | undefined): void {
  const key = `${rotation.kid} (${rotation.algorithm})`
  if (rotation.state === 'current') {
    out.print(`key ${key} signs from now`)
    if (retired !== undefined) out.print(`key ${retired.kid} retired: published until ${iso(retired.removeAfter) ?? '-'}, when the last token it signed has expired`)
    return
  }
  const when = iso(rotation.activateAfter) ?? '-'
  if (rotation.created) out.print(`key ${key} made and published from now; it signs from ${when}, once published KEY_PUBLISH_AHEAD (${config.keyPublishAhead}s)`)
  else out.print(`key ${key} is published already and waits as the next key; it signs from ${when}`)
}

async function rotateStoredKeys ({ values, positionals, config, out }: CommandContext): Promise<void> {
  const command = 'keys rotate'
  noPositionals(positionals, command)
  const algorithm = algorithmOption(values.algorithm as string | undefined, command)
  requireStoredKeys(config, command)
  const immediately = values.now === true
  await withDatabase(config, async (connection) => {
    const rotation = await refusingKeyChange(async () => await rotate(connection, config, { immediately, ...(algorithm === undefined ? {} : { algorithm }) }))
    const retired = rotation.retired === undefined ? undefined : (await listKeys(connection.db)).find((key) => key.kid === rotation.retired)
    if (out.json) {
      out.data({ ...rotationView(rotation), retired_remove_after: iso(retired?.removeAfter) })
    } else {
      printRotation(out, config, rotation, retired)
    }
    if (immediately) out.note(`gateways that cached the JWKS before ${rotation.kid} was published refuse its tokens until they fetch it again`)
    announceKeyChange(config, connection, out)
  })
}

function kidArgument (positionals: string[], command: string): string {
  if (positionals.length !== 1) throw usage('give exactly one key id (kid)', command)
  const kid = positionals[0] ?? ''
  if (!isKid(kid)) throw usage('a kid is 43 base64url characters, as `keys list` shows', command)
  return kid
}

async function retireStoredKey ({ values, positionals, config, out }: CommandContext): Promise<void> {
  const command = 'keys retire'
  const kid = kidArgument(positionals, command)
  requireStoredKeys(config, command)
  const options = { immediately: values.now === true, actor: cliActor() }
  await withDatabase(config, async (connection) => {
    const retirement = await refusingKeyChange(async () => connection.service !== undefined
      ? await connection.service.retireKey(kid, options)
      : await retireKey(connection.db, kid, Date.now(), options))
    if (out.json) out.data(retirementView(retirement))
    else if (retirement.outcome === 'removed') out.print(`key ${kid} removed: it is no longer published, and no token it signed is valid any more`)
    else out.print(`key ${kid} retired: published until ${iso(retirement.removeAfter) ?? '-'}, when the last token it signed has expired`)
    announceKeyChange(config, connection, out)
  })
}

/** An event's details in one line: name=value pairs. */
const eventDetails = (event: KeyEvent): string =>
  Object.entries(event.details).map(([name, value]) => `${name}=${typeof value === 'string' ? value : JSON.stringify(value)}`).join(' ')

async function keyHistory ({ values, positionals, config, out }: CommandContext): Promise<void> {
  const command = 'keys history'
  noPositionals(positionals, command)
  const limit = Math.min(wholeNumberOption(values.limit as string | undefined, 'limit', 20, command) ?? 20, 1000)
  requireStoredKeys(config, command)
  await withDatabase(config, async ({ db }) => {
    const events = await listKeyEvents(db, { limit })
    if (out.json) out.data(events.map(keyEventView))
    else if (events.length === 0) out.print('no key events')
    else {
      printTable(out, [['AT', 'KID', 'ACTION', 'ACTOR', 'DETAILS'],
        ...events.map((event) => [event.at.toISOString(), event.kid, event.action, event.actor, eventDetails(event)])])
    }
  })
}

const STORED_KEYS_HELP = `Works on the keys kept in the database (KEY_STORE=database); with
KEY_STORE=settings it refuses.`

const storedKeysCommands: CommandTable = {
  'keys list': {
    summary: 'list the signing keys kept in the database',
    usage: 'keys list [--json]',
    help: `Lists every stored key: its kid, algorithm, state (current: signs; next:
published, signs later; retired: published until its last token has
expired), when it was made, and the time that matters in its state. --json
adds each key's public JWK and its SPKI PEM (public_key_pem), which
JWT_ADDITIONAL_PUBLIC_KEYS takes. Needs no KEY_ENCRYPTION_KEY.
${STORED_KEYS_HELP}`,
    options: JSON_OPTION,
    run: listStoredKeys
  },
  'keys rotate': {
    summary: 'make the next signing key (with --now: make it sign at once)',
    usage: `keys rotate [--now] [--algorithm ${SIGNING_ALGORITHMS.join('|')}] [--json]`,
    help: `Publishes a next key (the one waiting already, else a new one of --algorithm
or JWT_ALGORITHM) that signs once it has been published KEY_PUBLISH_AHEAD,
so that every verifier has fetched it by then; the current key then retires.
--now makes it sign at once and retires the current key: verifiers that
cached the JWKS before refuse its tokens until they fetch it again; for a
key that must stop signing now. Making a key needs KEY_ENCRYPTION_KEY (the
service's). ${STORED_KEYS_HELP}`,
    options: { now: { type: 'boolean' }, algorithm: { type: 'string' }, ...JSON_OPTION },
    run: rotateStoredKeys
  },
  'keys retire': {
    summary: 'withdraw a next key, or remove a retired one (--now)',
    usage: 'keys retire <kid> [--now] [--json]',
    help: `A next key leaves at once (it signed nothing). A retired key leaves by itself
once its last token has expired; --now removes it at once, and every token it
signed stops being valid (for a key that leaked). The current key cannot
retire: \`keys rotate\` replaces it. A kid that starts with "-" is written
after "--". ${STORED_KEYS_HELP}`,
    options: { now: { type: 'boolean' }, ...JSON_OPTION },
    run: retireStoredKey
  },
  'keys history': {
    summary: 'show the recorded changes of the signing keys, newest first',
    usage: 'keys history [--limit <n>] [--json]',
    help: `Lists who changed which key, when, and how (created, imported, activated,
rescheduled, retired, removed, rewrapped), newest first, --limit at a time (default
20, at most 1000). The service's own scheduled steps are recorded as
"scheduler", the CLI's as cli:<user>. ${STORED_KEYS_HELP}`,
    options: { limit: { type: 'string' }, ...JSON_OPTION },
    run: keyHistory
  }
}

export const keysCommands: CommandTable = {
  'keys generate': {
    summary: 'write a new signing key pair (PEM)',
    usage: `keys generate [--algorithm ${SIGNING_ALGORITHMS.join('|')}] [--out <dir>] [--json]`,
    help: `Writes private.pem (owner-only) and public.pem into --out (default ./keys),
for the algorithm given or JWT_ALGORITHM (default RS256: a 2048-bit RSA key).
Refuses to overwrite existing files. Point JWT_PRIVATE_KEY_FILE at private.pem;
to rotate, publish public.pem through JWT_ADDITIONAL_PUBLIC_KEYS_FILE first.`,
    options: { algorithm: { type: 'string' }, out: { type: 'string' }, ...JSON_OPTION },
    async run ({ values, positionals, config, out, io }) {
      const command = 'keys generate'
      noPositionals(positionals, command)
      const algorithm = (values.algorithm as string | undefined) ?? config.algorithm
      if (!isSigningAlgorithm(algorithm)) throw usage(`--algorithm must be one of ${SIGNING_ALGORITHMS.join(', ')}`, command)
      const dir = resolve(io.cwd, (values.out as string | undefined) ?? 'keys')
      const privatePath = join(dir, 'private.pem')
      const publicPath = join(dir, 'public.pem')
      for (const path of [privatePath, publicPath]) {
        if (existsSync(path)) throw new CliError(`${path} exists; choose another --out or move it away first`)
      }
      makeKeyFolder(dir)
      const pair = generatePrivateKeyPem(algorithm)
      writeKeyPair(privatePath, publicPath, pair)
      const kid = publicJwk(createPublicKey(pair.publicKey), algorithm).kid
      if (out.json) {
        out.data({ algorithm, kid, private_key: privatePath, public_key: publicPath })
        return
      }
      out.print(`${algorithm} key pair written (kid ${kid}):`)
      out.print(`  ${privatePath}  (owner-only; keep it secret)`)
      out.print(`  ${publicPath}`)
      out.print(`Configure: JWT_ALGORITHM=${algorithm} JWT_PRIVATE_KEY_FILE=${privatePath}`)
    }
  },
  ...storedKeysCommands
}
