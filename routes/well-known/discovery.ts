import type { FastifyPluginAsync, FastifyRequest } from 'fastify'
import { ASSERTION_ALGORITHMS } from '../../plugins/client-assertions.js'
import { invalidRequest } from '../../plugins/errors.js'

// A host name or IPv4 address, or a bracketed IPv6 address, with an optional
// port: anything else in Host would turn the advertised endpoints into
// something other than URLs.
const HOST_HEADER = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/

// One document answers both RFC 8414 and OpenID Connect Discovery 1.0: a
// gateway reads the OpenID path, OAuth client libraries either one.
const discoveryRoute: FastifyPluginAsync = async (fastify) => {
  const { config, keys } = fastify

  const authMethods = ['client_secret_basic', 'client_secret_post', 'private_key_jwt']
  const assertionAlgorithms = [...ASSERTION_ALGORITHMS]

  function describe (base: string): string {
    return JSON.stringify({
      issuer: config.issuer,
      token_endpoint: `${base}/oauth/token`,
      jwks_uri: `${base}/.well-known/jwks.json`,
      revocation_endpoint: `${base}/oauth/revoke`,
      introspection_endpoint: `${base}/oauth/introspect`,
      grant_types_supported: ['client_credentials', 'refresh_token'],
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
      id_token_signing_alg_values_supported: [keys.algorithm]
    })
  }

  // Serialized once when the public URL is configured; otherwise per Host.
  const fixed = config.publicUrl === undefined ? undefined : describe(config.publicUrl)
  const byHost = new Map<string, string>()

  function documentFor (request: FastifyRequest): string {
    if (fixed !== undefined) return fixed
    if (!HOST_HEADER.test(request.host)) {
      throw invalidRequest('the Host header is not a host name; set PUBLIC_URL to publish fixed endpoint URLs')
    }
    const base = `${request.protocol}://${request.host}`
    // The pattern admits a few hosts no URL parser does (a port over 65535,
    // 999.999.999.999): never publish such "URLs".
    if (!URL.canParse(base)) throw invalidRequest('the Host header is not a valid host; set PUBLIC_URL to publish fixed endpoint URLs')
    let body = byHost.get(base)
    if (body === undefined) {
      body = describe(base)
      if (byHost.size < 100) byHost.set(base, body)
    }
    return body
  }

  for (const url of ['/.well-known/openid-configuration', '/.well-known/oauth-authorization-server']) {
    fastify.get(url, async (request, reply) => {
      return reply
        .header('cache-control', `public, max-age=${config.jwksMaxAge}`)
        .type('application/json; charset=utf-8')
        .send(documentFor(request))
    })
  }
}

export default discoveryRoute
