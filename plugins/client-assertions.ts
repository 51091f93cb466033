// private_key_jwt client authentication (RFC 7523 §2.2, §3; OpenID Connect
// Core §9): the client signs a short-lived JWT with its own private key, and
// we check it with the public keys it registered, inline (clients.jwks) or
// published at a URL (clients.jwks_uri, fetched and cached with get-jwks).
import { createHash, createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto'
import fp from 'fastify-plugin'
import buildGetJwks, { type GetJwks } from 'get-jwks'
import { createVerifier, TokenError } from 'fast-jwt'
import type { FastifyRequest } from 'fastify'
import { guard, withTimeout } from './errors.js'
import type { Client } from './clients.js'

/** Asymmetric algorithms a client may sign its assertions with; never none or HMAC. */
export const ASSERTION_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'EdDSA'] as const

/** How far ahead an assertion may expire: a long-lived assertion is a long-lived password. */
export const MAX_ASSERTION_LIFETIME_SECONDS = 600

/** Bound on fetching a client's jwks_uri. */
const JWKS_FETCH_TIMEOUT_MS = 3000

/** How long fetched client keys are reused before the jwks_uri is read again. */
const JWKS_CACHE_TTL_MS = 5 * 60_000

const MAX_FETCHERS = 1000

export interface ClientAssertions {
  /**
   * Checks a client assertion for `client`. Resolves to undefined when it is
   * valid (and records its jti, so that it cannot be presented again), or to
   * the reason it is refused, for the log only.
   */
  check: (request: FastifyRequest, assertion: string, client: Client) => Promise<string | undefined>
}

declare module 'fastify' {
  interface FastifyInstance {
    clientAssertions: ClientAssertions
  }
}

function decodeSegment (segment: string | undefined): Record<string, unknown> | undefined {
  if (segment === undefined) return undefined
  try {
    const value: unknown = JSON.parse(Buffer.from(segment, 'base64url').toString('utf8'))
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? value as Record<string, unknown> : undefined
  } catch {
    return undefined
  }
}

const REASON_BY_CODE: Partial<Record<string, string>> = {
  [TokenError.codes.expired]: 'the assertion has expired',
  [TokenError.codes.inactive]: 'the assertion is not yet valid',
  [TokenError.codes.invalidSignature]: 'bad signature',
  [TokenError.codes.invalidClaimValue]: 'iss, sub or aud does not match',
  [TokenError.codes.missingRequiredClaim]: 'a required claim is missing',
  [TokenError.codes.invalidAlgorithm]: 'the algorithm does not fit the key'
}

export default fp(async (fastify) => {
  const { config, store } = fastify

  // get-jwks reads `${domain}${jwksPath}`; a jwks_uri is split into those two,
  // with one fetcher (and its cache) per distinct path.
  const fetchers = new Map<string, GetJwks>()
  function fetcherFor (jwksUri: URL): GetJwks {
    const path = `${jwksUri.pathname.replace(/^\//, '')}${jwksUri.search}`
    let fetcher = fetchers.get(path)
    if (fetcher === undefined) {
      if (fetchers.size >= MAX_FETCHERS) fetchers.clear()
      fetcher = buildGetJwks({ jwksPath: path, ttl: JWKS_CACHE_TTL_MS, max: 1000, fetchOptions: { redirect: 'error' } })
      fetchers.set(path, fetcher)
    }
    return fetcher
  }

  async function findKey (client: Client, kid: string | undefined, alg: string): Promise<JsonWebKey | undefined> {
    if (client.jwks !== null) {
      const keys = client.jwks.keys.filter((key) => key.alg === undefined || key.alg === alg)
      // Without a kid, an inline set of exactly one usable key is unambiguous.
      if (kid === undefined) return keys.length === 1 ? keys[0] : undefined
      return keys.find((key) => key.kid === kid)
    }
    // get-jwks finds a key by kid, so assertions checked against a jwks_uri need one.
    if (client.jwksUri === null || kid === undefined) return undefined
    const url = new URL(client.jwksUri)
    return await withTimeout(fetcherFor(url).getJwk({ domain: url.origin, alg, kid }), JWKS_FETCH_TIMEOUT_MS, 'jwks_uri') as JsonWebKey
  }

  // The audiences an assertion may name: the issuer, the token endpoint, or
  // the endpoint it is presented to (revocation, introspection).
  function acceptedAudiences (request: FastifyRequest): string[] {
    const base = config.publicUrl ?? `${request.protocol}://${request.host}`
    return [...new Set([config.issuer, `${base}/oauth/token`, `${base}${request.routeOptions.url ?? request.url}`])]
  }

  async function check (request: FastifyRequest, assertion: string, client: Client): Promise<string | undefined> {
    const [headerPart, payloadPart] = assertion.split('.')
    const header = decodeSegment(headerPart)
    const payload = decodeSegment(payloadPart)
    if (header === undefined || payload === undefined) return 'the assertion is not a JWT'
    const alg = header.alg
    if (typeof alg !== 'string' || !(ASSERTION_ALGORITHMS as readonly string[]).includes(alg)) return 'the assertion algorithm is not accepted'
    const kid = typeof header.kid === 'string' ? header.kid : undefined

    let jwk: JsonWebKey | undefined
    try {
      jwk = await findKey(client, kid, alg)
    } catch (err) {
      return `the client's keys could not be read (${(err as Error).message})`
    }
    if (jwk === undefined) return 'no registered key matches the assertion'
    let key: KeyObject
    try {
      key = createPublicKey({ key: jwk, format: 'jwk' })
    } catch {
      return 'the registered key is not a usable public key'
    }

    let claims: Record<string, unknown>
    try {
      const verifier = createVerifier({
        key: key.export({ type: 'spki', format: 'pem' }).toString(),
        algorithms: [alg as typeof ASSERTION_ALGORITHMS[number]],
        allowedIss: client.id,
        allowedSub: client.id,
        allowedAud: acceptedAudiences(request),
        requiredClaims: ['iss', 'sub', 'aud', 'exp', 'jti']
      })
      claims = verifier(assertion) as Record<string, unknown>
    } catch (err) {
      return REASON_BY_CODE[(err as TokenError).code] ?? 'the assertion is invalid'
    }
    const exp = claims.exp as number
    const now = Math.floor(Date.now() / 1000)
    if (exp > now + MAX_ASSERTION_LIFETIME_SECONDS) return `the assertion expires more than ${MAX_ASSERTION_LIFETIME_SECONDS} s ahead`
    if (typeof claims.jti !== 'string' || claims.jti.length === 0 || claims.jti.length > 255) return 'the assertion jti is missing or too long'

    // Single use (RFC 7523 §3, item 7): the first presentation records the
    // jti until the assertion expires; any later one finds it.
    const marker = `assertion:${createHash('sha256').update(`${client.id}\0${claims.jti}`).digest('base64url')}`
    const recorded = await guard(store.dependency, store.recordOnce(marker, exp))
    if (!recorded) return 'the assertion was already used'
    return undefined
  }

  fastify.decorate('clientAssertions', { check })
}, { name: 'client-assertions', dependencies: ['config', 'store'] })
