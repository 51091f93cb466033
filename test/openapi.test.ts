import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import SwaggerParser from '@apidevtools/swagger-parser'
import { test } from 'tap'
import { GRANT_TYPES } from '../grants/index.ts'
import { build, injectAdmin } from './helper.ts'

interface Operation {
  operationId?: string
  summary?: string
  description?: string
  servers?: Array<{ url: string }>
  tags?: string[]
  security?: Array<Record<string, string[]>>
  requestBody?: { content: Record<string, { schema: { required?: string[], properties?: Record<string, unknown> } }> }
  responses: Record<string, { description: string, headers?: Record<string, unknown>, content?: Record<string, { schema: { $ref?: string }, example?: unknown, examples?: unknown }> }>
}

type FormSchema = { required?: string[], properties?: Record<string, { enum?: string[], example?: unknown }> }

interface OpenApiDocument {
  openapi: string
  info: { title: string, version: string }
  servers?: Array<{ url: string }>
  components: { securitySchemes: Record<string, unknown>, schemas: Record<string, { example?: unknown }> }
  paths: Record<string, Record<string, Operation>>
}

const { version } = JSON.parse(readFileSync(join(import.meta.dirname, '..', 'package.json'), 'utf8')) as { version: string }

test('GET /docs/json: an OpenAPI 3 document of the routes and their schemas', async (t) => {
  const { app } = await build(t)
  const res = await injectAdmin(app, '/docs/json')
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^application\/json/)
  const doc = res.json<OpenApiDocument>()

  t.match(doc.openapi, /^3\.\d+\.\d+$/)
  t.equal(doc.info.title, 'session-service')
  t.equal(doc.info.version, version, 'the version of package.json')
  t.match(doc.components.securitySchemes.clientSecretBasic, { type: 'http', scheme: 'basic' })
  t.ok(doc.components.schemas.oauthError, 'the shared error body is a named component')

  const form = (path: string): { required?: string[], properties?: Record<string, unknown> } | undefined =>
    doc.paths[path]?.post?.requestBody?.content['application/x-www-form-urlencoded']?.schema

  const token = form('/oauth/token')
  t.ok(token, '/oauth/token takes a form')
  t.strictSame(token?.required, ['grant_type'])
  t.ok(token?.properties?.grant_type !== undefined && token.properties.client_assertion !== undefined, 'with its parameters')
  t.strictSame(doc.paths['/oauth/token']?.post?.security, [{ clientSecretBasic: [] }, {}], 'Basic, or credentials in the form')
  t.match(doc.paths['/oauth/token']?.post?.responses, { 200: {}, 401: {}, 429: {}, 503: {} })
  t.strictSame(Object.keys(doc.paths['/oauth/token']?.post?.responses?.[200]?.headers ?? {}), ['Cache-Control', 'DPoP-Nonce'], 'the token answer\'s headers are documented')
  t.notOk('headers' in (doc.paths['/oauth/token']?.post?.responses?.[200]?.content?.['application/json']?.schema ?? {}), 'and are not a member of the body\'s schema')

  for (const path of ['/oauth/revoke', '/oauth/introspect']) {
    t.strictSame(form(path)?.required, ['token'], `${path} takes a form with a token`)
    t.strictSame(doc.paths[path]?.post?.security, [{ clientSecretBasic: [] }, {}])
  }

  const verify = doc.paths['/oauth/verify']?.post?.requestBody?.content['application/json']?.schema
  t.strictSame(verify?.required, ['token'], '/oauth/verify takes JSON with a token')
  t.equal(doc.paths['/oauth/verify']?.post?.security, undefined, 'verify authenticates no client')

  t.ok(doc.paths['/.well-known/jwks.json']?.get, 'the JWKS')
  t.ok(doc.paths['/.well-known/openid-configuration']?.get, 'the discovery document')
  t.ok(doc.paths['/ready']?.get?.responses['503'], 'readiness with its 503')
  t.ok(doc.paths['/health']?.get, 'liveness')

  t.equal(doc.paths['/metrics'], undefined, '/metrics is hidden')
  t.notOk(Object.keys(doc.paths).some((path) => path.startsWith('/docs')), 'the docs do not describe themselves')
})

test('GET /docs: the Swagger UI page', async (t) => {
  const { app } = await build(t)
  const res = await injectAdmin(app, '/docs')
  if (res.statusCode >= 300 && res.statusCode < 400) {
    t.match(res.headers.location, /^\/docs/, 'a redirect within /docs')
  } else {
    t.equal(res.statusCode, 200)
    t.match(res.headers['content-type'], /^text\/html/)
    t.match(res.body, /swagger-ui/i)
  }
  const yaml = await injectAdmin(app, '/docs/yaml')
  t.equal(yaml.statusCode, 200)
  t.match(yaml.body, /^openapi: 3\./m)
})

