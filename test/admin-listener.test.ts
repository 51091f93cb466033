// Two listeners, one router: the operators' endpoints answer on the admin
// listener only, the public ones on the public listener only.
import { test } from 'tap'
import { build, createDatabase, createRedisPrefix, freePort, injectAdmin, ServerProcess, testEnv, waitForHealth } from './helper.ts'

const ADMIN_PATHS = ['/metrics', '/ready', '/live', '/docs', '/docs/json', '/docs/static/index.html']
const PUBLIC_PATHS = ['/health', '/.well-known/jwks.json', '/.well-known/openid-configuration']

test('injected: admin routes are not found on the public listener, public routes not on the admin one', async (t) => {
  const { app } = await build(t)
  for (const url of ADMIN_PATHS) {
    const res = await app.inject({ method: 'GET', url })
    t.equal(res.statusCode, 404, `public GET ${url}: 404`)
    t.match(res.json(), { error: 'not_found' })
    t.not((await injectAdmin(app, url)).statusCode, 404, `admin GET ${url}: answered`)
  }
  for (const url of PUBLIC_PATHS) {
    t.equal((await injectAdmin(app, url)).statusCode, 404, `admin GET ${url}: 404`)
    t.equal((await app.inject({ method: 'GET', url })).statusCode, 200, `public GET ${url}: 200`)
  }
  const token = await injectAdmin(app, { method: 'POST', url: '/oauth/token', payload: 'grant_type=client_credentials', headers: { 'content-type': 'application/x-www-form-urlencoded' } })
  t.equal(token.statusCode, 404, 'the token endpoint is not on the admin listener')
  // A header cannot move a request to the other listener.
  for (const headers of [{ host: '127.0.0.1:9090' }, { 'x-forwarded-port': '9090' }, { forwarded: 'for=127.0.0.1;host=127.0.0.1:9090' }]) {
    t.equal((await app.inject({ method: 'GET', url: '/metrics', headers })).statusCode, 404, `public GET /metrics with ${Object.keys(headers)[0]}: 404`)
  }
})

test('GET /live: 200 with no dependency asked, not cached', async (t) => {
  const { app } = await build(t)
  const res = await injectAdmin(app, '/live')
  t.equal(res.statusCode, 200)
  t.equal(res.body, '{"status":"live"}')
  t.equal(res.headers['cache-control'], 'no-store')
})

test('server.ts opens both listeners: each serves its own routes, and logs where the admin one listens', async (t) => {
  const port = await freePort()
  const adminPort = await freePort()
  const server = new ServerProcess(t, testEnv(await createDatabase(t), createRedisPrefix(t), {
    SERVER_PORT: String(port), SERVER_HOST: '127.0.0.1', ADMIN_PORT: String(adminPort), LOG_LEVEL: 'info'
  }))
  const base = `http://127.0.0.1:${port}`
  const admin = `http://127.0.0.1:${adminPort}`
  t.equal(await waitForHealth(base, () => server.child.exitCode === null, 30_000), 200, 'the public listener answers /health')
  for (const path of ['/live', '/ready', '/metrics', '/docs/json']) {
    t.equal((await fetch(`${admin}${path}`)).status, 200, `admin ${path}: 200`)
    t.equal((await fetch(`${base}${path}`)).status, 404, `public ${path}: 404`)
  }
  t.equal((await fetch(`${admin}/health`)).status, 404, 'admin /health: 404')
  t.equal((await fetch(`${admin}/oauth/token`, { method: 'POST' })).status, 404, 'admin /oauth/token: 404')
  const opened = server.logLines().find((line) => line.msg === 'admin listener open')
  t.match(opened, { address: '127.0.0.1', port: adminPort }, 'the log says where the admin listener is')
})

test('ADMIN_PORT equal to SERVER_PORT stops the process with one line naming ADMIN_PORT', async (t) => {
  const port = await freePort()
  const server = new ServerProcess(t, testEnv(await createDatabase(t), createRedisPrefix(t), {
    SERVER_PORT: String(port), SERVER_HOST: '127.0.0.1', ADMIN_PORT: String(port)
  }))
  t.strictSame(await server.exitWithin(20_000), { code: 1, signal: null }, 'exit code 1')
  t.equal(server.stderr, `session-service: ADMIN_PORT: must differ from SERVER_PORT (${port})\n`)
})
