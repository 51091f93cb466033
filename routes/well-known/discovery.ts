import type { FastifyPluginAsync, FastifyRequest } from 'fastify'

// One document answers both RFC 8414 and OpenID Connect Discovery 1.0: a
// gateway reads the OpenID path, OAuth client libraries either one.
const discoveryRoute: FastifyPluginAsync = async (fastify) => {
  const { config, keys } = fastify

  function describe (base: string): string {
    return JSON.stringify({
      issuer: config.issuer,
      token_endpoint: `${base}/oauth/token`,
      jwks_uri: `${base}/.well-known/jwks.json`,
      revocation_endpoint: `${base}/oauth/revoke`,
      introspection_endpoint: `${base}/oauth/introspect`,
      grant_types_supported: ['client_credentials', 'refresh_token'],
      token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
      revocation_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
      introspection_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
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
    const base = `${request.protocol}://${request.host}`
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
