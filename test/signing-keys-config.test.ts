// The settings of KEY_STORE=database (the key-encryption key, the schedule)
// and the sealing of stored private keys with that key.
import { createPublicKey, generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto'
import { chmodSync, chownSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test, type Test } from 'tap'
import { ConfigError, loadConfig, loadSettings } from '../plugins/config.ts'
import { KeyDecryptionError, openPrivateKey, sealPrivateKey } from '../signing-keys/encryption.ts'
import { testKeys } from './helper.ts'
import { configError } from './helpers/config-error.ts'

const KEK = randomBytes(32)

const baseEnv = (extra: Record<string, string> = {}): Record<string, string> => ({
  DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/postgres',
  ...extra
})

const databaseEnv = (extra: Record<string, string> = {}): Record<string, string> =>
  baseEnv({ KEY_STORE: 'database', KEY_ENCRYPTION_KEY: KEK.toString('base64'), ...extra })

const fileEnv = (path: string): Record<string, string> => databaseEnv({ KEY_ENCRYPTION_KEY: '', KEY_ENCRYPTION_KEY_FILE: path })

/** The error names `variable` first, and says nothing of `secrets`. */
function refused (t: Test, env: Record<string, string>, variable: string, secrets: string[], what: string): ConfigError {
  const err = configError(env)
  t.equal(err.variable, variable, `${what}: names ${variable}`)
  t.ok(err.message.startsWith(`${variable}: `), `${what}: the message starts with the variable (${err.message})`)
  for (const secret of secrets.filter((text) => text.trim().length >= 8)) {
    t.notOk(err.message.includes(secret.trim()), `${what}: the message does not repeat the key`)
  }
  return err
}

test('KEY_STORE defaults to settings, with a three-hour publish-ahead and a 30-day rotation', async (t) => {
  const settings = loadSettings(baseEnv())
  t.equal(settings.keyStore, 'settings')
  t.equal(settings.keyEncryptionKey, undefined, 'no key-encryption key in settings mode')
  t.equal(settings.keyPublishAhead, 3 * 3600)
  t.equal(settings.keyRotationInterval, 30 * 86400)
  t.match(configError(baseEnv()), { variable: 'JWT_PRIVATE_KEY' }, 'with DATABASE_URL, settings mode still needs JWT_PRIVATE_KEY')
})

test('database mode requires a key-encryption key, from one place', async (t) => {
  const err = refused(t, baseEnv({ KEY_STORE: 'database' }), 'KEY_ENCRYPTION_KEY', [], 'neither set')
  t.match(err.message, /KEY_ENCRYPTION_KEY_FILE/, 'the message names the _FILE variant too')
  t.match(err.message, /openssl rand -base64 32/, 'and how to make one')
  const dir = t.testdir({ kek: KEK.toString('base64') })
  chmodSync(join(dir, 'kek'), 0o600)
  refused(t, databaseEnv({ KEY_ENCRYPTION_KEY_FILE: join(dir, 'kek') }), 'KEY_ENCRYPTION_KEY', [KEK.toString('base64')], 'both set')
  refused(t, databaseEnv({ KEY_STORE: 'files' }), 'KEY_STORE', [KEK.toString('base64')], 'an unknown KEY_STORE')
})

test('KEY_ENCRYPTION_KEY_PREVIOUS is optional, read like KEY_ENCRYPTION_KEY, and refused by its own name', async (t) => {
  t.equal(loadSettings(databaseEnv()).keyEncryptionKeyPrevious, undefined, 'unset by default')
  const previous = randomBytes(32)
  t.same(loadSettings(databaseEnv({ KEY_ENCRYPTION_KEY_PREVIOUS: previous.toString('hex') })).keyEncryptionKeyPrevious, previous, 'read when given')
  const dir = t.testdir({ previous: previous.toString('base64') })
  chmodSync(join(dir, 'previous'), 0o600)
  t.same(loadSettings(databaseEnv({ KEY_ENCRYPTION_KEY_PREVIOUS_FILE: join(dir, 'previous') })).keyEncryptionKeyPrevious, previous, 'or from its _FILE')
  refused(t, databaseEnv({ KEY_ENCRYPTION_KEY_PREVIOUS: 'not-a-key-at-all-0123456789' }), 'KEY_ENCRYPTION_KEY_PREVIOUS', ['not-a-key-at-all-0123456789'], 'a bad previous key')
  refused(t, databaseEnv({ KEY_ENCRYPTION_KEY_PREVIOUS: previous.toString('hex'), KEY_ENCRYPTION_KEY_PREVIOUS_FILE: join(dir, 'previous') }),
    'KEY_ENCRYPTION_KEY_PREVIOUS', [previous.toString('hex')], 'both set')
})

test('a key-encryption key is 32 bytes: 64 hex digits, base64 with or without padding, base64url', async (t) => {
  // 0xfb 0xff in the key make both + and / in base64, - and _ in base64url.
  const kek = Buffer.concat([Buffer.from([0xfb, 0xff, 0xfe]), randomBytes(29)])
  const forms: Record<string, string> = {
    hex: kek.toString('hex'),
    'HEX in capitals': kek.toString('hex').toUpperCase(),
    base64: kek.toString('base64'),
    'base64 without padding': kek.toString('base64').replace(/=+$/, ''),
    base64url: kek.toString('base64url'),
    'base64 with spaces around': `  ${kek.toString('base64')}\n`
  }
  for (const [form, text] of Object.entries(forms)) {
    t.same(loadSettings(databaseEnv({ KEY_ENCRYPTION_KEY: text })).keyEncryptionKey, kek, form)
  }
})

test('a key-encryption key of another length, or not a key at all, is refused without being repeated', async (t) => {
  const bad: Record<string, string> = {
    '31 bytes, base64': randomBytes(31).toString('base64'),
    '33 bytes, base64': randomBytes(33).toString('base64'),
    '31 bytes, hex': randomBytes(31).toString('hex'),
    '33 bytes, hex': randomBytes(33).toString('hex'),
    'a passphrase': 'correct horse battery staple correct horse battery',
    '43 characters that are not base64': '!'.repeat(43),
    'whitespace only': '   '
  }
  for (const [what, text] of Object.entries(bad)) {
    const err = refused(t, databaseEnv({ KEY_ENCRYPTION_KEY: text }), 'KEY_ENCRYPTION_KEY', [text], what)
    t.match(err.message, /32 random bytes/, `${what}: says what a key is`)
  }
  refused(t, databaseEnv({ KEY_ENCRYPTION_KEY: '' }), 'KEY_ENCRYPTION_KEY', [], 'empty')
})

test('KEY_ENCRYPTION_KEY_FILE is read and trimmed; an unreadable or short one is refused', async (t) => {
  const kek = randomBytes(32)
  const dir = t.testdir({ kek: `${kek.toString('base64')}\n`, hex: `${kek.toString('hex')}\r\n`, short: randomBytes(16).toString('base64') })
  for (const name of ['kek', 'hex', 'short']) chmodSync(join(dir, name), 0o600)
  t.same(loadSettings(fileEnv(join(dir, 'kek'))).keyEncryptionKey, kek, 'base64 with a newline (what openssl rand -base64 32 writes)')
  t.same(loadSettings(fileEnv(join(dir, 'hex'))).keyEncryptionKey, kek, 'hex with CRLF')
  const missing = refused(t, fileEnv(join(dir, 'missing')), 'KEY_ENCRYPTION_KEY_FILE', [], 'a missing file')
  t.match(missing.message, /ENOENT/, 'the reason is given')
  const short = refused(t, fileEnv(join(dir, 'short')), 'KEY_ENCRYPTION_KEY_FILE', [], 'a file holding 16 bytes')
  t.match(short.message, /holds no usable key/)
})

const IS_ROOT = process.geteuid?.() === 0
const NOBODY = 65534

// The rule of JWT_PRIVATE_KEY_FILE (keyFilePermissionProblem): the user's own
// file closed to group and others, or root's (a mounted secret) that others
// may read but not write.
test('KEY_ENCRYPTION_KEY_FILE that others may read or change is refused, as a key file is', async (t) => {
  const text = randomBytes(32).toString('base64')
  const dir = t.testdir({})
  chmodSync(dir, 0o755)
  const file = (name: string, mode: number, owner?: number): string => {
    const path = join(dir, name)
    writeFileSync(path, text)
    if (owner !== undefined) chownSync(path, owner, owner)
    chmodSync(path, mode)
    return path
  }
  if (IS_ROOT) {
    t.equal(loadSettings(fileEnv(file('root-0644', 0o644))).keyEncryptionKey?.length, 32, 'root\'s file readable by others (a mounted secret) is accepted')
    for (const [name, mode] of [['root-0664', 0o664], ['root-0606', 0o606]] as const) {
      const err = refused(t, fileEnv(file(name, mode)), 'KEY_ENCRYPTION_KEY_FILE', [text], `${name}: writable by group or others`)
      t.match(err.message, /is writable by group or others .*chmod go-w/, `${name}: says how to fix it`)
    }
    const foreign = refused(t, fileEnv(file('nobody-0600', 0o600, NOBODY)), 'KEY_ENCRYPTION_KEY_FILE', [text], 'another user\'s file')
    t.match(foreign.message, new RegExp(`is owned by uid ${NOBODY}`))
    return
  }
  for (const [name, mode] of [['own-0640', 0o640], ['own-0604', 0o604]] as const) {
    const err = refused(t, fileEnv(file(name, mode)), 'KEY_ENCRYPTION_KEY_FILE', [text], `${name}: readable by group or others`)
    t.match(err.message, /is open to group or others .*chmod 600/, `${name}: says how to fix it`)
  }
})

test('KEY_PUBLISH_AHEAD must exceed JWKS_MAX_AGE; KEY_ROTATION_INTERVAL is 0 or at least KEY_PUBLISH_AHEAD', async (t) => {
  const secret = KEK.toString('base64')
  refused(t, databaseEnv({ KEY_PUBLISH_AHEAD: '300s' }), 'KEY_PUBLISH_AHEAD', [secret], 'equal to JWKS_MAX_AGE')
  refused(t, databaseEnv({ KEY_PUBLISH_AHEAD: '2h', JWKS_MAX_AGE: '3h' }), 'KEY_PUBLISH_AHEAD', [secret], 'shorter than JWKS_MAX_AGE')
  t.equal(loadSettings(databaseEnv({ KEY_PUBLISH_AHEAD: '301s' })).keyPublishAhead, 301, 'a second longer is enough')
  refused(t, databaseEnv({ KEY_PUBLISH_AHEAD: '0' }), 'KEY_PUBLISH_AHEAD', [secret], 'zero')
  refused(t, databaseEnv({ KEY_PUBLISH_AHEAD: 'soon' }), 'KEY_PUBLISH_AHEAD', [secret], 'not a duration')
  t.equal(loadSettings(databaseEnv({ KEY_ROTATION_INTERVAL: '0' })).keyRotationInterval, 0, '0: no scheduled rotation')
  t.equal(loadSettings(databaseEnv({ KEY_ROTATION_INTERVAL: '3h' })).keyRotationInterval, 3 * 3600, 'equal to KEY_PUBLISH_AHEAD')
  refused(t, databaseEnv({ KEY_ROTATION_INTERVAL: '2h' }), 'KEY_ROTATION_INTERVAL', [secret], 'below KEY_PUBLISH_AHEAD')
  t.equal(loadSettings(databaseEnv({ KEY_ROTATION_INTERVAL: '90d', KEY_PUBLISH_AHEAD: '1d' })).keyPublishAhead, 86400)
})

test('with KEY_STORE=database, JWT_PRIVATE_KEY is optional; given, it is loaded to be stored', async (t) => {
  const without = loadConfig(databaseEnv())
  t.equal(without.privateKey, undefined, 'no private key')
  t.same(without.signingKeySource, { kind: 'database' })
  t.same(without.keyEncryptionKey, KEK)
  const withKey = loadConfig(databaseEnv({ JWT_PRIVATE_KEY: testKeys.privateKey }))
  t.same(withKey.signingKeySource, { kind: 'database' })
  t.equal(withKey.privateKey?.export({ type: 'pkcs8', format: 'pem' }), testKeys.privateKey, 'the configured key, to be imported')
  t.equal(withKey.publicKey?.export({ type: 'spki', format: 'pem' }), testKeys.publicKey)
})

const KEY_TYPES: Record<string, () => KeyObject> = {
  'RSA 2048': () => generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey,
  'EC P-256': () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey,
  Ed25519: () => generateKeyPairSync('ed25519').privateKey
}

const KID = 'a'.repeat(43)
const der = (key: KeyObject): Buffer => key.export({ type: 'pkcs8', format: 'der' })

test('a sealed key opens under its key-encryption key and kid, for RSA, P-256 and Ed25519', async (t) => {
  for (const [type, make] of Object.entries(KEY_TYPES)) {
    const key = make()
    const sealed = sealPrivateKey(KEK, KID, key)
    t.same(der(openPrivateKey(KEK, KID, sealed)), der(key), `${type}: the same key comes back`)
    t.notOk(sealed.includes(der(key).subarray(-32)), `${type}: the private key is not in the sealed bytes`)
    t.notSame(sealPrivateKey(KEK, KID, key), sealed, `${type}: two seals of one key differ (a fresh IV each)`)
  }
})

test('a sealed key does not open with another key, under another kid, or changed in any part', async (t) => {
  const key = KEY_TYPES['EC P-256']?.() as KeyObject
  const sealed = sealPrivateKey(KEK, KID, key)
  const flip = (index: number): Buffer => {
    const copy = Buffer.from(sealed)
    copy[index] = (copy[index] ?? 0) ^ 0x01
    return copy
  }
  const attempts: Record<string, () => KeyObject> = {
    'another key-encryption key': () => openPrivateKey(randomBytes(32), KID, sealed),
    'another kid (the additional data)': () => openPrivateKey(KEK, 'b'.repeat(43), sealed),
    'a flipped byte in the IV': () => openPrivateKey(KEK, KID, flip(1)),
    'a flipped byte in the tag': () => openPrivateKey(KEK, KID, flip(1 + 12)),
    'a flipped byte in the ciphertext': () => openPrivateKey(KEK, KID, flip(sealed.length - 1)),
    'another version byte': () => openPrivateKey(KEK, KID, flip(0)),
    'truncated by one byte': () => openPrivateKey(KEK, KID, sealed.subarray(0, sealed.length - 1)),
    'truncated to its header': () => openPrivateKey(KEK, KID, sealed.subarray(0, 29)),
    empty: () => openPrivateKey(KEK, KID, Buffer.alloc(0))
  }
  for (const [what, open] of Object.entries(attempts)) {
    t.throws(open, KeyDecryptionError, what)
  }
  const err = (() => { try { openPrivateKey(randomBytes(32), KID, sealed) } catch (caught) { return caught as Error } })()
  t.match(err?.message, new RegExp(`^the stored signing key ${KID} does not decrypt with KEY_ENCRYPTION_KEY$`), 'the message names the kid and the setting only')
  t.equal(createPublicKey(openPrivateKey(KEK, KID, sealed)).asymmetricKeyType, 'ec', 'the untouched seal still opens')
})
