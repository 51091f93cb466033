import type { FastifyPluginAsync } from 'fastify'
import { AUTH_METHODS_SUPPORTED } from '../../../client-auth/index.ts'
import { GRANT_TYPES } from '../../../grants/index.ts'
import { ASSERTION_ALGORITHMS } from '../../../plugins/client-assertions.ts'
import { DPOP_ALGORITHMS } from '../../../plugins/dpop.ts'
import { discoveryDocument } from '../../../schemas/discovery.ts'
import { errorResponses } from '../../../schemas/oauth.ts'

// One document answers both RFC 8414 and OpenID Connect Discovery 1.0: a
// gateway reads the OpenID path, OAuth client libraries either one.
const DISCOVERY_OPERATIONS = [{
  url: '/.well-known/openid-configuration',
  operationId: 'getOpenIdConfiguration',
  summary: 'Server metadata, at the OpenID Connect path that gateways read',
  description: 'The provider metadata of OpenID Connect Discovery 1.0 §4 (members of §3), the same document as ' +
    '/.well-known/oauth-authorization-server (RFC 8414 §2). A gateway (API Gateway\'s JWT authorizer) finds `jwks_uri` here. ' +
    'Published URLs come from PUBLIC_URL and JWT_ISSUER, never from request headers; cacheable for JWKS_MAX_AGE.'
}, {
  url: '/.well-known/oauth-authorization-server',
  operationId: 'getAuthorizationServerMetadata',
  summary: 'Server metadata, at the OAuth path',
  description: 'Authorization server metadata of RFC 8414 §3 (members of §2): the endpoints, grant types, client authentication ' +
    'methods and algorithms. The same document as /.well-known/openid-configuration; cacheable for JWKS_MAX_AGE.'
}]

const discoveryRoute: FastifyPluginAsync = async (fastify) => {
  const { config, keys } = fastify

  const authMethods = [...AUTH_METHODS_SUPPORTED]
  const assertionAlgorithms = [...ASSERTION_ALGORITHMS]

  // Serialized once, from configuration only: the document is publicly
  // cacheable, so no request header (Host, X-Forwarded-*) may change what it
  // publishes.
  const base = config.publicUrl
  const documentFor = (): string => JSON.stringify({
    issuer: config.issuer,
    token_endpoint: `${base}/oauth/token`,
    jwks_uri: `${base}/.well-known/jwks.json`,
    revocation_endpoint: `${base}/oauth/revoke`,
    introspection_endpoint: `${base}/oauth/introspect`,
    grant_types_supported: GRANT_TYPES,
    token_endpoint_auth_methods_supported: authMethods,
    token_endpoint_auth_signing_alg_values_supported: assertionAlgorithms,
    revocation_endpoint_auth_methods_supported: authMethods,
    revocation_endpoint_auth_signing_alg_values_supported: assertionAlgorithms,
    introspection_endpoint_auth_methods_supported: authMethods,
    introspection_endpoint_auth_signing_alg_values_supported: assertionAlgorithms,
    ...(config.scopesSupported.length > 0 ? { scopes_supported: config.scopesSupported } : {}),
    // RFC 9068 access tokens, signed with the active key's algorithm (the
    // published additional keys may use others while a rotation is underway).
    access_token_signing_alg_values_supported: keys.algorithms,
    // OpenID Connect Discovery requires these three; this service issues no
    // ID tokens and has no authorization endpoint, so no response types.
    response_types_supported: [],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: [keys.algorithm],
    // RFC 9449 §5.1: the algorithms a DPoP proof may be signed with.
    dpop_signing_alg_values_supported: DPOP_ALGORITHMS
  })
  // Serialized again only when the published keys change (stored keys
  // rotate): their algorithms are the one part that may.
  let shown = { algorithms: keys.algorithms, document: documentFor() }
  const currentDocument = (): string => {
    if (shown.algorithms !== keys.algorithms) shown = { algorithms: keys.algorithms, document: documentFor() }
    return shown.document
  }

  for (const { url, ...docs } of DISCOVERY_OPERATIONS) {
    // The schema documents the answer; a string with a JSON content type is
    // sent as it is, not serialized again.
    fastify.get(url, { schema: { ...docs, response: { 200: discoveryDocument, ...errorResponses } } }, async (_request, reply) => {
      return reply
        .header('cache-control', `public, max-age=${config.jwksMaxAge}`)
        .type('application/json; charset=utf-8')
        .send(currentDocument())
    })
  }
}

export default discoveryRoute
