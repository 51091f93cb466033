// What the token endpoint tests share: raw requests and the shape of the
// answers they expect.
import { type JsonWebKey } from 'node:crypto'

import type { FastifyInstance, LightMyRequestResponse } from 'fastify'

export const CLIENT_CREDENTIALS = { grant_type: 'client_credentials' }
export const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
export const BASE64URL = /^[A-Za-z0-9_-]+$/

/** An Authorization header carrying `decoded` as it is (no form-encoding). */
export function rawBasic (decoded: string): string {
  return 'Basic ' + Buffer.from(decoded, 'utf8').toString('base64')
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
