import { createHash, type JsonWebKey, type KeyObject } from 'node:crypto'
import fp from 'fastify-plugin'
import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import { createSigner, createVerifier, TokenError } from 'fast-jwt'
import { SIGNING_ALGORITHMS, type SigningAlgorithm } from '../signing-keys/algorithms.ts'
import type { AdditionalKey } from '../signing-keys/pem.ts'
import { openKeyRing, type KeyRing } from '../signing-keys/ring.ts'
import { keyPolicy } from '../signing-keys/stored.ts'

export interface PublicJwk {
  kty: string
  kid: string
  use: 'sig'
  alg: string
  [parameter: string]: string
}

/** Why a token is not valid, as `/oauth/verify` reports it. */
export type TokenRejection =
  | 'malformed'
  | 'invalid_algorithm'
  | 'invalid_header'
  | 'invalid_type'
  | 'unknown_key'
  | 'invalid_signature'
  | 'expired'
  | 'not_yet_valid'
  | 'missing_claim'
  | 'invalid_issuer'
  | 'invalid_audience'
  | 'revoked'

export type AccessTokenClaims = Record<string, unknown> & {
  iss: string
  sub: string
  aud: string | string[]
  exp: number
  iat: number
  jti: string
}

export type TokenCheck =
  | { valid: true, claims: AccessTokenClaims }
  | { valid: false, error: TokenRejection }

/** Longest token string that is even looked at; ours are well under 2 KB. */
export const MAX_TOKEN_LENGTH = 8192

// Parameters that make up the RFC 7638 thumbprint, per key type, in the
// lexicographic order that the RFC requires.
const THUMBPRINT_MEMBERS: Record<string, string[]> = {
  RSA: ['e', 'kty', 'n'],
  EC: ['crv', 'kty', 'x', 'y'],
  OKP: ['crv', 'kty', 'x']
}

/** RFC 7638 JWK thumbprint (SHA-256, base64url) of a public key. */
export function jwkThumbprint (jwk: JsonWebKey): string {
  const members = THUMBPRINT_MEMBERS[jwk.kty ?? '']
  if (members === undefined) throw new Error(`no thumbprint rule for key type ${String(jwk.kty)}`)
  const canonical = JSON.stringify(Object.fromEntries(members.map((name) => [name, jwk[name]])))
  return createHash('sha256').update(canonical).digest('base64url')
}

/** The public JWK of a key as published in the JWKS: public parameters only. */
export function publicJwk (publicKey: KeyObject, algorithm: SigningAlgorithm): PublicJwk {
  const exported = publicKey.export({ format: 'jwk' })
  const members = THUMBPRINT_MEMBERS[exported.kty ?? ''] ?? []
  const jwk: PublicJwk = { kty: String(exported.kty), kid: jwkThumbprint(exported), use: 'sig', alg: algorithm }
  for (const name of members) {
    const value = exported[name]
    if (typeof value === 'string') jwk[name] = value
  }
  return jwk
}

// Header parameters that would tell a naive verifier where to fetch a key.
// Our tokens never carry them, so a token that does was not made by us.
const KEY_LOCATING_HEADERS = ['jku', 'x5u', 'jwk', 'x5c', 'crit']

const REJECTION_BY_CODE: Partial<Record<string, TokenRejection>> = {
  [TokenError.codes.invalidSignature]: 'invalid_signature',
  [TokenError.codes.missingSignature]: 'invalid_signature',
  [TokenError.codes.expired]: 'expired',
  [TokenError.codes.inactive]: 'not_yet_valid',
  [TokenError.codes.invalidAlgorithm]: 'invalid_algorithm',
  [TokenError.codes.missingRequiredClaim]: 'missing_claim'
}

function decodeHeader (token: string): Record<string, unknown> | undefined {
  const dot = token.indexOf('.')
  if (dot <= 0) return undefined
  try {
    const header: unknown = JSON.parse(Buffer.from(token.slice(0, dot), 'base64url').toString('utf8'))
    return typeof header === 'object' && header !== null && !Array.isArray(header) ? header as Record<string, unknown> : undefined
  } catch {
    return undefined
  }
}

/** A published key as metrics and the admin API describe it. */
export interface KeyInfo {
  kid: string
  algorithm: SigningAlgorithm
  /** stored keys: their state; keys from the settings: 'current' (signing) or 'published' */
  state: 'current' | 'next' | 'retired' | 'published'
  /** stored keys only */
  createdAt?: Date
}

