// What the API documentation adds to the route schemas: parameter
// descriptions, enumerations, examples and what each error status means.
// Only the documented copy (plugins/openapi.ts) carries it: an enum in the
// validating schema would turn an unknown grant_type into a schema error
// instead of RFC 6749's unsupported_grant_type.
import { JWT_BEARER_ASSERTION } from '../client-auth/private-key-jwt.ts'
import { GRANT_TYPES } from '../grants/index.ts'
import { JWT_TOKEN_TYPE_ID, TOKEN_EXCHANGE } from '../grants/token-exchange.ts'
import { ACCESS_TOKEN_TYPE_ID } from '../tokens/issuance.ts'
import { EXAMPLE_TOKENS } from './oauth.ts'

type JsonSchema = Record<string, unknown>

/** The form parameters, as documented. Each example is empty: see `documentedFormBody`. */
const FORM_PARAMETERS: Record<string, JsonSchema> = {
  grant_type: {
    enum: [...GRANT_TYPES],
    description: 'client_credentials starts a session (RFC 6749 §4.4); refresh_token continues it (RFC 6749 §6); ' +
      'urn:ietf:params:oauth:grant-type:token-exchange exchanges an access token of this service for a narrower one (RFC 8693)'
  },
  refresh_token: { description: 'With grant_type=refresh_token: the refresh token of the previous answer (single use)' },
  scope: { description: 'Space-delimited scopes, a subset of those the client is allowed (RFC 6749 §3.3), e.g. `orders:read orders:write`; empty: the client\'s default scopes' },
  audience: { description: 'The API the token is for, one of the client\'s audiences; empty: the default audience' },
  resource: { description: 'RFC 8707 resource indicator: the same as audience' },
  subject_token: { description: 'Token exchange: an access token of this service, issued to this client or to one its may_exchange lists (RFC 8693 §2.1)' },
  subject_token_type: { enum: [ACCESS_TOKEN_TYPE_ID, JWT_TOKEN_TYPE_ID], description: 'Token exchange: the type of subject_token (RFC 8693 §3)' },
  actor_token: { description: 'Token exchange, optional: an access token of this service naming who acts for the subject; it ends up in the act claim (RFC 8693 §4.1)' },
  actor_token_type: { enum: [ACCESS_TOKEN_TYPE_ID, JWT_TOKEN_TYPE_ID], description: 'Token exchange: the type of actor_token; given with actor_token and only then' },
  requested_token_type: { enum: [ACCESS_TOKEN_TYPE_ID], description: 'Token exchange, optional: the only type issued, an access token' },
  client_id: { description: 'client_secret_post or private_key_jwt only: the client id. Leave empty when authorized with HTTP Basic' },
  client_secret: { description: 'client_secret_post only: the client secret. Leave empty when authorized with HTTP Basic' },
  client_assertion_type: { enum: [JWT_BEARER_ASSERTION], description: `private_key_jwt only (RFC 7523 §2.2): ${JWT_BEARER_ASSERTION}` },
  client_assertion: { description: 'private_key_jwt only (RFC 7523 §3): a JWT signed with one of the client\'s keys, aud the token endpoint' },
  token: { description: 'The access token or refresh token' },
  token_type_hint: { enum: ['access_token', 'refresh_token'], description: 'What the token is (RFC 7009 §2.1); optional, the token\'s shape tells anyway' }
}

/**
 * The form body as documented. Swagger UI fills each form field with the
 * parameter's example, or "string" when there is none, and sends them all:
 * an empty example leaves a field empty, and an empty parameter counts as
 * omitted (RFC 6749 §3.1), so "Try it out" sends only what the user types.
 */
export function documentedFormBody (body: JsonSchema, examples: Record<string, unknown>): JsonSchema {
  const required = new Set(body.required as string[] | undefined)
  const properties: Record<string, JsonSchema> = {}
  for (const [name, parameter] of Object.entries(body.properties as Record<string, JsonSchema>)) {
    const documented = { ...parameter, ...FORM_PARAMETERS[name] }
    if (!required.has(name)) documented.example = ''
    properties[name] = documented
  }
  return { ...body, properties, 'x-examples': examples }
}

const { accessToken: ACCESS_TOKEN, refreshToken: REFRESH_TOKEN } = EXAMPLE_TOKENS

