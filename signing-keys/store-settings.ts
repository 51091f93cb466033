// The settings of the stored-key mode: where keys live (KEY_STORE), the
// key-encryption key that seals them, and their schedule. Every problem is
// a ConfigError naming the variable to fix.
import { readFileSync } from 'node:fs'
import { ConfigError, parseDuration } from '../plugins/config.ts'
import { keyFilePermissionProblem } from '../storage/data-dir.ts'
import { parseKeyEncryptionKey } from './encryption.ts'

export interface KeyStoreEnv {
  KEY_STORE: 'settings' | 'database'
  KEY_ENCRYPTION_KEY?: string
  KEY_ENCRYPTION_KEY_FILE?: string
  KEY_ENCRYPTION_KEY_PREVIOUS?: string
  KEY_ENCRYPTION_KEY_PREVIOUS_FILE?: string
  KEY_PUBLISH_AHEAD: string
  KEY_ROTATION_INTERVAL: string
  JWKS_MAX_AGE: string
}

export interface KeyStoreSettings {
  /** 'settings': the key of JWT_PRIVATE_KEY (or the data directory's); 'database': stored keys the service rotates */
  keyStore: 'settings' | 'database'
  /** KEY_STORE=database: the 32-byte key that seals the stored private keys */
  keyEncryptionKey: Buffer | undefined
  /** while the key-encryption key changes: the one before, whose sealed keys are sealed again with the new one */
  keyEncryptionKeyPrevious: Buffer | undefined
  /** how long a new stored key is published before it signs, seconds */
  keyPublishAhead: number
  /** how long a stored key signs before a scheduled rotation, seconds; 0: none */
  keyRotationInterval: number
}

const KEK_FORMAT = 'must be 32 random bytes, as 64 hexadecimal digits or in base64 (`openssl rand -base64 32`)'

type KekVariable = 'KEY_ENCRYPTION_KEY' | 'KEY_ENCRYPTION_KEY_PREVIOUS'

function readKeyEncryptionKey (raw: KeyStoreEnv, variable: KekVariable, required: boolean): Buffer | undefined {
  const inline = raw[variable] ?? ''
  const path = raw[`${variable}_FILE`] ?? ''
  if (inline !== '' && path !== '') throw new ConfigError(variable, `set either ${variable} or ${variable}_FILE, not both`)
  if (path !== '') {
    const unsafe = keyFilePermissionProblem(path)
    if (unsafe !== undefined) throw new ConfigError(`${variable}_FILE`, unsafe)
    let text: string
    try {
      text = readFileSync(path, 'utf8')
    } catch (err) {
      throw new ConfigError(`${variable}_FILE`, `cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
    }
    return parseKeyEncryptionKey(text) ?? fail(`${variable}_FILE`, `holds no usable key: it ${KEK_FORMAT}`)
  }
  if (inline === '' && !required) return undefined
  if (inline === '') throw new ConfigError(variable, `is required with KEY_STORE=database (or a path in ${variable}_FILE); it ${KEK_FORMAT}`)
  return parseKeyEncryptionKey(inline) ?? fail(variable, KEK_FORMAT)
}

function fail (variable: string, problem: string): never {
  throw new ConfigError(variable, problem)
}

/**
 * `keyEncryptionKeyRequired: false` (the CLI): a missing key-encryption key
 * is left undefined, for the commands that need none; a bad one is refused.
 */
export function keyStoreSettings (raw: KeyStoreEnv, options: { keyEncryptionKeyRequired?: boolean } = {}): KeyStoreSettings {
  const keyPublishAhead = parseDuration('KEY_PUBLISH_AHEAD', raw.KEY_PUBLISH_AHEAD)
  const keyRotationInterval = parseDuration('KEY_ROTATION_INTERVAL', raw.KEY_ROTATION_INTERVAL, { allowZero: true })
  if (raw.KEY_STORE === 'settings') return { keyStore: 'settings', keyEncryptionKey: undefined, keyEncryptionKeyPrevious: undefined, keyPublishAhead, keyRotationInterval }
  // A verifier that honours the JWKS's own Cache-Control must see a key before it signs.
  const jwksMaxAge = parseDuration('JWKS_MAX_AGE', raw.JWKS_MAX_AGE)
  if (keyPublishAhead <= jwksMaxAge) throw new ConfigError('KEY_PUBLISH_AHEAD', `must be longer than JWKS_MAX_AGE (${jwksMaxAge}s), which verifiers may cache the key set for`)
  if (keyRotationInterval !== 0 && keyRotationInterval < keyPublishAhead) {
    throw new ConfigError('KEY_ROTATION_INTERVAL', `must be 0 (no scheduled rotation) or at least KEY_PUBLISH_AHEAD (${keyPublishAhead}s)`)
  }
  return {
    keyStore: 'database',
    keyEncryptionKey: readKeyEncryptionKey(raw, 'KEY_ENCRYPTION_KEY', options.keyEncryptionKeyRequired ?? true),
    keyEncryptionKeyPrevious: readKeyEncryptionKey(raw, 'KEY_ENCRYPTION_KEY_PREVIOUS', false),
    keyPublishAhead,
    keyRotationInterval
  }
}
