import { Type } from 'typebox'

const strings = Type.Array(Type.String())

/**
 * GET /.well-known/openid-configuration and /.well-known/oauth-authorization-server:
 * RFC 8414 §2 authorization server metadata, with the members OpenID Connect
 * Discovery 1.0 §3 requires.
 */
export const discoveryDocument = Type.Object({
  issuer: Type.String(),
  token_endpoint: Type.String(),
  jwks_uri: Type.String(),
  revocation_endpoint: Type.String(),
  introspection_endpoint: Type.String(),
  grant_types_supported: strings,
  token_endpoint_auth_methods_supported: strings,
  token_endpoint_auth_signing_alg_values_supported: strings,
  revocation_endpoint_auth_methods_supported: strings,
  revocation_endpoint_auth_signing_alg_values_supported: strings,
  introspection_endpoint_auth_methods_supported: strings,
  introspection_endpoint_auth_signing_alg_values_supported: strings,
  scopes_supported: Type.Optional(strings),
  access_token_signing_alg_values_supported: strings,
  response_types_supported: strings,
  subject_types_supported: strings,
  id_token_signing_alg_values_supported: strings,
  dpop_signing_alg_values_supported: strings
}, {
  description: 'The metadata; cacheable (Cache-Control: public, max-age=JWKS_MAX_AGE)',
  examples: [{
    issuer: 'https://auth.example.com',
    token_endpoint: 'https://auth.example.com/oauth/token',
    jwks_uri: 'https://auth.example.com/.well-known/jwks.json',
    revocation_endpoint: 'https://auth.example.com/oauth/revoke',
    introspection_endpoint: 'https://auth.example.com/oauth/introspect',
    grant_types_supported: ['client_credentials', 'refresh_token'],
    token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
    token_endpoint_auth_signing_alg_values_supported: ['RS256', 'ES256'],
    revocation_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
    revocation_endpoint_auth_signing_alg_values_supported: ['RS256', 'ES256'],
    introspection_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
    introspection_endpoint_auth_signing_alg_values_supported: ['RS256', 'ES256'],
    access_token_signing_alg_values_supported: ['RS256'],
    response_types_supported: [],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: ['RS256'],
    dpop_signing_alg_values_supported: ['ES256', 'EdDSA', 'RS256']
  }]
})
