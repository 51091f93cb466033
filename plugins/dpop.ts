// DPoP (RFC 9449) as the endpoints use it: the proof of a token request,
// and a proof presented with an access token to /oauth/verify. The checks of
// the proof itself are dpop/proof.ts; here are what needs the service's
// state: single use (the replay guard), server nonces (keyed by a secret of
// the database's) and the settings.
import fp from 'fastify-plugin'
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { Client } from '../storage/clients.ts'
import { readServiceSecret } from '../storage/record-seal.ts'
import { boundKey, checkProof, markerExpiry, proofMarker, type CheckedProof, type DpopRejection, type ProofExpectation } from '../dpop/proof.ts'
import { isCurrentNonce, makeNonce } from '../dpop/nonce.ts'
import { guard, invalidDpopProof, OAuthError } from './errors.ts'
import type { AccessTokenClaims } from './keys.ts'

export { DPOP_ALGORITHMS } from '../dpop/proof.ts'

/** The response header that hands a client a server nonce (RFC 9449 §8.1). */
export const DPOP_NONCE_HEADER = 'dpop-nonce'

export const NONCE_SECRET_NAME = 'dpop-nonces'

/** A proof presented with an access token: what the resource server received. */
export interface DpopPresentation {
  proof: string
  /** the method of the request to the resource */
  method: string
  /** its absolute URL */
  url: string
}

export interface Dpop {
  /**
   * The proof of a token request (the DPoP header), checked and recorded as
   * used: the thumbprint of its key, which the tokens are bound to, or
   * undefined without the header (refused for a client that must use DPoP).
   * Throws invalid_dpop_proof, or use_dpop_nonce with a fresh nonce.
   */
  proveTokenRequest: (request: FastifyRequest, reply: FastifyReply, client: Client) => Promise<string | undefined>
  /** Why a proof presented with a verified access token does not bind it to its presenter; undefined when it does. */
  checkPresentation: (presentation: DpopPresentation, token: string, claims: AccessTokenClaims) => Promise<DpopRejection | undefined>
}

declare module 'fastify' {
  interface FastifyInstance {
    dpop: Dpop
  }
}

/**
 * The DPoP header's value; undefined without one. Sent twice, Node joins the
 * values with ", ", which no JWS contains: refused, as is any repetition.
 */
function proofHeader (request: FastifyRequest): string | undefined {
  const value = request.headers.dpop
  if (value === undefined) return undefined
  const raw = request.raw.rawHeaders
  let count = 0
  for (let index = 0; index < raw.length; index += 2) {
    if (raw[index]?.toLowerCase() === 'dpop') count++
  }
  if (typeof value !== 'string' || count > 1 || value.includes(',')) throw invalidDpopProof('the DPoP header must be sent once, with one proof')
  return value
}

const now = (): number => Date.now() / 1000

export default fp(async (fastify) => {
  const { config, store } = fastify
  const tokenEndpoint = `${config.publicUrl}/oauth/token`

  // Read when first needed, and again after a failure (the database may be
  // down at that moment: the request is then a 503, as for any read of it).
  let loading: Promise<Buffer> | undefined
  async function nonceKey (): Promise<Buffer> {
    loading ??= guard('postgresql', readServiceSecret(fastify.db, NONCE_SECRET_NAME, '009')).catch((err: unknown) => {
      loading = undefined
      throw err
    })
    return await loading
  }

  /** Records the proof as used; false when it was presented before. */
  async function useOnce (proof: CheckedProof): Promise<boolean> {
    return await store.replayGuard.recordOnce(proofMarker(proof), markerExpiry(proof, config.dpopProofMaxAge))
  }

  async function proveTokenRequest (request: FastifyRequest, reply: FastifyReply, client: Client): Promise<string | undefined> {
    const proof = proofHeader(request)
    if (proof === undefined) {
      // RFC 9449 §5.2: such a client's tokens are always bound.
      if (client.dpopBoundAccessTokens) throw invalidDpopProof('this client must send a DPoP proof with each token request')
      return undefined
    }
    const expected: ProofExpectation = { method: request.method, url: tokenEndpoint, now: now(), maxAge: config.dpopProofMaxAge }
    const checked = checkProof(proof, expected)
    if (!checked.ok) throw invalidDpopProof(checked.description)
    if (config.dpopNonceRequired) {
      const key = await nonceKey()
      if (checked.proof.nonce === undefined || !isCurrentNonce(key, checked.proof.nonce, expected.now)) {
        const description = checked.proof.nonce === undefined ? 'the proof must carry a server nonce' : 'the proof nonce is not current'
        throw new OAuthError(400, 'use_dpop_nonce', `${description}; use the one in the DPoP-Nonce header`, { [DPOP_NONCE_HEADER]: makeNonce(key, expected.now) })
      }
      reply.header(DPOP_NONCE_HEADER, makeNonce(key, expected.now))
    }
    // Last: a proof refused for its nonce may not be burnt (the client signs a new one anyway).
    if (!await useOnce(checked.proof)) throw invalidDpopProof('the proof was already used')
    return checked.proof.jkt
  }

  async function checkPresentation (presentation: DpopPresentation, token: string, claims: AccessTokenClaims): Promise<DpopRejection | undefined> {
    const jkt = boundKey(claims)
    // RFC 9449 §7.2: a proof does not make a bearer token a DPoP one.
    if (jkt === undefined) return 'dpop_unbound_token'
    const checked = checkProof(presentation.proof, { method: presentation.method, url: presentation.url, now: now(), maxAge: config.dpopProofMaxAge, accessToken: token })
    if (!checked.ok) return checked.reason
    if (checked.proof.jkt !== jkt) return 'dpop_key_mismatch'
    if (!await useOnce(checked.proof)) return 'dpop_replayed'
    return undefined
  }

  fastify.decorate('dpop', { proveTokenRequest, checkPresentation })
}, { name: 'dpop', dependencies: ['config', 'postgres', 'store'] })
