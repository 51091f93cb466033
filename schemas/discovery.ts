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
  id_token_signing_alg_values_supported: strings
})
