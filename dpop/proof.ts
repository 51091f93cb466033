// DPoP proofs (RFC 9449 §4.2, §4.3): the checks that need nothing but the
// proof, the request it came with and the clock. What needs shared state
// (single use, server nonces) is added by plugins/dpop.ts.
import { createHash, createPublicKey, verify, type JsonWebKey, type KeyObject } from 'node:crypto'
import { jwkThumbprint } from '../plugins/keys.ts'
import { MAX_DPOP_PROOF_LENGTH } from '../schemas/oauth.ts'

/** Algorithms a proof may be signed with: asymmetric only, never none or HMAC. */
export const DPOP_ALGORITHMS = ['ES256', 'EdDSA', 'RS256'] as const
export type DpopAlgorithm = typeof DPOP_ALGORITHMS[number]

/** How far ahead of our clock a proof's iat may be: clocks are never quite in step. */
export const IAT_FUTURE_ALLOWANCE_SECONDS = 5

const MIN_RSA_BITS = 2048
const MAX_RSA_BITS = 8192
const MAX_JTI_LENGTH = 256

/** Why a proof is refused, as /oauth/verify reports it. */
export type DpopRejection =
  | 'dpop_malformed'
  | 'dpop_invalid_type'
  | 'dpop_invalid_algorithm'
  | 'dpop_invalid_key'
  | 'dpop_invalid_signature'
  | 'dpop_missing_claim'
  | 'dpop_method_mismatch'
  | 'dpop_url_mismatch'
  | 'dpop_iat_out_of_range'
  | 'dpop_ath_mismatch'
  | 'dpop_replayed'
  | 'dpop_key_mismatch'
  | 'dpop_unbound_token'

/** A refusal: the reason, and a description that never quotes the proof. */
export interface ProofRefusal {
  reason: DpopRejection
  description: string
}

/** What a valid proof tells: the key's thumbprint, and what single use and nonces need. */
export interface CheckedProof {
  /** RFC 7638 thumbprint of the proof's key: the cnf.jkt of a token bound to it */
  jkt: string
  jti: string
  iat: number
  nonce: string | undefined
}

/** What the proof must match. */
export interface ProofExpectation {
  /** the request's method */
  method: string
  /** the absolute URL the request was sent to; query and fragment do not count */
  url: string
  /** seconds since epoch */
  now: number
  /** how old a proof may be, seconds */
  maxAge: number
  /** the access token presented with the proof: its hash must be the proof's ath */
  accessToken?: string
}

export type ProofCheck = { ok: true, proof: CheckedProof } | ({ ok: false } & ProofRefusal)

const refuse = (reason: DpopRejection, description: string): { ok: false } & ProofRefusal => ({ ok: false, reason, description })

/** JWK members that only a private (or symmetric) key has (RFC 7518 §6). */
const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k']

/** The key type and members each algorithm's public key must have. */
const KEY_SHAPES: Record<DpopAlgorithm, { kty: string, crv?: string, members: string[] }> = {
  ES256: { kty: 'EC', crv: 'P-256', members: ['crv', 'x', 'y'] },
  EdDSA: { kty: 'OKP', crv: 'Ed25519', members: ['crv', 'x'] },
  RS256: { kty: 'RSA', members: ['n', 'e'] }
}

const BASE64URL = /^[A-Za-z0-9_-]+$/

function decodeSegment (segment: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(Buffer.from(segment, 'base64url').toString('utf8'))
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? value as Record<string, unknown> : undefined
  } catch {
    return undefined
  }
}

/**
 * A URL as RFC 9449 §4.3 compares htu: syntax-based normalization (RFC 3986
 * §6.2.2, §6.2.3: case of scheme and host, default port, dot segments,
 * percent-encoding), without query and fragment. Undefined for anything but
 * an absolute http(s) URL without user information.
 */
export function comparableUrl (text: string): string | undefined {
  let url: URL
  try {
    url = new URL(text)
  } catch {
    return undefined
  }
  if ((url.protocol !== 'https:' && url.protocol !== 'http:') || url.username !== '' || url.password !== '') return undefined
  // Hex digits upper case; an encoded unreserved character decoded.
  const path = url.pathname.replace(/%([0-9a-fA-F]{2})/g, (_, hex: string) => {
    const character = String.fromCharCode(parseInt(hex, 16))
    return /^[A-Za-z0-9._~-]$/.test(character) ? character : `%${hex.toUpperCase()}`
  })
  return `${url.protocol}//${url.host}${path === '' ? '/' : path}`
}

