// What the token endpoint tests share: raw requests and the shape of the
// answers they expect.
import { type JsonWebKey } from 'node:crypto'
import { type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'

export const CLIENT_CREDENTIALS = { grant_type: 'client_credentials' }
export const DEFAULT_REALM = 'Basic realm="session-service"'
export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
export const BASE64URL = /^[A-Za-z0-9_-]+$/

/** An Authorization header carrying `decoded` as it is (no form-encoding). */
export function rawBasic (decoded: string): string {
  return 'Basic ' + Buffer.from(decoded, 'utf8').toString('base64')
}

/** Asserts an RFC 6749 §5.2 error: status, code, and a body of exactly error and error_description. */
export function assertOAuthError (t: Test, res: LightMyRequestResponse, status: number, error: string, what: string): void {
  t.equal(res.statusCode, status, `${what}: status`)
  t.match(res.headers['content-type'], /^application\/json/, `${what}: JSON content type`)
  const body = res.json()
  t.equal(body.error, error, `${what}: error code`)
  t.same(Object.keys(body).sort(), ['error', 'error_description'], `${what}: body has exactly error and error_description`)
  t.type(body.error_description, 'string', `${what}: error_description is a string`)
}

/** invalid_client: 401 with the Basic challenge naming the issuer as realm. */
export function assertInvalidClient (t: Test, res: LightMyRequestResponse, what: string, challenge = DEFAULT_REALM): void {
  assertOAuthError(t, res, 401, 'invalid_client', what)
  t.equal(res.headers['www-authenticate'], challenge, `${what}: WWW-Authenticate`)
}

/** POST /oauth/token with a raw payload and headers (no defaults added). */
export async function postToken (app: FastifyInstance, headers: Record<string, string>, payload?: string | Record<string, unknown>): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/oauth/token', headers, ...(payload === undefined ? {} : { payload }) })
}

export async function publishedKey (app: FastifyInstance): Promise<JsonWebKey & { kid: string }> {
  const res = await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })
  const key = res.json().keys[0]
  if (key === undefined) throw new Error(`no key in the JWKS: ${res.body}`)
  return key
}
