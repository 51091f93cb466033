import { createHash, type JsonWebKey, type KeyObject } from 'node:crypto'
import fp from 'fastify-plugin'
import { createSigner, createVerifier, TokenError } from 'fast-jwt'
import type { SigningAlgorithm } from './config.js'

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

export interface Keys {
  /** kid of the key that signs new tokens */
  readonly kid: string
  readonly algorithm: SigningAlgorithm
  /** The JWKS document, serialized once. */
  readonly jwksBody: string
  /** Signs an access token; `claims` must carry every registered claim. */
  sign: (claims: AccessTokenClaims) => string
  /**
   * Checks the signature, the header and the time claims of a token, and that
   * its issuer and audience are ours. Revocation is checked elsewhere.
   * With `ignoreExpiration`, an expired token of ours still passes.
   */
  check: (token: string, options?: { ignoreExpiration?: boolean }) => TokenCheck
}

export function createKeys (options: {
  privateKey: KeyObject
  publicKey: KeyObject
  algorithm: SigningAlgorithm
  issuer: string
  audience: string
}): Keys {
  const { algorithm, issuer, audience } = options
  const jwk = publicJwk(options.publicKey, algorithm)
  const privatePem = options.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  const publicPem = options.publicKey.export({ type: 'spki', format: 'pem' }).toString()

  const signer = createSigner({ key: privatePem, algorithm, kid: jwk.kid })
  const requiredClaims = ['iss', 'sub', 'aud', 'exp', 'iat', 'jti']
  const verifier = createVerifier({ key: publicPem, algorithms: [algorithm], requiredClaims })
  const lenientVerifier = createVerifier({ key: publicPem, algorithms: [algorithm], requiredClaims, ignoreExpiration: true, ignoreNotBefore: true })
  const verifiers = new Map([[jwk.kid, { verifier, lenientVerifier }]])

  const check: Keys['check'] = (token, checkOptions = {}) => {
    if (token.length === 0 || token.length > MAX_TOKEN_LENGTH) return { valid: false, error: 'malformed' }
    const header = decodeHeader(token)
    if (header === undefined) return { valid: false, error: 'malformed' }
    if (header.alg !== algorithm) return { valid: false, error: 'invalid_algorithm' }
    if (KEY_LOCATING_HEADERS.some((name) => name in header)) return { valid: false, error: 'invalid_header' }
    const entry = typeof header.kid === 'string' ? verifiers.get(header.kid) : undefined
    if (entry === undefined) return { valid: false, error: 'unknown_key' }
    let claims: AccessTokenClaims
    try {
      claims = (checkOptions.ignoreExpiration === true ? entry.lenientVerifier : entry.verifier)(token) as AccessTokenClaims
    } catch (err) {
      const code = (err as TokenError).code
      return { valid: false, error: REJECTION_BY_CODE[code] ?? 'malformed' }
    }
    if (claims.iss !== issuer) return { valid: false, error: 'invalid_issuer' }
    const audiences = Array.isArray(claims.aud) ? claims.aud : [claims.aud]
    if (!audiences.includes(audience)) return { valid: false, error: 'invalid_audience' }
    if (typeof claims.jti !== 'string' || typeof claims.sub !== 'string') return { valid: false, error: 'malformed' }
    return { valid: true, claims }
  }

  return {
    kid: jwk.kid,
    algorithm,
    jwksBody: JSON.stringify({ keys: [jwk] }),
    sign: (claims) => signer(claims),
    check
  }
}

declare module 'fastify' {
  interface FastifyInstance {
    keys: Keys
  }
}

export default fp(async (fastify) => {
  const { config } = fastify
  fastify.decorate('keys', createKeys({
    privateKey: config.privateKey,
    publicKey: config.publicKey,
    algorithm: config.algorithm,
    issuer: config.issuer,
    audience: config.audience
  }))
  fastify.log.info({ kid: fastify.keys.kid, alg: config.algorithm }, 'signing key loaded')
}, { name: 'keys', dependencies: ['config'] })
