// JSON Schemas shared by the routes. Request schemas bound every parameter's
// length; response schemas make Fastify serialize only the listed fields.

/** RFC 6749 §5.2 error body, used by every endpoint for every 4xx and 5xx. */
export const oauthError = {
  $id: 'oauthError',
  type: 'object',
  required: ['error', 'error_description'],
  properties: {
    error: { type: 'string' },
    error_description: { type: 'string' }
  }
} as const

const parameter = (maxLength: number) => ({ type: 'string', maxLength } as const)

/** Client authentication parameters (RFC 6749 §2.3.1, RFC 7523 §2.2). */
const credentialParameters = {
  client_id: parameter(255),
  client_secret: parameter(1024),
  client_assertion_type: parameter(100),
  client_assertion: parameter(8192)
} as const

/** POST /oauth/token form body. Unknown parameters are ignored (RFC 6749 §3.2). */
export const tokenRequest = {
  type: 'object',
  required: ['grant_type'],
  properties: {
    grant_type: parameter(100),
    refresh_token: parameter(1024),
    scope: parameter(2048),
    // RFC 8707 resource indicator, or the audience parameter many clients send.
    audience: parameter(2048),
    resource: parameter(2048),
    ...credentialParameters
  }
} as const

export const tokenResponse = {
  type: 'object',
  required: ['access_token', 'token_type', 'expires_in', 'refresh_token'],
  properties: {
    access_token: { type: 'string' },
    token_type: { type: 'string' },
    expires_in: { type: 'integer' },
    refresh_token: { type: 'string' },
    scope: { type: 'string' }
  }
} as const

/** POST /oauth/revoke (RFC 7009 §2.1) and /oauth/introspect (RFC 7662 §2.1) form body. */
export const tokenParameterRequest = {
  type: 'object',
  required: ['token'],
  properties: {
    // Longer than any token looked at (8192), so that an over-long token is
    // simply not active (RFC 7662 §2.2) or ignored (RFC 7009 §2.2); a body
    // over BODY_LIMIT is 413 before this is checked.
    token: parameter(16384),
    token_type_hint: parameter(100),
    ...credentialParameters
  }
} as const

export interface TokenParameterBody {
  token: string
  token_type_hint?: string
  client_id?: string
  client_secret?: string
  client_assertion_type?: string
  client_assertion?: string
}

/** POST /oauth/verify JSON body. */
export const verifyRequest = {
  type: 'object',
  required: ['token'],
  properties: {
    token: { type: 'string' },
    // The audience the caller expects (its own identifier); default JWT_AUDIENCE.
    audience: { type: 'string', minLength: 1, maxLength: 2048 }
  }
} as const

export const verifyResponse = {
  type: 'object',
  required: ['valid'],
  properties: {
    valid: { type: 'boolean' },
    error: { type: 'string' },
    claims: { type: 'object', additionalProperties: true }
  }
} as const

export const jwks = {
  type: 'object',
  required: ['keys'],
  properties: {
    keys: {
      type: 'array',
      items: { type: 'object', additionalProperties: { type: 'string' } }
    }
  }
} as const

/** Error responses every endpoint may give, by status. */
export const errorResponses = {
  400: { $ref: 'oauthError#' },
  413: { $ref: 'oauthError#' },
  500: { $ref: 'oauthError#' },
  503: { $ref: 'oauthError#' }
} as const

/** RFC 7662 §2.2. Only `active` when the token is not active for the caller. */
export const introspectionResponse = {
  type: 'object',
  required: ['active'],
  properties: {
    active: { type: 'boolean' },
    token_type: { type: 'string' },
    client_id: { type: 'string' },
    sub: { type: 'string' },
    iss: { type: 'string' },
    aud: { anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' } }] },
    exp: { type: 'integer' },
    iat: { type: 'integer' },
    jti: { type: 'string' },
    sid: { type: 'string' },
    scope: { type: 'string' }
  }
} as const
