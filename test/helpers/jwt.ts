// Signing keys for tests, and reading a JWT without verifying it.
import { generateKeyPairSync, sign } from 'node:crypto'

export interface KeyPair {
  privateKey: string
  publicKey: string
}

export function generateRsaKeyPair (): KeyPair {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  return {
    privateKey: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKey: publicKey.export({ type: 'spki', format: 'pem' }).toString()
  }
}

/** One signing key per test file: generating RSA keys is slow. */
export const testKeys = generateRsaKeyPair()

/** The claims of a JWT, read without verification (for assertions only). */
export function decodeJwt (token: string): { header: Record<string, unknown>, payload: Record<string, unknown> } {
  const [header, payload] = token.split('.')
  return {
    header: JSON.parse(Buffer.from(header ?? '', 'base64url').toString()),
    payload: JSON.parse(Buffer.from(payload ?? '', 'base64url').toString())
  }
}

/** One base64url segment of a compact JWS: a string as it is, anything else as JSON. */
export function jwtSegment (value: unknown): string {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url')
}

/** A compact JWS signed RS256 (RSASSA-PKCS1-v1_5 with SHA-256) by `privateKey`, made here with node:crypto. */
export function signRs256 (header: unknown, payload: unknown, privateKey: string = testKeys.privateKey): string {
  const input = `${jwtSegment(header)}.${jwtSegment(payload)}`
  return `${input}.${sign('sha256', Buffer.from(input), privateKey).toString('base64url')}`
}
