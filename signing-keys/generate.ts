// New signing keys, for the data directory of the embedded mode and for
// `session-service keys generate`.
import { generateKeyPairSync } from 'node:crypto'
import type { SigningAlgorithm } from './algorithms.ts'

/** A new key pair of the algorithm: the private key as PKCS#8 PEM, the public one as SPKI PEM. */
export function generatePrivateKeyPem (algorithm: SigningAlgorithm): { privateKey: string, publicKey: string } {
  const pair = algorithm === 'RS256'
    ? generateKeyPairSync('rsa', { modulusLength: 2048 })
    : algorithm === 'ES256'
      ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
      : generateKeyPairSync('ed25519')
  return {
    privateKey: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKey: pair.publicKey.export({ type: 'spki', format: 'pem' }).toString()
  }
}
