// What every answer to a generated request must be, and the response schemas
// it is checked against.
import { Ajv, type ValidateFunction } from 'ajv'
import type { LightMyRequestResponse } from 'fastify'
import { jwks as jwksSchema } from '../../schemas/oauth.ts'
import { BOUND_MS, JSON_TYPE, BODY_LIMIT, ISSUER, REALM, ROUTES, VERIFY_REASONS, ERROR_CODES } from './spec.ts'

import { type Built } from './requests.ts'

// ---------------------------------------------------------------------------
// The checks of one answer.

export type CheckName = 'bounded time' | 'no 5xx' | 'documented status' | 'exact status' | 'response schema' | 'endpoint URLs' | 'error body' | 'headers' | 'HEAD body'

export interface Violation {
  check: CheckName
  message: string
}

export interface Documented {
  /** status -> validator of the documented body (undefined: documented without a body) */
  statuses: Map<number, ValidateFunction | undefined>
}

// RFC 9110 §8.3.1: type "/" subtype *( OWS ";" OWS parameter ).
export const TOKEN = "[!#$%&'*+.^_`|~0-9A-Za-z-]+"
export const MEDIA_TYPE = new RegExp(`^${TOKEN}/${TOKEN}(?:[ \\t]*;[ \\t]*${TOKEN}=(?:${TOKEN}|"(?:[^"\\\\]|\\\\.)*"))*[ \\t]*$`)
export const STACK_TRACE = /\n\s+at |\bat .+:\d+:\d+|node_modules|\.ts:\d+|\/work\//

/** Routes whose answers never echo the request: none may show a secret, a token or a client id (README, /metrics). */
export const NON_ECHOING = new Set(['/metrics', '/health', '/ready', '/live', '/docs/json', '/docs/yaml', '/.well-known/jwks.json', '/.well-known/openid-configuration', '/.well-known/oauth-authorization-server'])

type Fail = (check: CheckName, message: string) => void

/** The statuses a request may get, and the schema of the body of each (undefined: documented without a body). */
function allowedStatuses (built: Built, documented: Map<string, Documented>): { allowed: number[], validators: Map<number, ValidateFunction | undefined> } {
  const { method } = built.options
  if (built.badUrl) return { allowed: [400], validators: new Map() }
  if (built.route === undefined) {
    // Fastify's not-found handler; before it, a method that has a body gets
    // that body parsed: a Content-Type that is no media type ("unsupported
    // content type") or a JSON body that does not parse ("request body is
    // malformed") is a 400 there.
    const parsed = method !== 'GET' && method !== 'HEAD' && built.contentType !== undefined
    return { allowed: parsed && (built.media === JSON_TYPE || !MEDIA_TYPE.test(built.contentType ?? '')) ? [404, 400] : [404], validators: new Map() }
  }
  if (built.route === 'static') return { allowed: [built.staticFile ? 200 : 404], validators: new Map() }
  const spec = ROUTES[built.route]
  const doc = documented.get(`${built.route} ${method === 'HEAD' ? 'GET' : method}`)
  const validators = doc?.statuses ?? new Map<number, ValidateFunction | undefined>()
  return { allowed: spec?.statuses !== undefined ? [...spec.statuses] : [...validators.keys()], validators }
}

/** The status: documented, and the exact one where the README names it (media type, body size). */
function checkStatus (built: Built, status: number, allowed: number[], body: string, fail: Fail): void {
  if (status < 500 && !allowed.includes(status)) fail('documented status', `status ${status} is not among the documented ${allowed.join(', ')} (${body.slice(0, 160)})`)
  const spec = built.route === undefined ? undefined : ROUTES[built.route]
  if (spec?.media !== undefined) {
    if (built.media !== spec.media && status !== 400) fail('exact status', `a body of media type "${built.media}" must be refused with 400 (the route takes ${spec.media}), got ${status}`)
    if (built.canonicalType && built.bytes > BODY_LIMIT && status !== 413) fail('exact status', `a ${built.bytes}-byte body (over BODY_LIMIT ${BODY_LIMIT}) must get 413, got ${status}`)
  }
  if (status === 413 && built.bytes <= BODY_LIMIT) fail('exact status', `413 for a ${built.bytes}-byte body, within BODY_LIMIT ${BODY_LIMIT}`)
}

/** An answer whose body has been read: its content type, and its JSON if it is JSON. */
interface ReadAnswer {
  built: Built
  res: LightMyRequestResponse
  status: number
  contentType: string
  parsed: unknown
  isJson: boolean
}

function readAnswer (built: Built, res: LightMyRequestResponse, fail: Fail): ReadAnswer {
  const contentType = String(res.headers['content-type'] ?? '')
  let parsed: unknown
  let isJson = false
  if (contentType.startsWith(JSON_TYPE)) {
    try {
      parsed = JSON.parse(res.body)
      isJson = true
    } catch {
      fail('response schema', `a ${contentType} body that is not JSON: ${res.body.slice(0, 120)}`)
    }
  }
  return { built, res, status: res.statusCode, contentType, parsed, isJson }
}

