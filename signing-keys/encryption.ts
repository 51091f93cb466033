// The key-encryption key (KEY_ENCRYPTION_KEY) and the sealing of stored
// private keys with it: AES-256-GCM, a fresh 96-bit IV per seal, the kid as
// additional authenticated data. A sealed key opens only under the same
// key-encryption key and only for its own kid.
import { createCipheriv, createDecipheriv, createPrivateKey, randomBytes, type KeyObject } from 'node:crypto'

const VERSION = 1
const IV_BYTES = 12
const TAG_BYTES = 16
const KEY_BYTES = 32

/** 32 bytes from 64 hex digits or from base64 / base64url text; undefined otherwise. */
export function parseKeyEncryptionKey (text: string): Buffer | undefined {
  const value = text.trim()
  if (/^[0-9a-fA-F]{64}$/.test(value)) return Buffer.from(value, 'hex')
  if (!/^[A-Za-z0-9+/_-]{43}={0,1}$/.test(value)) return undefined
  const bytes = Buffer.from(value.replace(/-/g, '+').replace(/_/g, '/'), 'base64')
  return bytes.length === KEY_BYTES ? bytes : undefined
}

const additionalData = (kid: string): Buffer => Buffer.from(`session-service signing key ${kid}`, 'utf8')

/** The private key sealed for storage beside `kid`. */
export function sealPrivateKey (kek: Buffer, kid: string, privateKey: KeyObject): Buffer {
  const iv = randomBytes(IV_BYTES)
  const cipher = createCipheriv('aes-256-gcm', kek, iv, { authTagLength: TAG_BYTES })
  cipher.setAAD(additionalData(kid))
  const plain = privateKey.export({ type: 'pkcs8', format: 'der' })
  const sealed = Buffer.concat([cipher.update(plain), cipher.final()])
  plain.fill(0)
  return Buffer.concat([Buffer.from([VERSION]), iv, cipher.getAuthTag(), sealed])
}

/** A sealed key that does not open: another key-encryption key, another kid, or changed bytes. */
export class KeyDecryptionError extends Error {
  readonly kid: string
  constructor (kid: string) {
    super(`the stored signing key ${kid} does not decrypt with KEY_ENCRYPTION_KEY`)
    this.name = 'KeyDecryptionError'
    this.kid = kid
  }
}

/** Opens what sealPrivateKey made for `kid`; throws KeyDecryptionError otherwise. */
export function openPrivateKey (kek: Buffer, kid: string, sealed: Buffer): KeyObject {
  if (sealed.length <= 1 + IV_BYTES + TAG_BYTES || sealed[0] !== VERSION) throw new KeyDecryptionError(kid)
  const iv = sealed.subarray(1, 1 + IV_BYTES)
  const tag = sealed.subarray(1 + IV_BYTES, 1 + IV_BYTES + TAG_BYTES)
  let plain: Buffer
  try {
    const decipher = createDecipheriv('aes-256-gcm', kek, iv, { authTagLength: TAG_BYTES })
    decipher.setAAD(additionalData(kid))
    decipher.setAuthTag(tag)
    plain = Buffer.concat([decipher.update(sealed.subarray(1 + IV_BYTES + TAG_BYTES)), decipher.final()])
  } catch {
    throw new KeyDecryptionError(kid)
  }
  try {
    return createPrivateKey({ key: plain, format: 'der', type: 'pkcs8' })
  } finally {
    plain.fill(0)
  }
}

/**
 * Opens with the first of `keks` that fits: the current key-encryption key,
 * then the previous one while it changes. `sealedWith` says which one did.
 */
export function openWithAny (keks: Buffer[], kid: string, sealed: Buffer): { privateKey: KeyObject, sealedWith: number } {
  for (const [index, kek] of keks.entries()) {
    try {
      return { privateKey: openPrivateKey(kek, kid, sealed), sealedWith: index }
    } catch (err) {
      if (!(err instanceof KeyDecryptionError)) throw err
    }
  }
  throw new KeyDecryptionError(kid)
}
