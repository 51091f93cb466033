// Signing and verification keys from PEM text: where it comes from (a
// variable or the file that VAR_FILE names), and whether a key suits its
// algorithm. Every problem is a ConfigError naming the variable to fix.
import { readFileSync } from 'node:fs'
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto'
import { ConfigError } from '../plugins/config.ts'
import { SIGNING_ALGORITHMS, type SigningAlgorithm } from './algorithms.ts'

/** The settings that hold keys: PEM text in VAR, or the path of a PEM file in VAR_FILE. */
export type KeyVariable = 'JWT_PRIVATE_KEY' | 'JWT_PUBLIC_KEY' | 'JWT_ADDITIONAL_PUBLIC_KEYS'
export type KeySettings = Partial<Record<KeyVariable | `${KeyVariable}_FILE`, string>>

/** PEM text, and the variable (or file) it came from, for messages. */
export interface PemText {
  text: string
  from: string
}

/** A public key that verifies tokens besides the signing key (the next key, or retired ones). */
export interface AdditionalKey {
  publicKey: KeyObject
  algorithm: SigningAlgorithm
}

// PEM text from VAR or from the file named by VAR_FILE, never both. Literal
// "\n" sequences are accepted because many secret stores flatten newlines.
export function readPem (env: KeySettings, variable: KeyVariable): PemText | undefined {
  const inline = env[variable]
  const path = env[`${variable}_FILE`]
  if (inline !== undefined && inline !== '' && path !== undefined && path !== '') {
    throw new ConfigError(variable, `set either ${variable} or ${variable}_FILE, not both`)
  }
  if (path !== undefined && path !== '') {
    try {
      return { text: readFileSync(path, 'utf8'), from: `${variable}_FILE` }
    } catch (err) {
      throw new ConfigError(`${variable}_FILE`, `cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
    }
  }
  if (inline !== undefined && inline !== '') return { text: inline.replace(/\\n/g, '\n'), from: variable }
  return undefined
}

// What each algorithm needs of a key: RS256 an RSA key of 2048 bits or more
// (RFC 7518 §3.3), ES256 a P-256 key, EdDSA an Ed25519 key.
export function keyTypeProblem (key: KeyObject, algorithm: SigningAlgorithm): string | undefined {
  const type = key.asymmetricKeyType ?? 'unknown'
  switch (algorithm) {
    case 'RS256': {
      if (type !== 'rsa') return `is a ${type} key, but ${algorithm} needs an RSA key`
      const bits = key.asymmetricKeyDetails?.modulusLength ?? 0
      return bits < 2048 ? `is a ${bits}-bit RSA key; at least 2048 bits are required` : undefined
    }
    case 'ES256':
      if (type !== 'ec') return `is a ${type} key, but ${algorithm} needs an EC P-256 key`
      return key.asymmetricKeyDetails?.namedCurve === 'prime256v1' ? undefined : `is an EC key on ${key.asymmetricKeyDetails?.namedCurve ?? 'an unknown curve'}, but ${algorithm} needs P-256`
    case 'EdDSA':
      return type === 'ed25519' ? undefined : `is a ${type} key, but ${algorithm} needs an Ed25519 key`
  }
}

/** The algorithm a public key signs with, from its type; undefined if none of ours. */
export function algorithmForKey (key: KeyObject): SigningAlgorithm | undefined {
  return SIGNING_ALGORITHMS.find((algorithm) => keyTypeProblem(key, algorithm) === undefined)
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----/g

// Zero or more PEM public keys, concatenated. A private key here is refused:
// this setting is published, and a private key must never be.
export function loadAdditionalKeys (env: KeySettings): AdditionalKey[] {
  const pem = readPem(env, 'JWT_ADDITIONAL_PUBLIC_KEYS')
  if (pem === undefined) return []
  const blocks = [...pem.text.matchAll(PEM_BLOCK)]
  if (blocks.length === 0) throw new ConfigError(pem.from, 'holds no PEM block (expected one or more -----BEGIN PUBLIC KEY----- blocks)')
  return blocks.map((block, index) => {
    if (/PRIVATE/.test(block[1] ?? '')) throw new ConfigError(pem.from, `key ${index + 1} is a private key; give public keys only`)
    let publicKey: KeyObject
    try {
      publicKey = createPublicKey(block[0])
    } catch {
      throw new ConfigError(pem.from, `key ${index + 1} is not a PEM public key`)
    }
    const algorithm = algorithmForKey(publicKey)
    if (algorithm === undefined) {
      throw new ConfigError(pem.from, `key ${index + 1} is not an RSA (2048 bits or more), EC P-256 or Ed25519 key`)
    }
    return { publicKey, algorithm }
  })
}

export function loadKeys (env: KeySettings, algorithm: SigningAlgorithm, privatePem: PemText): { privateKey: KeyObject, publicKey: KeyObject } {
  let privateKey: KeyObject
  try {
    privateKey = createPrivateKey(privatePem.text)
  } catch {
    throw new ConfigError(privatePem.from, 'is not a PEM private key')
  }
  const problem = keyTypeProblem(privateKey, algorithm)
  if (problem !== undefined) throw new ConfigError(privatePem.from, problem)
  const derived = createPublicKey(privateKey)

  const publicPem = readPem(env, 'JWT_PUBLIC_KEY')
  if (publicPem === undefined) return { privateKey, publicKey: derived }
  let publicKey: KeyObject
  try {
    publicKey = createPublicKey(publicPem.text)
  } catch {
    throw new ConfigError(publicPem.from, 'is not a PEM public key')
  }
  const given = publicKey.export({ type: 'spki', format: 'der' })
  const expected = derived.export({ type: 'spki', format: 'der' })
  if (!given.equals(expected)) throw new ConfigError(publicPem.from, 'does not match JWT_PRIVATE_KEY')
  return { privateKey, publicKey }
}
