import { test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { backends, build, freePort, insertClient, issueTokens, needs, PrivateRedis, pollUntil, tokenRequest, verify } from './helper.ts'

async function health (app: FastifyInstance): Promise<{ res: LightMyRequestResponse, ms: number }> {
  const started = Date.now()
  const res = await app.inject({ method: 'GET', url: '/health' })
  return { res, ms: Date.now() - started }
}

const UP = { status: 'up' }
// Without a Redis server the app keeps its state in the database: no Redis to report.
const REDIS = backends.redis ? UP : { status: 'unused' }

test('GET /health: 200 when both dependencies answer', async (t) => {
  const { app } = await build(t)
  const { res } = await health(app)
  t.equal(res.statusCode, 200)
  t.equal(res.body, `{"status":"ok","postgresql":{"status":"up"},"redis":${JSON.stringify(REDIS)}}`)
  t.equal(res.headers['cache-control'], 'no-store')
  t.equal(res.headers['retry-after'], undefined, 'no Retry-After when healthy')
})

test('PostgreSQL unreachable: /health 503 fast, token requests 503 temporarily_unavailable', async (t) => {
  const closedPort = await freePort()
  const { app } = await build(t, {
    databaseUrl: `postgres://postgres@127.0.0.1:${closedPort}/postgres`,
    env: { MIGRATE_ON_START: 'false' }
  })

  const { res, ms } = await health(app)
  t.equal(res.statusCode, 503)
  t.strictSame(res.json(), { status: 'unavailable', postgresql: { status: 'down', error: 'unreachable' }, redis: REDIS })
  t.match(res.headers['retry-after'], /^[1-9]\d*$/, 'Retry-After in seconds')
  t.equal(res.headers['cache-control'], 'no-store')
  t.ok(ms < 1500, `answered in ${ms} ms`)

  const token = await tokenRequest(app, { grant_type: 'client_credentials', client_id: 'svc-any', client_secret: 'any-secret' })
  t.equal(token.statusCode, 503)
  t.strictSame(Object.keys(token.json()).sort(), ['error', 'error_description'])
  t.equal(token.json().error, 'temporarily_unavailable')
  t.match(token.headers['retry-after'], /^[1-9]\d*$/)
  t.notMatch(token.body, /\bat \S+ \(|\.ts:\d+|ECONNREFUSED|\\n/, 'no stack trace or low-level cause in the body')
})

test('Redis stops and comes back: /health and /oauth/verify follow, without a restart', { skip: needs.redis }, async (t) => {
  const redis = new PrivateRedis(t, await freePort())
  await redis.start()
  const { app, databaseUrl } = await build(t, {
    env: { REDIS_URL: redis.url, DEPENDENCY_TIMEOUT: '500ms' }
  })

  const healthy = await health(app)
  t.equal(healthy.res.statusCode, 200, 'healthy at first')
  await insertClient(databaseUrl, { id: 'svc-redis', secret: 'redis-secret' })
  const tokens = await issueTokens(app, 'svc-redis', 'redis-secret')
  t.equal((await verify(app, tokens.access_token)).json().valid, true, 'the token verifies while Redis runs')

  await redis.stop()

  const down = await health(app)
  t.equal(down.res.statusCode, 503, 'unhealthy once Redis is gone')
  t.match(down.res.json(), { status: 'unavailable', postgresql: UP, redis: { status: 'down', error: /^(timeout|unreachable)$/ } })
  t.strictSame(Object.keys(down.res.json().redis).sort(), ['error', 'status'])
  t.match(down.res.headers['retry-after'], /^[1-9]\d*$/)
  t.ok(down.ms < 1500, `answered in ${down.ms} ms`)

  const verifyStarted = Date.now()
  const refused = await verify(app, tokens.access_token)
  const verifyMs = Date.now() - verifyStarted
  t.equal(refused.statusCode, 503, 'verify cannot check the deny-list')
  t.equal(refused.json().error, 'temporarily_unavailable')
  t.strictSame(Object.keys(refused.json()).sort(), ['error', 'error_description'])
  t.match(refused.headers['retry-after'], /^[1-9]\d*$/)
  t.ok(verifyMs < 3000, `answered in ${verifyMs} ms`)

  await redis.start()
  const recovered = await pollUntil(async () => await health(app), (answer) => answer.res.statusCode === 200, 5000)
  t.equal(recovered.res.statusCode, 200, 'healthy again within 5 s of Redis coming back')
  t.equal(recovered.res.body, '{"status":"ok","postgresql":{"status":"up"},"redis":{"status":"up"}}')

  const again = await verify(app, tokens.access_token)
  t.equal(again.statusCode, 200)
  t.equal(again.json().valid, true, 'verify works again')
})