/** The public key of the jwk header, checked against the algorithm; a private key is refused. */
function proofKey (jwk: unknown, alg: DpopAlgorithm): KeyObject | ProofRefusal {
  if (typeof jwk !== 'object' || jwk === null || Array.isArray(jwk)) return { reason: 'dpop_invalid_key', description: 'the jwk header is not a JSON Web Key' }
  const members = jwk as Record<string, unknown>
  if (PRIVATE_MEMBERS.some((name) => name in members)) return { reason: 'dpop_invalid_key', description: 'the jwk header holds private key material; it must be a public key' }
  const shape = KEY_SHAPES[alg]
  if (members.kty !== shape.kty || (shape.crv !== undefined && members.crv !== shape.crv)) {
    return { reason: 'dpop_invalid_key', description: `the jwk header is not a ${shape.crv ?? shape.kty} key, as ${alg} needs` }
  }
  if (shape.members.some((name) => typeof members[name] !== 'string')) return { reason: 'dpop_invalid_key', description: 'the jwk header lacks a member of its key type' }
  const publicMembers = Object.fromEntries([['kty', shape.kty], ...shape.members.map((name) => [name, members[name]])])
  let key: KeyObject
  try {
    key = createPublicKey({ key: publicMembers as JsonWebKey, format: 'jwk' })
  } catch {
    return { reason: 'dpop_invalid_key', description: 'the jwk header is not a usable public key' }
  }
  const bits = key.asymmetricKeyDetails?.modulusLength
  if (shape.kty === 'RSA' && (bits === undefined || bits < MIN_RSA_BITS || bits > MAX_RSA_BITS)) {
    return { reason: 'dpop_invalid_key', description: `an RSA proof key must have ${MIN_RSA_BITS} to ${MAX_RSA_BITS} bits` }
  }
  return key
}

/** How each algorithm's signature is verified with node:crypto (RFC 7518 §3.3, §3.4; RFC 8037 §3.1). */
const VERIFY_PARAMETERS: Record<DpopAlgorithm, { digest: string | null, dsaEncoding?: 'ieee-p1363' }> = {
  ES256: { digest: 'sha256', dsaEncoding: 'ieee-p1363' },
  EdDSA: { digest: null },
  RS256: { digest: 'sha256' }
}

/**
 * The signature checked with the proof's own key and algorithm; undefined
 * when it holds. node:crypto directly: the key is new with every proof, and
 * building a JWT library's verifier for each one cost about as much again as
 * the verification itself (bench: token (DPoP)).
 */
export function signatureRefusal (segments: readonly string[], key: KeyObject, alg: DpopAlgorithm): ProofRefusal | undefined {
  const { digest, dsaEncoding } = VERIFY_PARAMETERS[alg]
  const signed = Buffer.from(`${segments[0] ?? ''}.${segments[1] ?? ''}`)
  const signature = Buffer.from(segments[2] ?? '', 'base64url')
  let holds = false
  try {
    holds = verify(digest, signed, dsaEncoding === undefined ? key : { key, dsaEncoding }, signature)
  } catch {
    return { reason: 'dpop_malformed', description: 'the proof signature cannot be checked' }
  }
  return holds ? undefined : { reason: 'dpop_invalid_signature', description: 'the proof signature does not verify with its jwk' }
}

/** The header (§4.3 items 2 to 6); the key and algorithm when they are acceptable. */
function checkHeader (header: Record<string, unknown>): { key: KeyObject, alg: DpopAlgorithm, jwk: JsonWebKey } | ProofRefusal {
  if (typeof header.typ !== 'string' || header.typ.toLowerCase() !== 'dpop+jwt') return { reason: 'dpop_invalid_type', description: 'the proof typ must be dpop+jwt' }
  const alg = header.alg
  if (typeof alg !== 'string' || !(DPOP_ALGORITHMS as readonly string[]).includes(alg)) {
    return { reason: 'dpop_invalid_algorithm', description: `the proof alg must be one of ${DPOP_ALGORITHMS.join(', ')}` }
  }
  // No extension of ours needs `crit`: a proof that demands one is not understood.
  if ('crit' in header) return { reason: 'dpop_malformed', description: 'the proof has a crit header' }
  const key = proofKey(header.jwk, alg as DpopAlgorithm)
  if ('reason' in key) return key
  return { key, alg: alg as DpopAlgorithm, jwk: header.jwk as JsonWebKey }
}

