// What the property tests send: the endpoints with what the README and the
// OpenAPI document say of them, and what a generated request is made of.
import { readdirSync } from 'node:fs'
import { join } from 'node:path'

import fc from 'fast-check'

/** Every request must be answered within this long. */
export const BOUND_MS = 5000
export const NUM_RUNS = Number(process.env.PROPERTY_RUNS ?? 300)
/** The HTTP property stops generating after this long (a run so cut short still passes if nothing failed). */
export const TIME_LIMIT_MS = 90_000
export const SEED = process.env.PROPERTY_SEED === undefined ? undefined : Number(process.env.PROPERTY_SEED)

export const FORM_TYPE = 'application/x-www-form-urlencoded'
export const JSON_TYPE = 'application/json'
/** BODY_LIMIT's default, which the test app keeps. */
export const BODY_LIMIT = 16384
export const ISSUER = 'session-service'
export const REALM = `Basic realm="${ISSUER}"`
// Throttling of failed authentications is on, with low limits so that the
// property reaches it within a run; a secret already verified still passes.
export const APP_ENV = { AUTH_FAILURE_LIMIT: '3', AUTH_FAILURE_LIMIT_PER_ADDRESS: '10' }

// ---------------------------------------------------------------------------
// The endpoints. The statuses of the API routes come from the app's OpenAPI
// document; `statuses` gives them, from the README, for the routes the
// document does not describe (no response schema, hidden, or the docs).

export interface RouteSpec {
  methods: readonly string[]
  /** the only media type the route takes (its preParsing hook refuses any other with 400) */
  media?: string
  /** the README's statuses, for a route without response schemas in the OpenAPI document */
  statuses?: readonly number[]
  /** token, revoke, introspect: Cache-Control no-store and Pragma no-cache on every answer, 401 with a Basic challenge */
  clientAuthenticated?: boolean
  /** answers on the admin listener only (and there only) */
  admin?: boolean
}

export const GET_HEAD = ['GET', 'HEAD'] as const
export const ROUTES: Record<string, RouteSpec> = {
  '/oauth/token': { methods: ['POST'], media: FORM_TYPE, clientAuthenticated: true },
  '/oauth/revoke': { methods: ['POST'], media: FORM_TYPE, clientAuthenticated: true },
  '/oauth/introspect': { methods: ['POST'], media: FORM_TYPE, clientAuthenticated: true },
  '/oauth/verify': { methods: ['POST'], media: JSON_TYPE },
  '/health': { methods: GET_HEAD },
  '/ready': { methods: GET_HEAD, admin: true },
  '/live': { methods: GET_HEAD, admin: true },
  // The admin API: the generated requests carry no admin token, so these are
  // its refusals (401) and what comes before authentication (404, 413). It
  // authenticates before it reads a body, so no media type is listed: a body
  // of the wrong type from a caller without a token is a 401, not a 400.
  '/admin/clients': { methods: ['GET', 'HEAD', 'POST'], admin: true },
  '/admin/clients/{client_id}': { methods: ['GET', 'HEAD', 'PATCH', 'DELETE'], admin: true },
  '/admin/clients/{client_id}/secret': { methods: ['POST'], admin: true },
  '/admin/clients/{client_id}/enable': { methods: ['POST'], admin: true },
  '/admin/clients/{client_id}/disable': { methods: ['POST'], admin: true },
  '/admin/clients/{client_id}/events': { methods: GET_HEAD, admin: true },
  '/admin/keys': { methods: GET_HEAD, admin: true },
  '/admin/keys/events': { methods: GET_HEAD, admin: true },
  '/admin/keys/rotate': { methods: ['POST'], admin: true },
  '/admin/keys/{kid}/retire': { methods: ['POST'], admin: true },
  // README, Discovery: the document comes from configuration alone, so no Host header changes or refuses it.
  '/.well-known/openid-configuration': { methods: GET_HEAD, statuses: [200] },
  '/.well-known/oauth-authorization-server': { methods: GET_HEAD, statuses: [200] },
  '/.well-known/jwks.json': { methods: GET_HEAD, statuses: [200] },
  // Hidden from the document, and registered without a HEAD route.
  '/metrics': { methods: ['GET'], statuses: [200], admin: true },
  '/docs': { methods: GET_HEAD, statuses: [200], admin: true },
  '/docs/': { methods: GET_HEAD, statuses: [200], admin: true },
  '/docs/json': { methods: GET_HEAD, statuses: [200], admin: true },
  '/docs/yaml': { methods: GET_HEAD, statuses: [200], admin: true },
  '/docs/static/swagger-initializer.js': { methods: GET_HEAD, statuses: [200], admin: true },
  // @fastify/swagger-ui redirects its static index to /docs/.
  '/docs/static/index.html': { methods: GET_HEAD, statuses: [302], admin: true }
}
export const STATIC_PREFIX = '/docs/static/'
/** The files @fastify/swagger-ui serves under /docs/static/ (@fastify/static; anything else is 404). */
export const STATIC_FILES = readdirSync(join(import.meta.dirname, '..', '..', 'node_modules', '@fastify', 'swagger-ui', 'static'))
/** Parameters the service reads (RFC 6749, 7009, 7523, 7662, 8693, 8707). */
export const PARAMETERS = ['grant_type', 'client_id', 'client_secret', 'scope', 'audience', 'resource', 'refresh_token', 'token',
  'token_type_hint', 'client_assertion', 'client_assertion_type', 'subject_token', 'subject_token_type', 'actor_token', 'actor_token_type',
  'requested_token_type'] as const