export interface Keys {
  /** kid of the key that signs new tokens */
  readonly kid: string
  readonly algorithm: SigningAlgorithm
  /** Algorithms of every published key: the signing key's first. */
  readonly algorithms: SigningAlgorithm[]
  /** The JWKS document, serialized once: the signing key, then the additional keys. */
  readonly jwksBody: string
  /** Every published key, the signing key first. */
  readonly inventory: KeyInfo[]
  /** Signs an access token (RFC 9068 header: typ at+jwt, kid); `claims` must carry every registered claim. */
  sign: (claims: AccessTokenClaims) => string
  /**
   * Checks the header, the signature with the published key its kid names,
   * the time claims, the issuer and the audience. Revocation is checked
   * elsewhere. `audience`: the one the token must carry (default: the
   * service's), or null for any. With `ignoreExpiration`, an expired token of
   * ours still passes.
   */
  check: (token: string, options?: { audience?: string | null, ignoreExpiration?: boolean }) => TokenCheck
}

/** The media type of RFC 9068 access tokens, as the JOSE typ header gives it. */
export const ACCESS_TOKEN_TYPE = 'at+jwt'

// RFC 7515 §4.1.9: "application/" may be omitted and the comparison is case-insensitive.
function isAccessTokenType (typ: unknown): boolean {
  if (typeof typ !== 'string') return false
  const type = typ.toLowerCase()
  return type === ACCESS_TOKEN_TYPE || type === `application/${ACCESS_TOKEN_TYPE}`
}

const REQUIRED_CLAIMS = ['iss', 'sub', 'aud', 'exp', 'iat', 'jti']

interface PublishedKey {
  jwk: PublicJwk
  algorithm: SigningAlgorithm
  verify: (token: string) => unknown
  verifyIgnoringExpiry: (token: string) => unknown
}

function publish (publicKey: KeyObject, algorithm: SigningAlgorithm): PublishedKey {
  const jwk = publicJwk(publicKey, algorithm)
  const pem = publicKey.export({ type: 'spki', format: 'pem' }).toString()
  // Each key verifies only the algorithm it is published with: a token
  // naming another algorithm for this kid was not made by us.
  const base = { key: pem, algorithms: [algorithm], requiredClaims: REQUIRED_CLAIMS }
  return {
    jwk,
    algorithm,
    verify: createVerifier(base),
    // Revocation reads expired tokens to learn their owner; nbf is still enforced.
    verifyIgnoringExpiry: createVerifier({ ...base, ignoreExpiration: true })
  }
}

export function createKeys (options: {
  privateKey: KeyObject
  publicKey: KeyObject
  algorithm: SigningAlgorithm
  additionalKeys?: AdditionalKey[]
  issuer: string
  audience: string
}): Keys {
  const { algorithm, issuer } = options
  const signing = publish(options.publicKey, algorithm)
  const published = new Map<string, PublishedKey>([[signing.jwk.kid, signing]])
  for (const extra of options.additionalKeys ?? []) {
    const key = publish(extra.publicKey, extra.algorithm)
    // The same key given twice (say, the signing key also listed as retired) is published once.
    if (!published.has(key.jwk.kid)) published.set(key.jwk.kid, key)
  }
  const privatePem = options.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  const signer = createSigner({ key: privatePem, algorithm, kid: signing.jwk.kid, header: { alg: algorithm, typ: ACCESS_TOKEN_TYPE } })

  const check: Keys['check'] = (token, checkOptions = {}) => {
    if (token.length === 0 || token.length > MAX_TOKEN_LENGTH) return { valid: false, error: 'malformed' }
    const header = decodeHeader(token)
    if (header === undefined) return { valid: false, error: 'malformed' }
    if (KEY_LOCATING_HEADERS.some((name) => name in header)) return { valid: false, error: 'invalid_header' }
    const key = typeof header.kid === 'string' ? published.get(header.kid) : undefined
    if (key === undefined) {
      // alg none, HMAC and the like never name a kid of ours with its algorithm.
      return { valid: false, error: SIGNING_ALGORITHMS.includes(header.alg as SigningAlgorithm) ? 'unknown_key' : 'invalid_algorithm' }
    }
    if (header.alg !== key.algorithm) return { valid: false, error: 'invalid_algorithm' }
    // RFC 9068 §4: a JWT of another type (an ID token, a client assertion) is not an access token.
    if (!isAccessTokenType(header.typ)) return { valid: false, error: 'invalid_type' }
    let claims: AccessTokenClaims
    try {
      claims = (checkOptions.ignoreExpiration === true ? key.verifyIgnoringExpiry : key.verify)(token) as AccessTokenClaims
    } catch (err) {
      const code = (err as TokenError).code
      return { valid: false, error: REJECTION_BY_CODE[code] ?? 'malformed' }
    }
    if (claims.iss !== issuer) return { valid: false, error: 'invalid_issuer' }
    const audience = checkOptions.audience === undefined ? options.audience : checkOptions.audience
    if (audience !== null) {
      const audiences = Array.isArray(claims.aud) ? claims.aud : [claims.aud]
      if (!audiences.includes(audience)) return { valid: false, error: 'invalid_audience' }
    }
    if (typeof claims.jti !== 'string' || typeof claims.sub !== 'string') return { valid: false, error: 'malformed' }
    return { valid: true, claims }
  }

  const jwks = [...published.values()].map((key) => key.jwk)
  return {
    kid: signing.jwk.kid,
    algorithm,
    algorithms: [...new Set([...published.values()].map((key) => key.algorithm))],
    jwksBody: JSON.stringify({ keys: jwks }),
    inventory: [...published.values()].map((key) => ({ kid: key.jwk.kid, algorithm: key.algorithm, state: key === signing ? 'current' : 'published' })),
    sign: (claims) => signer(claims),
    check
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    keys: Keys
    /** KEY_STORE=database: the stored keys as this instance sees them; undefined with keys from the settings */
    keyRing: KeyRing | undefined
  }
}