/** The claims (§4.3 items 7 to 11, and ath of §7.1 when a token comes with the proof). */
function checkClaims (claims: Record<string, unknown>, expected: ProofExpectation): ProofRefusal | undefined {
  const { jti, htm, htu, iat, ath } = claims
  if (typeof jti !== 'string' || jti.length === 0 || jti.length > MAX_JTI_LENGTH) return { reason: 'dpop_missing_claim', description: 'the proof jti is missing or too long' }
  if (typeof htm !== 'string' || typeof htu !== 'string' || typeof iat !== 'number' || !Number.isFinite(iat)) {
    return { reason: 'dpop_missing_claim', description: 'the proof lacks htm, htu or a numeric iat' }
  }
  if (claims.nonce !== undefined && typeof claims.nonce !== 'string') return { reason: 'dpop_malformed', description: 'the proof nonce is not a string' }
  if (htm !== expected.method) return { reason: 'dpop_method_mismatch', description: 'the proof htm is not the method of the request' }
  const target = comparableUrl(htu)
  if (target === undefined || target !== comparableUrl(expected.url)) return { reason: 'dpop_url_mismatch', description: 'the proof htu is not the URL of the request' }
  if (iat < expected.now - expected.maxAge || iat > expected.now + IAT_FUTURE_ALLOWANCE_SECONDS) {
    return { reason: 'dpop_iat_out_of_range', description: `the proof iat is not within the last ${expected.maxAge} seconds` }
  }
  if (expected.accessToken !== undefined) {
    const hash = createHash('sha256').update(expected.accessToken).digest('base64url')
    if (ath !== hash) return { reason: 'dpop_ath_mismatch', description: 'the proof ath is not the hash of the access token' }
  }
  return undefined
}

/** Checks a proof (RFC 9449 §4.3) against the request it came with; single use and nonces aside. */
export function checkProof (proof: string, expected: ProofExpectation): ProofCheck {
  if (proof.length === 0 || proof.length > MAX_DPOP_PROOF_LENGTH) return refuse('dpop_malformed', `the proof must be a JWS of at most ${MAX_DPOP_PROOF_LENGTH} characters`)
  const segments = proof.split('.')
  if (segments.length !== 3 || !segments.every((segment) => BASE64URL.test(segment))) return refuse('dpop_malformed', 'the proof is not a compact JWS')
  const header = decodeSegment(segments[0] as string)
  const claims = decodeSegment(segments[1] as string)
  if (header === undefined || claims === undefined) return refuse('dpop_malformed', 'the proof header or claims are not JSON objects')
  const accepted = checkHeader(header)
  if ('reason' in accepted) return { ok: false, ...accepted }
  const badSignature = signatureRefusal(segments, accepted.key, accepted.alg)
  if (badSignature !== undefined) return { ok: false, ...badSignature }
  const badClaims = checkClaims(claims, expected)
  if (badClaims !== undefined) return { ok: false, ...badClaims }
  return {
    ok: true,
    proof: { jkt: jwkThumbprint(accepted.jwk), jti: claims.jti as string, iat: claims.iat as number, nonce: claims.nonce as string | undefined }
  }
}

/** The key a token is bound to (RFC 9449 §6.1 cnf.jkt), if it is. */
export function boundKey (claims: Record<string, unknown>): string | undefined {
  const cnf = claims.cnf
  if (typeof cnf !== 'object' || cnf === null) return undefined
  const jkt = (cnf as { jkt?: unknown }).jkt
  return typeof jkt === 'string' ? jkt : undefined
}

/** The single-use marker of a proof: its key and jti, hashed (a jti is the client's to choose). */
export function proofMarker (proof: CheckedProof): string {
  return `dpop:${createHash('sha256').update(`${proof.jkt}\0${proof.jti}`).digest('base64url')}`
}

/** When a proof's marker may go: once its iat is past the window, the proof is refused anyway. */
export const markerExpiry = (proof: CheckedProof, maxAge: number): number => Math.ceil(proof.iat) + maxAge + 1