/** README: reasons /oauth/verify gives for an invalid token. */
export const VERIFY_REASONS = ['malformed', 'invalid_algorithm', 'invalid_header', 'invalid_type', 'unknown_key', 'invalid_signature',
  'expired', 'not_yet_valid', 'missing_claim', 'invalid_issuer', 'invalid_audience', 'revoked']
/** README: the error codes by status (the token endpoint's table, 404 from the not-found handler). */
export const ERROR_CODES: Record<number, readonly string[]> = {
  400: ['invalid_request', 'invalid_grant', 'invalid_scope', 'invalid_target', 'unsupported_grant_type', 'unauthorized_client'],
  401: ['invalid_client', 'invalid_token', 'invalid_request'],
  403: ['insufficient_scope'],
  404: ['not_found'],
  413: ['invalid_request'],
  429: ['rate_limit_exceeded']
}

// ---------------------------------------------------------------------------
// What a generated request is made of. References (`ref`) name real
// credentials and tokens, resolved when the request is sent.

export type ClientName = 'main' | 'limited' | 'disabled' | 'keys'
export type Ref =
  | `${ClientName}.id` | `${ClientName}.secret`
  | 'accessToken' | 'foreignAccessToken' | 'expiredAccessToken' | 'tamperedAccessToken'
  | 'freshRefreshToken' | 'usedRefreshToken' | 'assertion' | 'usedAssertion'
export type Value = { ref: Ref } | { text: string } | { json: fc.JsonValue }

export type PathSpec =
  | { kind: 'route', path: string, variant: 'exact' | 'trailing-slash' | 'upper-case' | 'encoded', at: number, query: string | null }
  | { kind: 'static', name: string, query: string | null }
  | { kind: 'random', prefix: string, segments: string[], query: string | null }
  | { kind: 'bad-percent', path: string, junk: string }

export type BodySpec =
  | { kind: 'none' }
  /** name/value pairs (repeats kept), encoded as the content type says: a JSON object or a form */
  | { kind: 'fields', fields: Array<[string, Value]> }
  | { kind: 'text', text: string }
  | { kind: 'json', value: fc.JsonValue }
  | { kind: 'bytes', bytes: Uint8Array }
  /** BODY_LIMIT + delta bytes of a well-formed body */
  | { kind: 'oversized', delta: number }

export type AuthSpec =
  | { kind: 'client', client: ClientName, secret: Value | null }
  | { kind: 'basic', id: string, secret: string }
  | { kind: 'basic-decoded', decoded: string }
  | { kind: 'basic-text', text: string }
  | { kind: 'bearer', token: Value }
  | { kind: 'raw', header: string }
  | { kind: 'huge', size: number }

export interface CredentialSpec {
  authorization: AuthSpec | null
  /** credential fields, sent with a 'fields' body */
  fields: Array<[string, Value]>
}

export interface RequestSpec {
  /** 'auto': the route's own method */
  method: 'auto' | 'GET' | 'POST' | 'PUT' | 'DELETE' | 'PATCH' | 'HEAD' | 'OPTIONS'
  path: PathSpec
  /** 'auto': the route's media type; null: no Content-Type header */
  contentType: string | null
  /** the body; a 'fields' body also carries the credentials' fields */
  body: BodySpec
  credentials: CredentialSpec
  host: string | null
  accept: string | null
  headers: Record<string, string>
  padding: number | null
  remoteAddress: string
  /** the listener it is sent to; 'auto': the route's own */
  listener: 'auto' | 'public' | 'admin'
}
