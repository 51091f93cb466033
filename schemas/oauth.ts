// JSON Schemas shared by the routes, written with TypeBox so that the body
// and response types are derived from them. Request schemas bound every
// parameter's length; response schemas make Fastify serialize only the
// listed fields.
import { Type, type Static } from 'typebox'

/** RFC 6749 §5.2 error body, used by every endpoint for every 4xx and 5xx. */
export const oauthError = Type.Object({
  error: Type.String(),
  error_description: Type.String()
}, { $id: 'oauthError' })

/** The shared error body, by reference to its $id (registered once, in plugins/errors.ts). */
export const oauthErrorRef = Type.Unsafe<Static<typeof oauthError>>({ $ref: 'oauthError#' })

/** Tokens as they look, for the examples of the API documentation. */
export const EXAMPLE_TOKENS = {
  accessToken: 'eyJhbGciOiJSUzI1NiIsInR5cCI6ImF0K2p3dCIsImtpZCI6Ik5qVmZ...',
  refreshToken: 'Xq3v8bV0m4kQpZt2Yc6hL1sD9wE5rT7uI0oP3aS6dF8'
}

/** The claims of an access token (RFC 9068 §2.2), for the examples. */
const EXAMPLE_CLAIMS = {
  iss: 'https://auth.example.com',
  aud: 'https://api.example.com',
  sub: 'billing-service',
  client_id: 'billing-service',
  scope: 'orders:read',
  exp: 1767226500,
  iat: 1767225600,
  jti: '9f1c2d3e-4b5a-4c6d-8e7f-0a1b2c3d4e5f',
  sid: 's_4b5a4c6d'
}

const parameter = (maxLength: number) => Type.Optional(Type.String({ maxLength }))

/** Client authentication parameters (RFC 6749 §2.3.1, RFC 7523 §2.2). */
const credentialParameters = {
  client_id: parameter(255),
  client_secret: parameter(1024),
  client_assertion_type: parameter(100),
  client_assertion: parameter(8192)
}

/** The client credential parameters alone, as an object schema. */
export const credentialParametersSchema = Type.Object(credentialParameters)

/** The form parameters that carry client credentials (client-auth/ reads them). */
export type CredentialParameters = Static<typeof credentialParametersSchema>

/** POST /oauth/token form body. Unknown parameters are ignored (RFC 6749 §3.2). */
export const tokenRequest = Type.Object({
  grant_type: Type.String({ maxLength: 100 }),
  refresh_token: parameter(1024),
  scope: parameter(2048),
  // RFC 8707 resource indicator, or the audience parameter many clients send.
  audience: parameter(2048),
  resource: parameter(2048),
  // RFC 8693 §2.1 token exchange; tokens as long as any the service looks at.
  subject_token: parameter(8192),
  subject_token_type: parameter(100),
  actor_token: parameter(8192),
  actor_token_type: parameter(100),
  requested_token_type: parameter(100),
  ...credentialParameters
})

export type TokenRequestBody = Static<typeof tokenRequest>

/** Longest DPoP proof looked at (dpop/proof.ts MAX_PROOF_LENGTH): one with a 4096-bit RSA key is about 2.5 KB. */
export const MAX_DPOP_PROOF_LENGTH = 8192

/** POST /oauth/token headers besides the credentials: a DPoP proof (RFC 9449 §4.1), once. */
export const tokenRequestHeaders = Type.Object({
  dpop: Type.Optional(Type.String({ maxLength: MAX_DPOP_PROOF_LENGTH, description: 'A DPoP proof JWT (RFC 9449 §4.2): the tokens are then bound to its key' }))
})

export const tokenResponse = Type.Object({
  access_token: Type.String(),
  token_type: Type.String(),
  expires_in: Type.Integer(),
  refresh_token: Type.Optional(Type.String()),
  scope: Type.Optional(Type.String()),
  /** token exchange only (RFC 8693 §2.2.1) */
  issued_token_type: Type.Optional(Type.String())
}, {
  description: 'Issued (RFC 6749 §5.1): a JWT access token (RFC 9068) and a single-use refresh token; ' +
    'for a token exchange (RFC 8693 §2.2.1), the access token and its issued_token_type, without a refresh token. Not to be cached',
  // Documented response headers (the API document only; the serializer reads none).
  headers: {
    'Cache-Control': { type: 'string', description: 'no-store (RFC 6749 §5.1)' },
    'DPoP-Nonce': { type: 'string', description: 'With DPOP_NONCE_REQUIRED=true, after a request with a DPoP proof: the server nonce for the next proof (RFC 9449 §8)' }
  },
  examples: [
    { access_token: EXAMPLE_TOKENS.accessToken, token_type: 'Bearer', expires_in: 900, refresh_token: EXAMPLE_TOKENS.refreshToken, scope: 'orders:read' },
    { access_token: EXAMPLE_TOKENS.accessToken, issued_token_type: 'urn:ietf:params:oauth:token-type:access_token', token_type: 'Bearer', expires_in: 600 }
  ]
})

