import { spawn, type ChildProcess } from 'node:child_process'
import { createConnection, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { build, type TestContext } from './helper.js'

async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = createServer()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      const port = typeof address === 'object' && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })
}

async function ready (app: FastifyInstance): Promise<{ res: LightMyRequestResponse, ms: number }> {
  const started = Date.now()
  const res = await app.inject({ method: 'GET', url: '/ready' })
  return { res, ms: Date.now() - started }
}

async function redisAnswers (port: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port })
    const done = (answer: boolean): void => { socket.destroy(); resolve(answer) }
    socket.setTimeout(500, () => done(false))
    socket.on('error', () => done(false))
    socket.on('connect', () => socket.write('PING\r\n'))
    socket.on('data', (data) => done(data.toString().startsWith('+PONG')))
  })
}

/**
 * A redis-server of this test only, on a port of its own, so it can be
 * stopped and started again. The app cannot boot against a closed Redis port
 * (@fastify/redis waits for the first connection), so Redis is stopped after
 * boot instead. Registered before build() so the app closes first.
 */
async function privateRedis (t: TestContext): Promise<{ url: string, start: () => Promise<void>, stop: () => Promise<void> }> {
  const port = await freePort()
  let child: ChildProcess | undefined
  const stop = async (): Promise<void> => {
    const running = child
    child = undefined
    if (running === undefined || running.exitCode !== null || running.signalCode !== null) return
    const exited = new Promise((resolve) => running.once('exit', resolve))
    running.kill('SIGTERM')
    await exited
  }
  const start = async (): Promise<void> => {
    const started = spawn('redis-server', [
      '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', tmpdir()
    ], { stdio: 'ignore' })
    child = started
    const deadline = Date.now() + 10_000
    while (!(await redisAnswers(port))) {
      if (started.exitCode !== null || Date.now() > deadline) throw new Error(`private redis-server on port ${port} did not start`)
      await sleep(50)
    }
  }
  t.teardown(stop)
  await start()
  return { url: `redis://127.0.0.1:${port}`, start, stop }
}

test('GET /ready: 200 when PostgreSQL and Redis answer and the key is loaded', async (t) => {
  const { app } = await build(t)
  const { res } = await ready(app)
  t.equal(res.statusCode, 200)
  t.equal(res.body, '{"status":"ready"}')
  t.equal(res.headers['cache-control'], 'no-store')
  t.equal(res.headers['retry-after'], undefined, 'no Retry-After when ready')
})

test('GET /ready: 503 with Retry-After once Redis is unreachable', async (t) => {
  const redis = await privateRedis(t)
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
  const deadline = Date.now() + 5000
  let back = await ready(app)
  while (back.res.statusCode !== 200 && Date.now() < deadline) {
    await sleep(100)
    back = await ready(app)
  }
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
  t.strictSame(res.json(), { status: 'unavailable', postgresql: 'unreachable', redis: 'up', signing_key: 'loaded' })
  t.match(res.headers['retry-after'], /^[1-9]\d*$/)
})