/** An error answer: exactly { error, error_description }, a documented code, no stack trace. */
function checkErrorBody ({ res, status, contentType, parsed, isJson }: ReadAnswer, fail: Fail): void {
  if (status < 400) return
  if (!isJson) {
    fail('error body', `a ${status} answer that is not JSON (${contentType}): ${res.body.slice(0, 120)}`)
    return
  }
  const error = parsed as Record<string, unknown>
  const keys = typeof error === 'object' && error !== null ? Object.keys(error).sort() : []
  if (keys.join(',') !== 'error,error_description' || typeof error.error !== 'string' || typeof error.error_description !== 'string') {
    fail('error body', `a ${status} body other than { error, error_description } strings: ${res.body.slice(0, 200)}`)
  } else if (!(ERROR_CODES[status] ?? []).includes(error.error)) {
    fail('error body', `error code "${error.error}" is not documented for ${status}`)
  }
  if (STACK_TRACE.test(res.body)) fail('error body', `the error body carries a stack trace or a path: ${res.body.slice(0, 200)}`)
}

/** The body against the route's documented schema for its status. */
function checkDocumentedBody ({ res, status, contentType, parsed, isJson }: ReadAnswer, validators: Map<number, ValidateFunction | undefined>, fail: Fail): void {
  if (!validators.has(status)) return
  const validate = validators.get(status)
  if (validate === undefined) {
    // Documented without a body (revoke's 200: "an empty body").
    if (res.body !== '') fail('response schema', `status ${status} is documented without a body, got ${res.body.slice(0, 120)}`)
  } else if (isJson && !validate(parsed)) {
    fail('response schema', `the ${status} body does not match its schema: ${JSON.stringify(validate.errors?.slice(0, 3))} in ${res.body.slice(0, 200)}`)
  } else if (!isJson) {
    fail('response schema', `status ${status} is documented as JSON, got ${contentType}`)
  }
}

// The README's word for the routes without a response schema. Discovery:
// "Endpoint URLs", which must parse as http(s) URLs.
function checkReadmeBody ({ built, res, status, contentType, parsed, isJson }: ReadAnswer, secrets: string[], fail: Fail): void {
  if (status === 200 && isJson && (built.route === '/.well-known/openid-configuration' || built.route === '/.well-known/oauth-authorization-server')) {
    const document = parsed as Record<string, unknown>
    for (const name of ['token_endpoint', 'jwks_uri', 'revocation_endpoint', 'introspection_endpoint']) {
      const url = document[name]
      let ok = false
      try {
        ok = typeof url === 'string' && ['http:', 'https:'].includes(new URL(url).protocol)
      } catch {}
      if (!ok) fail('endpoint URLs', `${name} is not an http(s) URL: ${JSON.stringify(url)}`)
    }
  }
  if (status === 200 && built.route === '/metrics' && (!contentType.startsWith('text/plain') || !res.body.includes('# TYPE session_service_'))) fail('response schema', `/metrics is not Prometheus text (${contentType})`)
  if (status === 200 && built.route === '/docs/json' && (!isJson || typeof (parsed as { openapi?: unknown }).openapi !== 'string')) fail('response schema', '/docs/json is not an OpenAPI document')
  if (status === 200 && built.route === '/docs/yaml' && !/^openapi: 3\./m.test(res.body)) fail('response schema', '/docs/yaml is not an OpenAPI document')
  if (status === 200 && (built.route === '/docs' || built.route === '/docs/') && !contentType.startsWith('text/html')) fail('response schema', `${built.route} is not the Swagger UI page (${contentType})`)
  if (built.route !== undefined && NON_ECHOING.has(built.route)) {
    const shown = secrets.find((secret) => res.body.includes(secret))
    if (shown !== undefined) fail('response schema', `${built.route} shows a secret, token or client id: ${shown.slice(0, 20)}…`)
  }
  if (built.route === '/oauth/verify' && status === 200 && isJson) {
    const answer = parsed as { valid?: unknown, error?: unknown }
    if (answer.valid === false && !VERIFY_REASONS.includes(String(answer.error))) fail('response schema', `verify reason "${String(answer.error)}" is not one the README lists`)
  }
}

/** Headers the README promises. */
function checkHeaders (built: Built, res: LightMyRequestResponse, fail: Fail): void {
  const status = res.statusCode
  const spec = built.route === undefined ? undefined : ROUTES[built.route]
  if (spec?.clientAuthenticated === true) {
    if (res.headers['cache-control'] !== 'no-store' || res.headers.pragma !== 'no-cache') fail('headers', `Cache-Control "${String(res.headers['cache-control'])}", Pragma "${String(res.headers.pragma)}"; no-store and no-cache expected on every answer`)
    if (status === 401 && res.headers['www-authenticate'] !== REALM) fail('headers', `401 with WWW-Authenticate "${String(res.headers['www-authenticate'])}"`)
    if (built.route === '/oauth/token' && status === 200 && (res.headers['x-ratelimit-limit'] === undefined || res.headers['x-ratelimit-remaining'] === undefined || res.headers['x-ratelimit-reset'] === undefined)) fail('headers', 'a token answer without the X-RateLimit-* headers')
  }
  if (status === 429 && res.headers['retry-after'] === undefined) fail('headers', '429 without Retry-After')
  if (status >= 300 && status < 400 && typeof res.headers.location !== 'string') fail('headers', `${status} without a Location`)
}