/** POST /oauth/revoke (RFC 7009 §2.1) and /oauth/introspect (RFC 7662 §2.1) form body. */
export const tokenParameterRequest = Type.Object({
  // Longer than any token looked at (8192), so that an over-long token is
  // simply not active (RFC 7662 §2.2) or ignored (RFC 7009 §2.2); a body
  // over BODY_LIMIT is 413 before this is checked.
  token: Type.String({ maxLength: 16384 }),
  token_type_hint: parameter(100),
  ...credentialParameters
})

export type TokenParameterBody = Static<typeof tokenParameterRequest>

/** POST /oauth/verify JSON body. */
export const verifyRequest = Type.Object({
  token: Type.String(),
  // The audience the caller expects (its own identifier); default JWT_AUDIENCE.
  audience: Type.Optional(Type.String({ minLength: 1, maxLength: 2048 })),
  // RFC 9449 §7: the DPoP proof the resource server received with the token,
  // and the method and absolute URL of that request; all three or none.
  dpop: Type.Optional(Type.String({ minLength: 1, maxLength: MAX_DPOP_PROOF_LENGTH })),
  method: Type.Optional(Type.String({ pattern: '^[A-Z]{1,16}$' })),
  url: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 }))
}, { examples: [{ token: EXAMPLE_TOKENS.accessToken, audience: 'https://api.example.com' }] })

export const verifyResponse = Type.Object({
  valid: Type.Boolean(),
  error: Type.Optional(Type.String()),
  claims: Type.Optional(Type.Object({}, { additionalProperties: true }))
}, {
  description: 'The verdict: `valid` with the token\'s claims, or not valid with the reason',
  examples: [{
    valid: true,
    claims: EXAMPLE_CLAIMS
  }, { valid: false, error: 'token expired' }]
})

/** GET /.well-known/jwks.json (RFC 7517 §5): every member of each key is a string. */
export const jwks = Type.Object({
  keys: Type.Array(Type.Object({}, { additionalProperties: Type.String() }))
}, {
  description: 'The JWK Set; cacheable (Cache-Control: public, max-age=JWKS_MAX_AGE)',
  examples: [{ keys: [{ kty: 'RSA', kid: 'NjVmZTI0Y2QtYzE3Ny00YjQ1LWE5YjEtZTFkNGNhZDU', use: 'sig', alg: 'RS256', n: '0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAt...', e: 'AQAB' }] }]
})

/** An answer without a body (RFC 7009 §2.2: revocation answers 200 and nothing else). */
export const emptyResponse = Type.Unsafe<undefined>({ type: 'null', description: 'Revoked, or nothing to revoke: the answer is the same (RFC 7009 §2.2)' })

/** Error responses every endpoint may give, by status. */
export const errorResponses = {
  400: oauthErrorRef,
  413: oauthErrorRef,
  500: oauthErrorRef,
  503: oauthErrorRef
}

/** Error responses of the endpoints that authenticate a client: those of every endpoint, 401 and 429. */
export const clientErrorResponses = {
  401: oauthErrorRef,
  429: oauthErrorRef,
  ...errorResponses
}

/** RFC 7662 §2.2. Only `active` when the token is not active for the caller. */
export const introspectionResponse = Type.Object({
  active: Type.Boolean(),
  token_type: Type.Optional(Type.String()),
  client_id: Type.Optional(Type.String()),
  sub: Type.Optional(Type.String()),
  iss: Type.Optional(Type.String()),
  aud: Type.Optional(Type.Union([Type.String(), Type.Array(Type.String())])),
  exp: Type.Optional(Type.Integer()),
  iat: Type.Optional(Type.Integer()),
  jti: Type.Optional(Type.String()),
  sid: Type.Optional(Type.String()),
  scope: Type.Optional(Type.String()),
  /** RFC 8693 §4.1: who acts for the subject, in a token issued by a token exchange */
  act: Type.Optional(Type.Object({}, { additionalProperties: true })),
  // RFC 9449 §6.2: the key a DPoP-bound token is bound to.
  cnf: Type.Optional(Type.Object({ jkt: Type.String() }))
}, {
  description: 'RFC 7662 §2.2: the token\'s claims when it is active and the caller\'s, else only `active: false`',
  examples: [{ active: true, token_type: 'Bearer', ...EXAMPLE_CLAIMS }, { active: false }]
})
