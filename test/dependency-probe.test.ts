// /health and /ready tell a dependency that hangs (its time bound ran out)
// from one that refuses, by the error's code: a paused Redis answers nothing
// until the pause ends, a stopped one refuses the connection.
import { test } from 'tap'
import { Redis } from 'ioredis'
import { build, freePort, needs, PrivateRedis, injectAdmin } from './helper.ts'

test('a Redis that does not answer in time is reported as timeout, a stopped one as unreachable', { skip: needs.redis }, async (t) => {
  const redis = new PrivateRedis(t, await freePort())
  await redis.start()
  // DEPENDENCY_TIMEOUT (2 s by default) above the probes' 800 ms: the probe's own bound runs out first.
  const { app } = await build(t, { env: { REDIS_URL: redis.url } })
  const admin = new Redis(redis.url)
  t.teardown(() => admin.disconnect())

  // Long enough for both probes (800 ms each), short enough for the teardown.
  await admin.call('CLIENT', 'PAUSE', '4000', 'ALL')
  const health = await app.inject({ method: 'GET', url: '/health' })
  t.equal(health.statusCode, 503)
  t.strictSame(health.json().redis, { status: 'down', error: 'timeout' }, '/health: the paused Redis timed out')
  const ready = await injectAdmin(app, '/ready')
  t.equal(ready.statusCode, 503)
  t.equal(ready.json().redis, 'timeout', '/ready: the paused Redis timed out')
  t.equal(ready.json().postgresql, 'up')
  await admin.call('CLIENT', 'UNPAUSE')

  await redis.stop()
  const stopped = await app.inject({ method: 'GET', url: '/health' })
  t.strictSame(stopped.json().redis, { status: 'down', error: 'unreachable' }, '/health: the stopped Redis is unreachable')
  const notReady = await injectAdmin(app, '/ready')
  t.equal(notReady.json().redis, 'unreachable', '/ready: the stopped Redis is unreachable')
})
