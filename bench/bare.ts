// The ceilings of the benchmark: bare Fastify routes that each do the one
// piece of work an endpoint of the service cannot avoid, with the same key
// and library, and nothing else (no client lookup, no Redis, no hooks).
// Reads its settings (a JSON `Ceilings`) from the file BENCH_CEILINGS and
// listens on BENCH_PORT.
import { randomBytes, randomUUID } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { parse as parseForm } from 'node:querystring'
import Fastify from 'fastify'
import { createSigner, createVerifier } from 'fast-jwt'

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

const app = Fastify({ logger: false })
app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (request, body, done) => {
  done(null, parseForm(body as string))
})

// client_credentials and refresh_token: one signature, and a response of the same shape.
app.post('/token', async () => {
  const now = Math.floor(Date.now() / 1000)
  const claims = { ...sampleClaims, iat: now, exp: now + settings.accessTokenTtl, jti: randomUUID(), sid: randomUUID() }
  return {
    access_token: sign(claims),
    token_type: 'Bearer',
    expires_in: settings.accessTokenTtl,
    refresh_token: randomBytes(settings.refreshTokenBytes).toString('base64url')
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
