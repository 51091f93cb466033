import { test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { backends, build, freePort, needs, pollUntil, PrivateRedis, injectAdmin } from './helper.ts'

async function ready (app: FastifyInstance): Promise<{ res: LightMyRequestResponse, ms: number }> {
  const started = Date.now()
  const res = await injectAdmin(app, '/ready')
  return { res, ms: Date.now() - started }
}

test('GET /ready: 200 when PostgreSQL and Redis answer and the key is loaded', async (t) => {
  const { app } = await build(t)
  const { res } = await ready(app)
  t.equal(res.statusCode, 200)
  t.equal(res.body, '{"status":"ready"}')
  t.equal(res.headers['cache-control'], 'no-store')
  t.equal(res.headers['retry-after'], undefined, 'no Retry-After when ready')
})

test('GET /ready: 503 with Retry-After once Redis is unreachable', { skip: needs.redis }, async (t) => {
  // The app cannot boot against a closed Redis port (@fastify/redis waits
  // for the first connection), so its own Redis is stopped after boot.
  const redis = new PrivateRedis(t, await freePort())
  await redis.start()
  const { app } = await build(t, { env: { REDIS_URL: redis.url, DEPENDENCY_TIMEOUT: '500ms' } })
  t.equal((await ready(app)).res.statusCode, 200, 'ready while Redis runs')

  await redis.stop()
  const { res, ms } = await ready(app)
  t.equal(res.statusCode, 503)
  t.match(res.json(), { status: 'unavailable', postgresql: 'up', redis: /^(timeout|unreachable)$/, signing_key: 'loaded' })
  t.strictSame(Object.keys(res.json()).sort(), ['postgresql', 'redis', 'signing_key', 'status'])
  t.match(res.headers['retry-after'], /^[1-9]\d*$/, 'Retry-After in seconds')
  t.equal(res.headers['cache-control'], 'no-store')
  t.ok(ms < 1500, `answered in ${ms} ms`)
  t.notMatch(res.body, /ECONNREFUSED|\bat \S+ \(/, 'no low-level cause in the body')

  // The dependency report of /health agrees.
  t.equal((await app.inject({ method: 'GET', url: '/health' })).statusCode, 503)

  // Ready again without a restart. Redis must be back anyway for the app to
  // close: @fastify/redis quits its client at close, which fails while the
  // server is gone.
  await redis.start()
  const back = await pollUntil(async () => await ready(app), (answer) => answer.res.statusCode === 200, 5000)
  t.equal(back.res.statusCode, 200, 'ready within 5 s of Redis coming back')
  t.equal(back.res.body, '{"status":"ready"}')
})

test('GET /ready: 503 when PostgreSQL is unreachable', async (t) => {
  const { app } = await build(t, {
    databaseUrl: `postgres://postgres@127.0.0.1:${await freePort()}/postgres`,
    env: { MIGRATE_ON_START: 'false' }
  })
  const { res } = await ready(app)
  t.equal(res.statusCode, 503)
  t.strictSame(res.json(), { status: 'unavailable', postgresql: 'unreachable', redis: backends.redis ? 'up' : 'unused', signing_key: 'loaded' })
  t.match(res.headers['retry-after'], /^[1-9]\d*$/)
})
