// private_key_jwt client authentication (RFC 7523 §2.2, §3; OpenID Connect
// Core §9): the client signs a short-lived JWT with its own private key, and
// we check it with the public keys it registered, inline (clients.jwks) or
// published at a URL (clients.jwks_uri, read by the bounded fetcher below).
import { createHash, createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto'
import { lookup as dnsLookup, type LookupAddress, type LookupOptions } from 'node:dns'
import { request as httpRequest, type IncomingMessage } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { BlockList, isIP } from 'node:net'
import fp from 'fastify-plugin'
import { createVerifier, TokenError } from 'fast-jwt'
import type { FastifyRequest } from 'fastify'
import type { Client } from './clients.ts'

/** Asymmetric algorithms a client may sign its assertions with; never none or HMAC. */
export const ASSERTION_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'EdDSA'] as const

/** How far ahead an assertion may expire: a long-lived assertion is a long-lived password. */
export const MAX_ASSERTION_LIFETIME_SECONDS = 600

/** Bound on one read of a jwks_uri, from the connection to the last byte of the body. */
const JWKS_FETCH_TIMEOUT_MS = 3000

/** Largest JWK Set body read from a jwks_uri; a longer one is abandoned. */
const JWKS_MAX_BYTES = 64 * 1024

/** How long keys read from a jwks_uri are used before it is read again. */
const JWKS_CACHE_TTL_MS = 5 * 60_000

/** How long a failed read, or a kid that a fresh read did not list, is remembered. */
const JWKS_NEGATIVE_TTL_MS = 60_000

/** One jwks_uri is read at most once in this long, whatever assertions arrive. */
const JWKS_MIN_INTERVAL_MS = 10_000

const MAX_CACHED_JWKS_URIS = 1000
const MAX_UNKNOWN_KIDS_PER_URI = 100

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

// Where a client's jwks_uri may not lead: this host, the networks behind it,
// and the cloud metadata services (169.254.169.254 is link-local,
// fd00:ec2::254 unique-local). IPv4-mapped IPv6 addresses are checked
// against the IPv4 ranges.
const NON_PUBLIC = new BlockList()
for (const [network, prefix] of [
  ['0.0.0.0', 8], ['10.0.0.0', 8], ['100.64.0.0', 10], ['127.0.0.0', 8], ['169.254.0.0', 16], ['172.16.0.0', 12],
  ['192.0.0.0', 24], ['192.168.0.0', 16], ['198.18.0.0', 15], ['224.0.0.0', 4], ['240.0.0.0', 4]
] as const) NON_PUBLIC.addSubnet(network, prefix, 'ipv4')
for (const [network, prefix] of [['::', 96], ['fc00::', 7], ['fe80::', 10], ['ff00::', 8]] as const) NON_PUBLIC.addSubnet(network, prefix, 'ipv6')

function isPublicAddress (address: string): boolean {
  const family = isIP(address)
  return family !== 0 && !NON_PUBLIC.check(address, family === 4 ? 'ipv4' : 'ipv6')
}

class JwksFetchError extends Error {}

type LookupCallback = (err: NodeJS.ErrnoException | null, address: string | LookupAddress[], family?: number) => void

// Resolves a jwks_uri's host and drops the addresses it may not reach. The
// connection is made to what this returns, so a name that resolves to a
// public address when checked and a private one when used cannot slip through.
function publicOnlyLookup (hostname: string, options: LookupOptions, callback: LookupCallback): void {
  dnsLookup(hostname, { ...options, all: true }, (err, addresses) => {
    if (err !== null) return callback(err, [])
    const usable = addresses.filter((entry) => isPublicAddress(entry.address))
    const first = usable[0]
    if (first === undefined) {
      return callback(Object.assign(new Error(`${hostname} resolves to no public address`), { code: 'ENOTFOUND' }), [])
    }
    if (options.all === true) return callback(null, usable)
    callback(null, first.address, first.family)
  })
}

