// Requests to the app as an OAuth client sends them.
import type { FastifyInstance, InjectOptions, LightMyRequestResponse } from 'fastify'
import { AdminRequest } from '../../plugins/admin-listener.ts'

// RFC 6749 §2.3.1 / appendix B: form-urlencode, where a space is '+'.
function formEncode (value: string): string {
  return encodeURIComponent(value).replace(/%20/g, '+')
}

/** An HTTP Basic header value as RFC 6749 §2.3.1 requires. */
export function basicAuth (clientId: string, clientSecret: string): string {
  return 'Basic ' + Buffer.from(`${formEncode(clientId)}:${formEncode(clientSecret)}`).toString('base64')
}

export function form (fields: Record<string, string>): string {
  return new URLSearchParams(fields).toString()
}

export const FORM = { 'content-type': 'application/x-www-form-urlencoded' }

/** POST /oauth/token with a form body and optional extra headers. */
export async function tokenRequest (app: FastifyInstance, fields: Record<string, string>, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/oauth/token', headers: { ...FORM, ...headers }, payload: form(fields) })
}

export interface IssuedTokens {
  access_token: string
  refresh_token: string
  token_type: string
  expires_in: number
}

/** client_credentials with client_secret_post; fails the caller if not 200. */
export async function issueTokens (app: FastifyInstance, clientId: string, clientSecret: string): Promise<IssuedTokens> {
  const res = await tokenRequest(app, { grant_type: 'client_credentials', client_id: clientId, client_secret: clientSecret })
  if (res.statusCode !== 200) throw new Error(`token request failed: ${res.statusCode} ${res.body}`)
  return res.json()
}

export async function verify (app: FastifyInstance, token: unknown): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/oauth/verify', payload: { token } })
}

/**
 * A request to the admin listener, injected: built as the admin listener's
 * server builds it (an AdminRequest), so that admin routes match and public
 * ones do not, exactly as on the admin port.
 */
export async function injectAdmin (app: FastifyInstance, options: InjectOptions | string): Promise<LightMyRequestResponse> {
  const request = typeof options === 'string' ? { url: options } : options
  return await app.inject({ ...request, Request: AdminRequest })
}
