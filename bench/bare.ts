// The ceilings of the benchmark: bare Fastify routes that each do the one
// piece of work an endpoint of the service cannot avoid, with the same key
// and library, and nothing else (no client lookup, no Redis, no hooks).
// Reads its settings (a JSON `Ceilings`) from the file BENCH_CEILINGS and
// listens on BENCH_PORT.
import { createPublicKey, randomBytes, randomUUID, type JsonWebKey } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { parse as parseForm } from 'node:querystring'
import Fastify from 'fastify'
import { createSigner, createVerifier } from 'fast-jwt'
import { comparableUrl, IAT_FUTURE_ALLOWANCE_SECONDS, signatureRefusal } from '../dpop/proof.ts'
import { jwkThumbprint } from '../plugins/keys.ts'

/** A response of the service, captured once, to be sent again byte for byte. */
export interface CapturedDocument {
  body: string
  headers: Record<string, string>
}

export interface Ceilings {
  privateKeyPem: string
  publicKeyPem: string
  kid: string
  /** the claims of one token of the service: the signed claims get the same names and sizes */
  sampleClaims: Record<string, unknown>
  accessTokenTtl: number
  refreshTokenBytes: number
  jwks: CapturedDocument
  discovery: CapturedDocument
  /** the URL DPoP proofs must name as htu: the service's token endpoint, whatever this server's own URL */
  dpopUrl: string
}

const REQUIRED_CLAIMS = ['iss', 'sub', 'aud', 'exp', 'iat', 'jti']

const settings = JSON.parse(readFileSync(process.env.BENCH_CEILINGS ?? '', 'utf8')) as Ceilings
const { sampleClaims } = settings
const sign = createSigner({ key: settings.privateKeyPem, algorithm: 'RS256', kid: settings.kid, header: { alg: 'RS256', typ: 'at+jwt' } })
const verify = createVerifier({ key: settings.publicKeyPem, algorithms: ['RS256'], requiredClaims: REQUIRED_CLAIMS })

/** Verifies as the service's check does once the header is read: signature, times, issuer, audience. */
function verifiedClaims (token: string): Record<string, unknown> | undefined {
  try {
    const claims = verify(token) as Record<string, unknown>
    return claims.iss === sampleClaims.iss && claims.aud === sampleClaims.aud ? claims : undefined
  } catch {
    return undefined
  }
}

const dpopUrl = comparableUrl(settings.dpopUrl)
// How old a proof's iat may be: the service's default DPOP_PROOF_MAX_AGE, which the benchmark keeps.
const PROOF_MAX_AGE = 60

function decodeSegment (segment: string | undefined): Record<string, unknown> {
  return JSON.parse(Buffer.from(segment ?? '', 'base64url').toString('utf8')) as Record<string, unknown>
}

/**
 * The checks of a DPoP proof of an ES256 key that no service can skip: the
 * signature with the key of its jwk header (node:crypto, as the service
 * verifies), htm, htu and iat; the key's RFC 7638 thumbprint, or undefined
 * when the proof does not hold. No single-use record: that needs shared state.
 */
function proofThumbprint (proof: unknown): string | undefined {
  if (typeof proof !== 'string') return undefined
  try {
    const header = decodeSegment(proof.split('.')[0])
    if (header.typ !== 'dpop+jwt' || header.alg !== 'ES256') return undefined
    const jwk = header.jwk as JsonWebKey
    const key = createPublicKey({ key: { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y }, format: 'jwk' })
    const segments = proof.split('.')
    if (signatureRefusal(segments, key, 'ES256') !== undefined) return undefined
    const claims = decodeSegment(segments[1])
    const now = Date.now() / 1000
    const iat = claims.iat
    if (typeof claims.jti !== 'string' || claims.htm !== 'POST' || typeof claims.htu !== 'string' || comparableUrl(claims.htu) !== dpopUrl) return undefined
    if (typeof iat !== 'number' || iat < now - PROOF_MAX_AGE || iat > now + IAT_FUTURE_ALLOWANCE_SECONDS) return undefined
    return jwkThumbprint(jwk)
  } catch {
    return undefined
  }
}

/** An access token of the service's shape, signed now, with `claims` over the sample's. */
function signedNow (claims: Record<string, unknown>, ttl: number = settings.accessTokenTtl): string {
  const now = Math.floor(Date.now() / 1000)
  return sign({ ...sampleClaims, sid: randomUUID(), ...claims, iat: now, exp: now + ttl, jti: randomUUID() })
}

const app = Fastify({ logger: false })
app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (request, body, done) => {
  done(null, parseForm(body as string))
})

// client_credentials and refresh_token: one signature, and a response of the same shape.
app.post('/token', async () => {
  return {
    access_token: signedNow({}),
    token_type: 'Bearer',
    expires_in: settings.accessTokenTtl,
    refresh_token: randomBytes(settings.refreshTokenBytes).toString('base64url')
  }
})

// client_credentials with a DPoP proof: the proof's checks, then the /token work with cnf.jkt.
app.post('/token-dpop', async (request, reply) => {
  const jkt = proofThumbprint(request.headers.dpop)
  if (jkt === undefined) return await reply.code(400).send({ error: 'invalid_dpop_proof' })
  return {
    access_token: signedNow({ cnf: { jkt } }),
    token_type: 'DPoP',
    expires_in: settings.accessTokenTtl,
    refresh_token: randomBytes(settings.refreshTokenBytes).toString('base64url')
  }
})

// Token exchange: the subject token verified as /verify does, then one signature as /token.
app.post<{ Body: { subject_token?: string } }>('/exchange', async (request, reply) => {
  const subject = verifiedClaims(request.body.subject_token ?? '')
  if (subject === undefined) return await reply.code(400).send({ error: 'invalid_request' })
  const ttl = Math.min(settings.accessTokenTtl, Number(subject.exp) - Math.floor(Date.now() / 1000))
  const { sub, aud, scope, sid } = subject
  return {
    access_token: signedNow({ sub, aud, scope, sid, client_id: sampleClaims.client_id }, ttl),
    issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
    token_type: 'Bearer',
    expires_in: ttl
  }
})

app.post<{ Body: { token: string } }>('/verify', async (request) => {
  const claims = verifiedClaims(request.body.token)
  return claims === undefined ? { valid: false, error: 'invalid_signature' } : { valid: true, claims }
})

app.post<{ Body: { token: string } }>('/introspect', async (request) => {
  const claims = verifiedClaims(request.body.token)
  if (claims === undefined || claims.client_id !== sampleClaims.client_id) return { active: false }
  const { sub, iss, aud, exp, iat, jti, sid, scope } = claims
  return { active: true, token_type: 'Bearer', client_id: claims.client_id, sub, iss, aud, exp, iat, jti, sid, scope }
})

for (const [path, document] of [['/jwks', settings.jwks], ['/discovery', settings.discovery]] as const) {
  app.get(path, async (request, reply) => reply.headers(document.headers).send(document.body))
}

await app.listen({ host: '127.0.0.1', port: Number(process.env.BENCH_PORT) })
process.on('SIGTERM', () => {
  app.close().then(() => process.exit(0), () => process.exit(1))
})
