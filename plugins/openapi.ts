import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import fp from 'fastify-plugin'
import fastifySwagger, { type SwaggerTransform } from '@fastify/swagger'
import fastifySwaggerUi from '@fastify/swagger-ui'
import type { FastifySchema } from 'fastify'
import { documentedFormBody, errorStatus, FORM_EXAMPLES } from '../schemas/documentation.ts'
import { ADMIN_ONLY, registerAdminRoutes } from './admin-listener.ts'

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

// The document is served by the admin listener, so a relative URL reaches it;
// the public endpoints are reached at PUBLIC_URL (the document's `servers`).
const ADMIN_SERVERS = [{ url: '/', description: 'The admin listener, which serves this page' }]

type OperationKind = 'oauth' | 'admin' | 'other'
type ResponseSchemas = Record<string, Record<string, unknown>>

function tagOf (url: string): string {
  if (url.startsWith('/oauth/')) return 'oauth'
  if (url.startsWith('/.well-known/')) return 'discovery'
  if (url.startsWith('/admin/')) return 'admin'
  return 'operations'
}

/** Every status with what it means, and an example body for the errors. */
function describedResponses (responses: ResponseSchemas | undefined, kind: OperationKind): ResponseSchemas | undefined {
  if (responses === undefined) return undefined
  const described: ResponseSchemas = {}
  for (const [status, schema] of Object.entries(responses)) {
    const error = Number(status) >= 400 ? errorStatus(status, kind) : undefined
    // A route's own description wins; a bare $ref would lose the example, so
    // the shared error body goes into an allOf.
    if (error === undefined || typeof schema.description === 'string') described[status] = schema
    else if (typeof schema.$ref === 'string') described[status] = { allOf: [schema], description: error.description, examples: [error.example] }
    else described[status] = { ...schema, description: error.description }
  }
  return described
}

function kindOf (url: string): OperationKind {
  if (CLIENT_AUTHENTICATED_FORMS.has(url)) return 'oauth'
  if (url.startsWith('/admin/')) return 'admin'
  return 'other'
}

// Returns a copy: the route's own schema is what Fastify validates with.
const describeRoute: SwaggerTransform = ({ schema, url, route }) => {
  const described: FastifySchema & { servers?: typeof ADMIN_SERVERS } = { ...schema, tags: schema?.tags ?? [tagOf(url)] }
  if (CLIENT_AUTHENTICATED_FORMS.has(url) && schema?.body !== undefined) {
    described.consumes = ['application/x-www-form-urlencoded']
    described.body = documentedFormBody(schema.body as Record<string, unknown>, FORM_EXAMPLES[url] ?? {})
    // HTTP Basic, or client_secret_post / private_key_jwt in the form itself.
    described.security = [{ clientSecretBasic: [] }, {}]
  }
  if (url.startsWith('/admin/')) described.security = [{ adminBearer: [] }]
  if (route.constraints?.listener === ADMIN_ONLY.listener) described.servers = ADMIN_SERVERS
  described.response = describedResponses(schema?.response as ResponseSchemas | undefined, kindOf(url))
  return { schema: described, url }
}

export default fp(async (fastify) => {
  const { config } = fastify
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
      // "Try it out" sends public requests to the public listener, from the
      // admin listener's page: a cross-origin request (plugins/cors.ts).
      servers: [{ url: config.publicUrl, description: 'The public listener (PUBLIC_URL)' }],
      tags: [
        { name: 'oauth', description: 'Token endpoints (RFC 6749, 7009, 7662)' },
        { name: 'discovery', description: 'Metadata and public keys for gateways and client libraries' },
        { name: 'operations', description: 'Probes for load balancers and orchestrators (admin listener, except /health)' },
        { name: 'admin', description: 'Clients and stored signing keys (admin listener; a bearer token of this service with ADMIN_SCOPE)' }
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
    // BaseLayout has no top bar: neither its logo (Fastify's) nor its box
    // that loads the document of any URL.
    uiConfig: { layout: 'BaseLayout', docExpansion: 'list', deepLinking: false, persistAuthorization: false, tryItOutEnabled: false },
    theme: { title: 'session-service API' }
  })
}, { name: 'openapi', dependencies: ['admin-listener', 'config'] })
