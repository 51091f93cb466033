import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import fp from 'fastify-plugin'
import fastifySwagger, { type SwaggerTransform } from '@fastify/swagger'
import fastifySwaggerUi from '@fastify/swagger-ui'
import type { FastifySchema } from 'fastify'
import { registerAdminRoutes } from './admin-listener.js'

/** The version in package.json, from plugins/ (tsx, tests) or dist/plugins/ (built). */
export function serviceVersion (): string {
  let dir = import.meta.dirname
  for (let level = 0; level < 3; level++) {
    dir = dirname(dir)
    const file = join(dir, 'package.json')
    if (!existsSync(file)) continue
    const pkg = JSON.parse(readFileSync(file, 'utf8')) as { name?: string, version?: string }
    if (pkg.name === 'session-service' && typeof pkg.version === 'string') return pkg.version
  }
  return '0.0.0'
}

// The endpoints whose body is a form (RFC 6749 §3.2) and which authenticate
// the client. Their route schemas do not say so yet (Fastify needs no
// `consumes`), so the document is told here.
const CLIENT_AUTHENTICATED_FORMS = new Set(['/oauth/token', '/oauth/revoke', '/oauth/introspect'])

function tagOf (url: string): string {
  if (url.startsWith('/oauth/')) return 'oauth'
  if (url.startsWith('/.well-known/')) return 'discovery'
  if (url.startsWith('/admin/')) return 'admin'
  return 'operations'
}

// Returns a copy: the route's own schema is what Fastify validates with.
const describeRoute: SwaggerTransform = ({ schema, url }) => {
  const described: FastifySchema = { ...schema, tags: schema?.tags ?? [tagOf(url)] }
  if (CLIENT_AUTHENTICATED_FORMS.has(url)) {
    described.consumes = ['application/x-www-form-urlencoded']
    // HTTP Basic, or client_secret_post / private_key_jwt in the form itself.
    described.security = [{ clientSecretBasic: [] }, {}]
  }
  if (url.startsWith('/admin/')) described.security = [{ adminBearer: [] }]
  return { schema: described, url }
}

export default fp(async (fastify) => {
  // @fastify/swagger collects routes in an onRoute hook: registered here,
  // through fastify-plugin, the hook sees every route autoloaded after plugins/.
  await fastify.register(fastifySwagger, {
    openapi: {
      openapi: '3.0.3',
      info: {
        title: 'session-service',
        version: serviceVersion(),
        description: 'OAuth 2.0 token service for machine clients: client_credentials and refresh_token grants, ' +
          'signed JWT access tokens, published keys (JWKS), verification, introspection and revocation. ' +
          'Every error answer is an RFC 6749 §5.2 body: {"error", "error_description"}.'
      },
      tags: [
        { name: 'oauth', description: 'Token endpoints (RFC 6749, 7009, 7662)' },
        { name: 'discovery', description: 'Metadata and public keys for gateways and client libraries' },
        { name: 'operations', description: 'Probes for load balancers and orchestrators (admin listener, except /health)' },
        { name: 'admin', description: 'Client management (admin listener; a bearer token of this service with ADMIN_SCOPE)' }
      ],
      components: {
        securitySchemes: {
          clientSecretBasic: {
            type: 'http',
            scheme: 'basic',
            description: 'client_secret_basic (RFC 6749 §2.3.1): client id and secret, each form-urlencoded'
          },
          adminBearer: {
            type: 'http',
            scheme: 'bearer',
            bearerFormat: 'JWT',
            description: 'An access token of this service, requested with ADMIN_SCOPE by a client allowed it'
          }
        }
      }
    },
    transform: describeRoute,
    // Shared schemas keep their $id as component name (oauthError) instead of def-N.
    refResolver: {
      buildLocalReference: (json, _baseUri, _fragment, i) => typeof json.$id === 'string' ? json.$id : `def-${i}`
    }
  })

  // On the admin listener: the document describes the admin API too.
  await registerAdminRoutes(fastify, fastifySwaggerUi, {
    routePrefix: '/docs',
    uiConfig: { docExpansion: 'list', deepLinking: false }
  })
}, { name: 'openapi', dependencies: ['admin-listener'] })
