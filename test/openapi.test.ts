import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'tap'
import { build, injectAdmin } from './helper.js'

interface Operation {
  tags?: string[]
  security?: Array<Record<string, string[]>>
  requestBody?: { content: Record<string, { schema: { required?: string[], properties?: Record<string, unknown> } }> }
  responses: Record<string, unknown>
}

interface OpenApiDocument {
  openapi: string
  info: { title: string, version: string }
  components: { securitySchemes: Record<string, unknown>, schemas: Record<string, unknown> }
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