export function checkAnswer (built: Built, res: LightMyRequestResponse | 'timeout', ms: number, documented: Map<string, Documented>, secrets: string[]): Violation[] {
  const violations: Violation[] = []
  const fail: Fail = (check, message) => { violations.push({ check, message }) }
  if (res === 'timeout') {
    fail('bounded time', `no answer within ${BOUND_MS} ms`)
    return violations
  }
  const status = res.statusCode
  if (ms > BOUND_MS) fail('bounded time', `answered after ${ms} ms`)
  if (status >= 500) fail('no 5xx', `status ${status}: ${res.body.slice(0, 300)}`)
  const { allowed, validators } = allowedStatuses(built, documented)
  checkStatus(built, status, allowed, res.body, fail)
  if (built.options.method === 'HEAD') {
    if (res.body !== '') fail('HEAD body', `a HEAD answer with a body of ${res.body.length} characters`)
    return violations
  }
  const answer = readAnswer(built, res, fail)
  checkErrorBody(answer, fail)
  checkDocumentedBody(answer, validators, fail)
  checkReadmeBody(answer, secrets, fail)
  checkHeaders(built, res, fail)
  return violations
}

// ---------------------------------------------------------------------------
// Response schemas: the OpenAPI document's, resolved against its components;
// the README's for the routes the document leaves without a schema.

export interface Operation { responses: Record<string, { content?: Record<string, { schema?: unknown }> }> }
export interface OpenApiDocument {
  paths: Record<string, Record<string, Operation>>
  components: { schemas: Record<string, unknown> }
}

export function dereference (schema: unknown, components: Record<string, unknown>): unknown {
  if (Array.isArray(schema)) return schema.map((item) => dereference(item, components))
  if (typeof schema !== 'object' || schema === null) return schema
  const ref = (schema as { $ref?: unknown }).$ref
  if (typeof ref === 'string' && ref.startsWith('#/components/schemas/')) {
    return dereference(components[ref.slice('#/components/schemas/'.length)], components)
  }
  return Object.fromEntries(Object.entries(schema).map(([key, item]) => [key, dereference(item, components)]))
}

export function documentedResponses (doc: OpenApiDocument, ajv: Ajv): Map<string, Documented> {
  const documented = new Map<string, Documented>()
  for (const [path, operations] of Object.entries(doc.paths)) {
    for (const [method, operation] of Object.entries(operations)) {
      const statuses = new Map<number, ValidateFunction | undefined>()
      for (const [status, response] of Object.entries(operation.responses)) {
        const schema = response.content?.['application/json']?.schema
        statuses.set(Number(status), schema === undefined ? undefined : ajv.compile(dereference(schema, doc.components.schemas) as object))
      }
      documented.set(`${path} ${method.toUpperCase()}`, { statuses })
    }
  }
  return documented
}

export const stringArray = { type: 'array', items: { type: 'string' } } as const
export const endpointUrl = { type: 'string' } as const
/** README, Discovery (RFC 8414 and OpenID Connect Discovery fields); the route declares no schema. The URLs are checked apart. */
export const discoverySchema = {
  type: 'object',
  required: ['issuer', 'token_endpoint', 'jwks_uri', 'revocation_endpoint', 'introspection_endpoint', 'grant_types_supported',
    'token_endpoint_auth_methods_supported', 'access_token_signing_alg_values_supported', 'response_types_supported',
    'subject_types_supported', 'id_token_signing_alg_values_supported'],
  properties: {
    issuer: { const: ISSUER },
    token_endpoint: endpointUrl,
    jwks_uri: endpointUrl,
    revocation_endpoint: endpointUrl,
    introspection_endpoint: endpointUrl,
    grant_types_supported: { const: ['client_credentials', 'refresh_token', 'urn:ietf:params:oauth:grant-type:token-exchange'] },
    token_endpoint_auth_methods_supported: stringArray,
    token_endpoint_auth_signing_alg_values_supported: stringArray,
    revocation_endpoint_auth_methods_supported: stringArray,
    introspection_endpoint_auth_methods_supported: stringArray,
    scopes_supported: stringArray,
    access_token_signing_alg_values_supported: stringArray,
    response_types_supported: { type: 'array', maxItems: 0 },
    subject_types_supported: stringArray,
    id_token_signing_alg_values_supported: stringArray
  }
} as const
/** schemas/oauth.ts `jwks` (the route does not declare it), with the README's members of each key. */
export const publishedJwksSchema = {
  ...jwksSchema,
  properties: { keys: { ...jwksSchema.properties.keys, minItems: 1, items: { ...jwksSchema.properties.keys.items, required: ['kty', 'kid', 'use', 'alg'] } } }
}