/** Reads a JWK Set: one GET, no redirect, bounded in time and size. */
async function readJwks (uri: URL, allowPrivate: boolean): Promise<JsonWebKey[]> {
  if (uri.protocol !== 'https:' && !(allowPrivate && uri.protocol === 'http:')) throw new JwksFetchError('the jwks_uri is not https')
  const literal = uri.hostname.replace(/^\[(.*)\]$/, '$1')
  if (!allowPrivate && isIP(literal) !== 0 && !isPublicAddress(literal)) throw new JwksFetchError('the jwks_uri names a non-public address')

  return await new Promise<JsonWebKey[]>((resolve, reject) => {
    let settled = false
    let response: IncomingMessage | undefined
    const finish = (err: Error | undefined, keys: JsonWebKey[] = []): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      // Whatever the outcome, the connection ends here: no socket outlives
      // its read (agent: false keeps none for reuse either).
      response?.destroy()
      outgoing.destroy()
      if (err === undefined) resolve(keys)
      else reject(err)
    }
    const timer = setTimeout(() => finish(new JwksFetchError(`no complete answer within ${JWKS_FETCH_TIMEOUT_MS} ms`)), JWKS_FETCH_TIMEOUT_MS)
    const tooLarge = (): JwksFetchError => new JwksFetchError(`the JWK Set is over ${JWKS_MAX_BYTES} bytes`)

    const send = uri.protocol === 'https:' ? httpsRequest : httpRequest
    const outgoing = send(uri, {
      method: 'GET',
      agent: false,
      headers: { accept: 'application/jwk-set+json, application/json' },
      ...(allowPrivate ? {} : { lookup: publicOnlyLookup })
    }, (res) => {
      response = res
      if (res.statusCode !== 200) return finish(new JwksFetchError(`answered ${res.statusCode ?? 'without a status'}`))
      if (Number(res.headers['content-length'] ?? 0) > JWKS_MAX_BYTES) return finish(tooLarge())
      const chunks: Buffer[] = []
      let size = 0
      res.on('data', (chunk: Buffer) => {
        size += chunk.length
        if (size > JWKS_MAX_BYTES) return finish(tooLarge())
        chunks.push(chunk)
      })
      res.on('end', () => {
        let body: unknown
        try {
          body = JSON.parse(Buffer.concat(chunks).toString('utf8'))
        } catch {
          return finish(new JwksFetchError('the answer is not JSON'))
        }
        const keys = typeof body === 'object' && body !== null ? (body as { keys?: unknown }).keys : undefined
        if (!Array.isArray(keys)) return finish(new JwksFetchError('the answer has no keys array'))
        finish(undefined, keys.filter((key): key is JsonWebKey => typeof key === 'object' && key !== null && !Array.isArray(key)))
      })
      res.on('error', (err) => finish(new JwksFetchError(err.message)))
      res.on('close', () => finish(new JwksFetchError('the connection closed before the end of the answer')))
    })
    outgoing.on('error', (err) => finish(new JwksFetchError(err.message)))
    outgoing.end()
  })
}

interface JwksEntry {
  keys: JsonWebKey[] | undefined
  keysUntil: number
  failure: string | undefined
  failureUntil: number
  lastRead: number
  /** kids a read made after they were first asked for did not list, until when */
  unknownKids: Map<string, number>
  reading: Promise<void> | undefined
}

/** A key in a JWK Set for an assertion's kid and alg; without a kid, only a lone key of the algorithm. */
function selectKey (keys: JsonWebKey[], kid: string | undefined, alg: string): JsonWebKey | undefined {
  const usable = keys.filter((key) => key.alg === undefined || key.alg === alg)
  if (kid === undefined) return usable.length === 1 ? usable[0] : undefined
  return usable.find((key) => key.kid === kid)
}

