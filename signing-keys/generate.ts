// New signing keys: for the data directory of the embedded mode, for
// `session-service keys generate`, and for the keys kept in the database.
import { generateKeyPair, generateKeyPairSync, type KeyObject } from 'node:crypto'
import { promisify } from 'node:util'
import type { SigningAlgorithm } from './algorithms.ts'

/** A new key pair of the algorithm: RS256 a 2048-bit RSA key, ES256 a P-256 key, EdDSA an Ed25519 key. */
export function generateSigningKeyPair (algorithm: SigningAlgorithm): { privateKey: KeyObject, publicKey: KeyObject } {
  return algorithm === 'RS256'
    ? generateKeyPairSync('rsa', { modulusLength: 2048 })
    : algorithm === 'ES256'
      ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
      : generateKeyPairSync('ed25519')
}

const generateAsync = promisify(generateKeyPair)

/**
 * The same, off the event loop: a 2048-bit RSA key takes tens of
 * milliseconds or more, which a running service must not stall for.
 */
export async function generateSigningKeyPairAsync (algorithm: SigningAlgorithm): Promise<{ privateKey: KeyObject, publicKey: KeyObject }> {
  return algorithm === 'RS256'
    ? await generateAsync('rsa', { modulusLength: 2048 })
    : algorithm === 'ES256'
      ? await generateAsync('ec', { namedCurve: 'P-256' })
      : await generateAsync('ed25519')
}

/** A new key pair of the algorithm: the private key as PKCS#8 PEM, the public one as SPKI PEM. */
export function generatePrivateKeyPem (algorithm: SigningAlgorithm): { privateKey: string, publicKey: string } {
  const pair = generateSigningKeyPair(algorithm)
  return {
    privateKey: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKey: pair.publicKey.export({ type: 'spki', format: 'pem' }).toString()
  }
}