export interface KeysPluginOptions {
  /** milliseconds since the epoch (default Date.now): the keys' life cycle runs on it */
  clock?: () => number
  /** how often the stored keys are looked at (default 1 s); 0: only on refresh() */
  keyPollMs?: number
}

function warnGatewayAlgorithm (log: FastifyBaseLogger, algorithm: SigningAlgorithm): void {
  if (algorithm !== 'RS256') {
    log.warn({ alg: algorithm }, 'AWS API Gateway HTTP APIs accept RSA signatures only (RS256); REST APIs also accept ES256, and neither accepts EdDSA')
  }
}

async function storedKeys (fastify: FastifyInstance, opts: KeysPluginOptions): Promise<KeyRing> {
  const { config } = fastify
  const clock = opts.clock ?? Date.now
  const ring = await openKeyRing({
    db: fastify.db,
    kek: config.keyEncryptionKey as Buffer,
    previousKek: config.keyEncryptionKeyPrevious,
    policy: keyPolicy(config),
    clock,
    log: fastify.log,
    issuer: config.issuer,
    audience: config.audience,
    additionalKeys: config.additionalKeys,
    settingsKey: config.privateKey === undefined || config.publicKey === undefined
      ? undefined
      : { privateKey: config.privateKey, publicKey: config.publicKey, algorithm: config.algorithm },
    pollMs: opts.keyPollMs
  })
  fastify.addHook('onClose', async () => ring.close())
  // A process that was paused (a Lambda function between invocations) reads
  // the keys before it answers, not up to a poll later.
  // A callback hook, not an async one: the usual case is one comparison and
  // no promise on every request (the JWKS is served at tens of thousands a second).
  fastify.addHook('onRequest', (_request, _reply, done) => {
    if (!ring.stale()) {
      done()
      return
    }
    ring.refresh().then(() => { done() }, done)
  })
  return ring
}

export default fp<KeysPluginOptions>(async (fastify, opts) => {
  const { config } = fastify
  if (config.keyStore === 'database') {
    const ring = await storedKeys(fastify, opts)
    fastify.decorate('keyRing', ring)
    fastify.decorate('keys', ring.keys)
    fastify.log.info({ kid: ring.keys.kid, alg: ring.keys.algorithm, published: ring.keys.inventory.length }, 'signing keys read from the database')
    warnGatewayAlgorithm(fastify.log, ring.keys.algorithm)
    return
  }
  if (config.privateKey === undefined || config.publicKey === undefined) throw new Error('no signing key is configured')
  fastify.decorate('keyRing', undefined)
  fastify.decorate('keys', createKeys({
    privateKey: config.privateKey,
    publicKey: config.publicKey,
    algorithm: config.algorithm,
    additionalKeys: config.additionalKeys,
    issuer: config.issuer,
    audience: config.audience
  }))
  fastify.log.info({ kid: fastify.keys.kid, alg: config.algorithm, published: config.additionalKeys.length + 1 }, 'signing key loaded')
  warnGatewayAlgorithm(fastify.log, config.algorithm)
}, { name: 'keys', dependencies: ['config', 'postgres', 'migrations'] })