/** Named examples of each form body (OpenAPI media type `examples`). */
export const FORM_EXAMPLES: Record<string, Record<string, unknown>> = {
  '/oauth/token': {
    clientCredentials: {
      summary: 'client_credentials, client authenticated with HTTP Basic',
      value: { grant_type: 'client_credentials', scope: 'orders:read' }
    },
    clientSecretPost: {
      summary: 'client_credentials, credentials in the form (client_secret_post)',
      value: { grant_type: 'client_credentials', client_id: 'billing-service', client_secret: 'kS9vQ2-x7LmR4tWz1bY8nE3cF6hJ0pUa' }
    },
    refreshToken: {
      summary: 'refresh_token, client authenticated with HTTP Basic',
      value: { grant_type: 'refresh_token', refresh_token: REFRESH_TOKEN }
    },
    tokenExchange: {
      summary: 'token exchange (RFC 8693): a narrower token for the subject of an access token',
      value: { grant_type: TOKEN_EXCHANGE, subject_token: ACCESS_TOKEN, subject_token_type: ACCESS_TOKEN_TYPE_ID, scope: 'orders:read', audience: 'https://api.example.com' }
    },
    privateKeyJwt: {
      summary: 'client_credentials with a signed client assertion (private_key_jwt)',
      value: { grant_type: 'client_credentials', client_assertion_type: JWT_BEARER_ASSERTION, client_assertion: 'eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0...' }
    }
  },
  '/oauth/revoke': {
    refreshToken: { summary: 'Revoke a refresh token, ending its session', value: { token: REFRESH_TOKEN, token_type_hint: 'refresh_token' } },
    accessToken: { summary: 'Revoke an access token', value: { token: ACCESS_TOKEN } }
  },
  '/oauth/introspect': {
    accessToken: { summary: 'Introspect an access token', value: { token: ACCESS_TOKEN, token_type_hint: 'access_token' } }
  }
}

interface ErrorStatus {
  description: string
  example: { error: string, error_description: string }
}

/** What each error status means at the OAuth endpoints (RFC 6749 §5.2 bodies). */
const OAUTH_ERRORS: Record<string, ErrorStatus> = {
  400: {
    description: 'Refused request (RFC 6749 §5.2): invalid_request, invalid_grant, invalid_scope, invalid_target, unauthorized_client or unsupported_grant_type; ' +
      'a subject or actor token that is not valid is invalid_request (RFC 8693 §2.2.2)',
    example: { error: 'unsupported_grant_type', error_description: 'grant_type password is not supported; use client_credentials or refresh_token or urn:ietf:params:oauth:grant-type:token-exchange' }
  },
  401: {
    description: 'invalid_client: client authentication failed (RFC 6749 §5.2); with HTTP Basic, a WWW-Authenticate challenge',
    example: { error: 'invalid_client', error_description: 'client authentication failed' }
  },
  429: {
    description: 'rate_limit_exceeded: the client\'s token rate limit, or too many failed authentications from one address; Retry-After says when to retry (RFC 6585 §4)',
    example: { error: 'rate_limit_exceeded', error_description: 'more than 60 token requests per minute; retry in 42 s' }
  }
}

/** What each error status means at the admin API (bearer token, RFC 6750 §3.1). */
const ADMIN_ERRORS: Record<string, ErrorStatus> = {
  400: {
    description: 'invalid_request: a field is missing, unknown or breaks a rule',
    example: { error: 'invalid_request', error_description: 'grace may be at most 30 days' }
  },
  401: {
    description: 'invalid_token or invalid_request: the bearer token is missing or not valid (RFC 6750 §3.1), with a WWW-Authenticate challenge',
    example: { error: 'invalid_token', error_description: 'the access token is not valid' }
  },
  403: {
    description: 'insufficient_scope: the token does not carry ADMIN_SCOPE (RFC 6750 §3.1)',
    example: { error: 'insufficient_scope', error_description: 'the access token does not carry the scope session-service:admin' }
  },
  404: { description: 'not_found: no client with this id', example: { error: 'not_found', error_description: 'no client with this id' } },
  409: { description: 'conflict: a client with this id already exists', example: { error: 'conflict', error_description: 'a client with this id already exists' } }
}

/** Statuses that mean the same everywhere. */
const COMMON_ERRORS: Record<string, ErrorStatus> = {
  400: {
    description: 'invalid_request: a parameter is missing, repeated, too long or malformed (RFC 6749 §5.2)',
    example: { error: 'invalid_request', error_description: 'the request body must be application/json' }
  },
  413: {
    description: 'invalid_request: the body is larger than BODY_LIMIT (RFC 9110 §15.5.14)',
    example: { error: 'invalid_request', error_description: 'request body is too large' }
  },
  500: {
    description: 'server_error: an unexpected failure; the details are in the log only',
    example: { error: 'server_error', error_description: 'internal error' }
  },
  503: {
    description: 'temporarily_unavailable: PostgreSQL or Redis does not answer; Retry-After says when to retry (RFC 9110 §15.6.4)',
    example: { error: 'temporarily_unavailable', error_description: 'postgresql is unavailable; retry later' }
  }
}

/** The error statuses of an operation: those of its own kind (client-authenticating, admin), else the common ones. */
export function errorStatus (status: string, kind: 'oauth' | 'admin' | 'other'): ErrorStatus | undefined {
  const own = kind === 'oauth' ? OAUTH_ERRORS : kind === 'admin' ? ADMIN_ERRORS : {}
  return own[status] ?? COMMON_ERRORS[status]
}
