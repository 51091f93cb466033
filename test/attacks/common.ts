// What the attack tests share: a client, requests from an address of their
// own each, the shape of the answers an attack must get, forged tokens, and
// the state an attack must leave as it was.
import { createPublicKey } from 'node:crypto'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Readable } from 'node:stream'
import type { Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { basicAuth, build, decodeJwt, FORM, form, generateRsaKeyPair, insertClient, type IssuedTokens, issueTokens, parseBody, sql } from '../helper.ts'

export type Fields = Record<string, string>
export type Headers = Record<string, string>
export type Claims = Record<string, unknown>

export const CLIENT = 'svc-attacked'
export const SECRET = 'attacked-secret'
export const JSON_TYPE = { 'content-type': 'application/json' }

/** The attacker's RSA key pair: a real key, not one the service publishes. */
export const attackerKeys = generateRsaKeyPair()

// ---------------------------------------------------------------- requests

// Every request comes from an address of its own. These tests fail many
// client authentications on purpose, and the per-address failure throttle
// (AUTH_FAILURE_LIMIT, AUTH_FAILURE_LIMIT_PER_ADDRESS) would otherwise turn
// later answers into 429s, hiding what each input gets by itself.
export let sent = 0
export function nextAddress (): string {
  sent++
  return `10.${(sent >> 16) & 255}.${(sent >> 8) & 255}.${sent & 255}`
}

/** POST a form (fields or a raw body) to one of the form endpoints. */
export async function postForm (app: FastifyInstance, url: string, body: Fields | string | Readable, headers: Headers = {}): Promise<LightMyRequestResponse> {
  const payload = typeof body === 'string' || body instanceof Readable ? body : form(body)
  return await app.inject({ method: 'POST', url, headers: { ...FORM, ...headers }, payload, remoteAddress: nextAddress() })
}

/** POST a raw JSON body to /oauth/verify. */
export async function postVerify (app: FastifyInstance, body: string | Readable, headers: Headers = JSON_TYPE): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/oauth/verify', headers, payload: body, remoteAddress: nextAddress() })
}

export async function verifyToken (app: FastifyInstance, token: string, audience?: string): Promise<LightMyRequestResponse> {
  return await postVerify(app, JSON.stringify(audience === undefined ? { token } : { token, audience }))
}

export const basicOf = (clientId: string, secret: string): Headers => ({ authorization: basicAuth(clientId, secret) })
/** An Authorization header carrying `decoded` as it is, without the form-encoding RFC 6749 §2.3.1 asks for. */
export const rawBasic = (decoded: string | Buffer): Headers => ({ authorization: 'Basic ' + Buffer.from(decoded).toString('base64') })

// ---------------------------------------------------------------- answers

/**
 * What a caller can tell two answers apart by: the status, the body and every
 * header but Date and the request id (the caller's own, or random, per request).
 */
export function observable (res: LightMyRequestResponse): { status: number, body: string, headers: Record<string, unknown> } {
  const headers: Record<string, unknown> = { ...res.headers }
  delete headers.date
  delete headers['x-request-id']
  return { status: res.statusCode, body: res.body, headers }
}

export function assertVerifyRefuses (t: Test, res: LightMyRequestResponse, error: string, what: string): void {
  t.equal(res.statusCode, 200, `${what}: verify answers 200`, { body: res.body })
  t.strictSame(parseBody(res.body), { valid: false, error }, `${what}: {"valid":false,"error":"${error}"}`)
}

export function assertInactive (t: Test, res: LightMyRequestResponse, what: string): void {
  t.equal(res.statusCode, 200, `${what}: introspection answers 200`, { body: res.body })
  t.strictSame(parseBody(res.body), { active: false }, `${what}: exactly {"active":false}`)
}

export function assertRevokeIgnored (t: Test, res: LightMyRequestResponse, what: string): void {
  t.equal(res.statusCode, 200, `${what}: revocation answers 200`, { body: res.body })
  t.equal(res.body, '', `${what}: with an empty body`)
}

// ---------------------------------------------------------------- tokens

/** Replaces the character at `index` by another base64url character. */
export function flipChar (text: string, index: number): string {
  return text.slice(0, index) + (text[index] === 'A' ? 'B' : 'A') + text.slice(index + 1)
}

export async function countRows (databaseUrl: string, table: 'clients' | 'revocations'): Promise<number> {
  const rows = await sql<{ n: number }>(databaseUrl, `SELECT count(*)::int AS n FROM ${table}`)
  return rows[0]?.n ?? -1
}

/**
 * The genuine token still verifies and is active: none of the attacks
 * revoked it, and no revocation was recorded besides the `revoked` the test
 * made on purpose.
 */
export async function assertUntouched (t: Test, app: FastifyInstance, databaseUrl: string, accessToken: string, revoked = 0): Promise<void> {
  t.equal(parseBody((await verifyToken(app, accessToken)).body).valid, true, 'the genuine access token still verifies')
  const introspected = await postForm(app, '/oauth/introspect', { token: accessToken }, basicOf(CLIENT, SECRET))
  t.equal(parseBody(introspected.body).active, true, 'and is still active at introspection')
  t.equal(await countRows(databaseUrl, 'revocations'), revoked, revoked === 0 ? 'no revocation was recorded' : `only the ${revoked} revocation made on purpose was recorded`)
}

/**
 * A real HTTP server of the attacker's, serving a JWK Set with the attacker's
 * public key at any path, and counting the requests it gets.
 */
export async function attackerServer (t: Test): Promise<{ url: string, hits: string[], jwk: Claims }> {
  const hits: string[] = []
  const jwk: Claims = { ...createPublicKey(attackerKeys.publicKey).export({ format: 'jwk' }), kid: 'attacker-key', alg: 'RS256', use: 'sig' }
  const server = createServer((request, response) => {
    hits.push(request.url ?? '')
    response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys: [jwk] }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, hits, jwk }
}

/** The app with the attacked client, and a genuine token of it (its header and payload decoded). */
export async function attackedApp (t: Test): Promise<{ app: FastifyInstance, databaseUrl: string, genuine: IssuedTokens, header: Claims, payload: Claims }> {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: CLIENT, secret: SECRET })
  const genuine = await issueTokens(app, CLIENT, SECRET)
  const { header, payload } = decodeJwt(genuine.access_token)
  return { app, databaseUrl, genuine, header, payload }
}
