// What the benchmark takes from the running service: a pool of its tokens
// for verify, introspect and refresh, and what the ceilings need to do the
// same work (its key, the shape of its tokens, its JWKS and discovery bytes).
import type { KeyObject } from 'node:crypto'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { CapturedDocument, Ceilings } from './bare.ts'

const POOL_SIZE = 10_000
const BATCH = 50

export interface TokenPool {
  size: number
  accessFile: string
  refreshFile: string
  /** the claims of one access token, with the lifetimes of the token response */
  sample: { claims: Record<string, unknown>, kid: string, expiresIn: number, refreshTokenBytes: number }
}

interface TokenResponse {
  access_token: string
  refresh_token: string
  expires_in: number
}

function decodeSegment (token: string, index: number): Record<string, unknown> {
  return JSON.parse(Buffer.from(token.split('.')[index] ?? '', 'base64url').toString('utf8')) as Record<string, unknown>
}

/** One client_credentials grant of the client that `basic` authenticates. */
async function clientCredentials (url: string, basic: string): Promise<TokenResponse> {
  const res = await fetch(`${url}/oauth/token`, { method: 'POST', headers: { authorization: basic, 'content-type': 'application/x-www-form-urlencoded' }, body: 'grant_type=client_credentials' })
  if (!res.ok) throw new Error(`client_credentials: ${res.status} ${await res.text()}`)
  return await res.json() as TokenResponse
}

/** POOL_SIZE client_credentials grants, BATCH at a time: distinct access and refresh tokens, in two JSON files. */
export async function tokenPool (url: string, basic: string, work: string): Promise<TokenPool> {
  const responses: TokenResponse[] = []
  while (responses.length < POOL_SIZE) {
    responses.push(...await Promise.all(Array.from({ length: BATCH }, async () => await clientCredentials(url, basic))))
  }
  const accessFile = join(work, 'access.json')
  const refreshFile = join(work, 'refresh.json')
  writeFileSync(accessFile, JSON.stringify(responses.map((tokens) => tokens.access_token)))
  writeFileSync(refreshFile, JSON.stringify(responses.map((tokens) => tokens.refresh_token)))
  const first = responses[0]!
  const sample = {
    claims: decodeSegment(first.access_token, 1),
    kid: String(decodeSegment(first.access_token, 0).kid),
    expiresIn: first.expires_in,
    refreshTokenBytes: Buffer.from(first.refresh_token, 'base64url').length
  }
  return { size: responses.length, accessFile, refreshFile, sample }
}

// Set per connection or per response by the HTTP layer, not by the route.
const TRANSPORT_HEADERS = new Set(['date', 'connection', 'keep-alive', 'content-length', 'transfer-encoding'])

/** One GET of the service: its body, and the headers the route set. */
async function capture (url: string): Promise<CapturedDocument> {
  const res = await fetch(url)
  if (!res.ok) throw new Error(`${url}: ${res.status}`)
  const headers = Object.fromEntries([...res.headers].filter(([name]) => !TRANSPORT_HEADERS.has(name)))
  return { body: await res.text(), headers }
}

/** The token endpoint as the service's discovery names it (PUBLIC_URL/oauth/token): the htu of DPoP proofs. */
export function tokenEndpoint (discovery: CapturedDocument): string {
  return String((JSON.parse(discovery.body) as { token_endpoint?: unknown }).token_endpoint)
}

/**
 * An access token of the bench client, of a session of its own (the refresh
 * scenario never touches it), as the subject of token exchanges.
 */
export async function subjectToken (url: string, basic: string): Promise<string> {
  return (await clientCredentials(url, basic)).access_token
}

export async function ceilingSettings (url: string, keyPair: { privateKey: KeyObject, publicKey: KeyObject }, pool: TokenPool): Promise<Ceilings> {
  const discovery = await capture(`${url}/.well-known/openid-configuration`)
  return {
    privateKeyPem: keyPair.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKeyPem: keyPair.publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    kid: pool.sample.kid,
    sampleClaims: pool.sample.claims,
    accessTokenTtl: pool.sample.expiresIn,
    refreshTokenBytes: pool.sample.refreshTokenBytes,
    jwks: await capture(`${url}/.well-known/jwks.json`),
    discovery,
    dpopUrl: tokenEndpoint(discovery)
  }
}
