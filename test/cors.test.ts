// Cross-origin requests: the public endpoints answer a page of any origin
// (the API docs are on the admin listener, another origin), without
// credentials mode; the admin listener answers none.
import { test } from 'tap'
import { basicAuth, build, FORM, injectAdmin, insertClient } from './helper.ts'

const ORIGIN = 'http://127.0.0.1:9090'

function preflight (method: string, headers = 'authorization,content-type'): Record<string, string> {
  return { origin: ORIGIN, 'access-control-request-method': method, 'access-control-request-headers': headers }
}

test('a preflight for the token endpoint is allowed, for any origin, without credentials mode', async (t) => {
  const { app } = await build(t)
  const res = await app.inject({ method: 'OPTIONS', url: '/oauth/token', headers: preflight('POST') })
  t.equal(res.statusCode, 204)
  t.equal(res.headers['access-control-allow-origin'], '*')
  t.equal(res.headers['access-control-allow-credentials'], undefined, 'no credentials mode: no cookies ever count')
  t.match(res.headers['access-control-allow-methods'], /\bPOST\b/)
  const allowed = String(res.headers['access-control-allow-headers']).toLowerCase().split(/,\s*/)
  t.strictSame(allowed.filter((name) => ['authorization', 'content-type', 'dpop'].includes(name)).sort(), ['authorization', 'content-type', 'dpop'])
  t.equal(res.body, '')

  const jwks = await app.inject({ method: 'OPTIONS', url: '/.well-known/jwks.json', headers: preflight('GET', 'accept') })
  t.equal(jwks.statusCode, 204, 'the published keys too')
})

test('a cross-origin token request gets its answer readable by the page, errors included', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'cors-client', secret: 'cors secret' })
  const ok = await app.inject({
    method: 'POST',
    url: '/oauth/token',
    headers: { ...FORM, origin: ORIGIN, authorization: basicAuth('cors-client', 'cors secret') },
    payload: 'grant_type=client_credentials'
  })
  t.equal(ok.statusCode, 200)
  t.equal(ok.headers['access-control-allow-origin'], '*')
  t.equal(ok.headers['access-control-allow-credentials'], undefined)
  t.match(ok.headers['access-control-expose-headers'], /Retry-After/)
  t.match(ok.headers['access-control-expose-headers'], /\bDPoP-Nonce\b/, 'a page can read a DPoP server nonce (RFC 9449 §8)')

  const refused = await app.inject({
    method: 'POST',
    url: '/oauth/token',
    headers: { ...FORM, origin: ORIGIN, authorization: basicAuth('cors-client', 'wrong') },
    payload: 'grant_type=client_credentials'
  })
  t.equal(refused.statusCode, 401)
  t.equal(refused.headers['access-control-allow-origin'], '*', 'the page can read the error body')
  t.match(refused.headers['access-control-expose-headers'], /WWW-Authenticate/)
})

test('the admin listener answers no cross-origin request', async (t) => {
  const { app } = await build(t)
  const docs = await injectAdmin(app, { method: 'GET', url: '/docs/json', headers: { origin: 'https://elsewhere.example' } })
  t.equal(docs.statusCode, 200)
  t.equal(docs.headers['access-control-allow-origin'], undefined, 'no CORS header on an admin answer')
  for (const url of ['/admin/clients', '/docs/json', '/metrics', '/oauth/token']) {
    const res = await injectAdmin(app, { method: 'OPTIONS', url, headers: preflight(url === '/admin/clients' || url === '/oauth/token' ? 'POST' : 'GET') })
    t.equal(res.statusCode, 404, `admin preflight ${url}: 404`)
    t.equal(res.headers['access-control-allow-origin'], undefined, `admin preflight ${url}: no CORS header`)
  }
})

test('OPTIONS that is not a preflight for a public route stays a 404 with the error body', async (t) => {
  const { app } = await build(t)
  const cases = [
    { url: '/oauth/token', headers: {}, why: 'no Origin' },
    { url: '/oauth/token', headers: { origin: ORIGIN }, why: 'no Access-Control-Request-Method' },
    { url: '/oauth/nothing', headers: preflight('POST'), why: 'no such route' },
    { url: '/oauth/token', headers: preflight('DELETE'), why: 'no such method' },
    { url: '/metrics', headers: preflight('GET'), why: 'an admin route' },
    { url: '/', headers: {}, payload: 'client_id=a', why: 'a body without a media type' }
  ]
  for (const { url, headers, payload, why } of cases as Array<{ url: string, headers: Record<string, string>, payload?: string, why: string }>) {
    const res = await app.inject({ method: 'OPTIONS', url, headers, payload })
    t.equal(res.statusCode, 404, `${why}: 404`)
    t.match(res.json(), { error: 'not_found' }, `${why}: the service's error body`)
    t.equal(res.headers['access-control-allow-methods'], undefined, `${why}: no preflight answer`)
  }
})