/** Every operation of the document, with its path and method. */
function operationsOf (doc: OpenApiDocument): Array<{ name: string, operation: Operation }> {
  return Object.entries(doc.paths).flatMap(([path, methods]) =>
    Object.entries(methods).map(([method, operation]) => ({ name: `${method.toUpperCase()} ${path}`, operation })))
}

test('GET /docs/json: a valid OpenAPI 3.0 document, each operation described for a reader', async (t) => {
  const { app } = await build(t)
  const doc = (await injectAdmin(app, '/docs/json')).json<OpenApiDocument>()
  // An independent validator: the OpenAPI 3.0 JSON Schema and every $ref.
  await t.resolves(SwaggerParser.validate(structuredClone(doc) as unknown as Parameters<typeof SwaggerParser.validate>[0]), 'valid by @apidevtools/swagger-parser')
  const componentOf = (ref: string | undefined): { example?: unknown } | undefined =>
    ref === undefined ? undefined : doc.components.schemas[ref.replace('#/components/schemas/', '')]

  const operationIds = new Set<string>()
  for (const { name, operation } of operationsOf(doc)) {
    t.ok((operation.summary ?? '').length > 10, `${name}: a summary`)
    t.match(operation.description, /RFC \d+ §\d/, `${name}: a description naming the RFC and section it follows`)
    t.match(operation.operationId, /^[a-z][a-zA-Z]+$/, `${name}: a camelCase operationId`)
    t.notOk(operationIds.has(operation.operationId ?? ''), `${name}: its operationId is unique`)
    operationIds.add(operation.operationId ?? '')
    for (const [status, response] of Object.entries(operation.responses)) {
      t.not(response.description, 'Default Response', `${name} ${status}: described`)
      const media = response.content?.['application/json']
      if (media === undefined) continue
      const example = media.example ?? media.examples ?? componentOf(media.schema.$ref)?.example
      t.ok(example !== undefined, `${name} ${status}: an example`)
    }
  }
  t.equal(operationIds.size, operationsOf(doc).length)
})

test('GET /docs/json: enumerations, examples and servers that make "Try it out" work', async (t) => {
  const { app, config } = await build(t, { env: { PUBLIC_URL: 'https://auth.example.com' } })
  t.equal(config.publicUrl, 'https://auth.example.com')
  const doc = (await injectAdmin(app, '/docs/json')).json<OpenApiDocument>()
  t.strictSame(doc.servers?.map((server) => server.url), ['https://auth.example.com'], 'public operations go to PUBLIC_URL')
  for (const { name, operation } of operationsOf(doc)) {
    const admin = name.includes(' /admin/') || name.endsWith(' /ready') || name.endsWith(' /live')
    t.strictSame(operation.servers?.map((server) => server.url), admin ? ['/'] : undefined,
      admin ? `${name}: on the admin listener, which serves the page` : `${name}: on the public listener`)
  }

  const content = (path: string): { schema: FormSchema, examples?: Record<string, { value: Record<string, string> }> } | undefined =>
    doc.paths[path]?.post?.requestBody?.content['application/x-www-form-urlencoded'] as never
  const token = content('/oauth/token')
  t.strictSame(token?.schema.properties?.grant_type?.enum, [...GRANT_TYPES], 'grant_type lists the grants of the registry')
  t.strictSame(GRANT_TYPES, ['client_credentials', 'refresh_token', 'urn:ietf:params:oauth:grant-type:token-exchange'])
  t.strictSame(content('/oauth/revoke')?.schema.properties?.token_type_hint?.enum, ['access_token', 'refresh_token'])
  // Swagger UI sends every form field with its example ("string" when there is none).
  for (const [name, property] of Object.entries(token?.schema.properties ?? {})) {
    if (name !== 'grant_type') t.equal(property.example, '', `${name}: empty in the form, so not sent`)
  }
  t.match(token?.examples?.clientCredentials?.value, { grant_type: 'client_credentials' }, 'named examples of whole requests')
  t.ok(token?.examples?.refreshToken?.value.refresh_token, 'a refresh_token request')
  t.ok(token?.examples?.tokenExchange?.value.subject_token, 'a token exchange request')

  // The route schema still validates as before: an unknown grant type is RFC 6749's error, not a schema error.
  const res = await app.inject({ method: 'POST', url: '/oauth/token', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: 'grant_type=password' })
  t.equal(res.statusCode, 400)
  t.equal(res.json<{ error: string }>().error, 'unsupported_grant_type')
})

test('GET /docs: the page has no top bar (no Fastify logo, no box to load another document)', async (t) => {
  const { app } = await build(t)
  const initializer = await injectAdmin(app, '/docs/static/swagger-initializer.js')
  t.equal(initializer.statusCode, 200)
  t.match(initializer.body, /"?layout"?:\s*"BaseLayout"/, 'the layout without the top bar')
  const page = await injectAdmin(app, '/docs/')
  t.match(page.body, /<title>session-service API<\/title>/)
})