// Keys of jwks_uri clients, read at most once per JWKS_MIN_INTERVAL_MS per
// URL: assertions with made-up kids, or a URL that fails, cost one read a
// while, not one each.
function jwksCache (allowPrivate: boolean): (uri: string, kid: string, alg: string) => Promise<JsonWebKey | undefined> {
  const entries = new Map<string, JwksEntry>()

  function entryFor (uri: string): JwksEntry {
    let entry = entries.get(uri)
    if (entry !== undefined) {
      // Most recently used last, so that the oldest goes first when full.
      entries.delete(uri)
    } else {
      entry = { keys: undefined, keysUntil: 0, failure: undefined, failureUntil: 0, lastRead: 0, unknownKids: new Map(), reading: undefined }
      if (entries.size >= MAX_CACHED_JWKS_URIS) {
        const oldest = entries.keys().next().value
        if (oldest !== undefined) entries.delete(oldest)
      }
    }
    entries.set(uri, entry)
    return entry
  }

  async function read (uri: string, entry: JwksEntry): Promise<void> {
    entry.reading ??= (async () => {
      try {
        const keys = await readJwks(new URL(uri), allowPrivate)
        const now = Date.now()
        entry.keys = keys
        entry.keysUntil = now + JWKS_CACHE_TTL_MS
        entry.failure = undefined
        entry.lastRead = now
      } catch (err) {
        const now = Date.now()
        // Keys read before stay in use until they expire: a flaky server
        // does not lock its client out at once.
        entry.failure = err instanceof JwksFetchError ? err.message : 'the read failed'
        entry.failureUntil = now + JWKS_NEGATIVE_TTL_MS
        entry.lastRead = now
      } finally {
        entry.reading = undefined
      }
    })()
    await entry.reading
  }

  return async function findRemoteKey (uri, kid, alg) {
    const entry = entryFor(uri)
    if (entry.reading !== undefined) await entry.reading
    let now = Date.now()
    const fresh = entry.keys !== undefined && now < entry.keysUntil
    if (fresh) {
      const key = selectKey(entry.keys ?? [], kid, alg)
      if (key !== undefined) return key
    }
    const unknownUntil = entry.unknownKids.get(kid)
    if (unknownUntil !== undefined && now < unknownUntil) return undefined
    if (!fresh && entry.failure !== undefined && now < entry.failureUntil) throw new Error(entry.failure)
    if (now - entry.lastRead < JWKS_MIN_INTERVAL_MS) {
      if (fresh) return undefined
      throw new Error(entry.failure ?? 'read too recently')
    }

    await read(uri, entry)
    now = Date.now()
    if (entry.keys === undefined || now >= entry.keysUntil) throw new Error(entry.failure ?? 'no keys')
    const key = selectKey(entry.keys, kid, alg)
    if (key === undefined) {
      entry.unknownKids.delete(kid)
      entry.unknownKids.set(kid, now + JWKS_NEGATIVE_TTL_MS)
      if (entry.unknownKids.size > MAX_UNKNOWN_KIDS_PER_URI) {
        const oldest = entry.unknownKids.keys().next().value
        if (oldest !== undefined) entry.unknownKids.delete(oldest)
      }
    }
    return key
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
  const findRemoteKey = jwksCache(config.jwksUriAllowPrivate)

  async function findKey (client: Client, kid: string | undefined, alg: string): Promise<JsonWebKey | undefined> {
    if (client.jwks !== null) return selectKey(client.jwks.keys, kid, alg)
    // A published set may change under us, so a key behind a jwks_uri is
    // always named by its kid.
    if (client.jwksUri === null || kid === undefined) return undefined
    return await findRemoteKey(client.jwksUri, kid, alg)
  }

  // The audiences an assertion may name: the issuer, the token endpoint, or
  // the endpoint it is presented to (revocation, introspection). All from
  // configuration: a Host header must not let an assertion made for another
  // server pass here.
  const tokenEndpoint = `${config.publicUrl}/oauth/token`
  function acceptedAudiences (request: FastifyRequest): string[] {
    const route = request.routeOptions.url
    return [...new Set([config.issuer, tokenEndpoint, ...(route === undefined ? [] : [`${config.publicUrl}${route}`])])]
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
    const recorded = await store.replayGuard.recordOnce(marker, exp)
    if (!recorded) return 'the assertion was already used'
    return undefined
  }

  fastify.decorate('clientAssertions', { check })
}, { name: 'client-assertions', dependencies: ['config', 'store'] })
