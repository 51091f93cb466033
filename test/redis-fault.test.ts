// Redis stops while requests flow: every endpoint answers within a bounded
// time, with 503 temporarily_unavailable and Retry-After where it needs Redis
// (never a 500, a hang or a stack trace), and everything works again when
// Redis returns, without a restart. Uses a Redis server of its own.
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { basicAuth, build, form, FORM, freePort, insertClient, issueTokens, needs, PrivateRedis } from './helper.ts'

const CLIENT = { id: 'svc-flow', secret: 'flow-secret' }
const AUTH = { authorization: basicAuth(CLIENT.id, CLIENT.secret) }
// DEPENDENCY_TIMEOUT is 500 ms here: a stopped Redis must show well within this.
const BOUND_MS = 3000

interface Call {
  name: string
  /** whether the endpoint needs Redis to answer */
  needsRedis: boolean
  send: (app: FastifyInstance, tokens: { access_token: string, refresh_token: string }) => Promise<LightMyRequestResponse>
}

const CALLS: Call[] = [
  {
    name: 'client_credentials',
    needsRedis: true,
    send: async (app) => await app.inject({ method: 'POST', url: '/oauth/token', headers: { ...FORM, ...AUTH }, payload: form({ grant_type: 'client_credentials' }) })
  },
  {
    name: 'refresh_token',
    needsRedis: true,
    send: async (app, tokens) => await app.inject({ method: 'POST', url: '/oauth/token', headers: { ...FORM, ...AUTH }, payload: form({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token }) })
  },
  {
    name: 'verify',
    needsRedis: true,
    send: async (app, tokens) => await app.inject({ method: 'POST', url: '/oauth/verify', payload: { token: tokens.access_token } })
  },
  {
    name: 'introspect',
    needsRedis: true,
    send: async (app, tokens) => await app.inject({ method: 'POST', url: '/oauth/introspect', headers: { ...FORM, ...AUTH }, payload: form({ token: tokens.access_token }) })
  },
  {
    name: 'revoke',
    needsRedis: true,
    send: async (app, tokens) => await app.inject({ method: 'POST', url: '/oauth/revoke', headers: { ...FORM, ...AUTH }, payload: form({ token: tokens.access_token }) })
  },
  { name: 'jwks', needsRedis: false, send: async (app) => await app.inject({ method: 'GET', url: '/.well-known/jwks.json' }) },
  { name: 'discovery', needsRedis: false, send: async (app) => await app.inject({ method: 'GET', url: '/.well-known/openid-configuration' }) },
  { name: 'health', needsRedis: true, send: async (app) => await app.inject({ method: 'GET', url: '/health' }) }
]

test('Redis stops while requests flow, and comes back', { skip: needs.redis }, async (t) => {
  const redis = new PrivateRedis(t, await freePort())
  await redis.start()
  const { app, databaseUrl } = await build(t, { env: { REDIS_URL: redis.url, DEPENDENCY_TIMEOUT: '500ms', RATE_LIMIT_DEFAULT: '100000' } })
  await insertClient(databaseUrl, CLIENT)

  // Traffic before, during and after the outage: every answer is 200 or,
  // while Redis is away, 503; nothing else, and none slower than the bound.
  const statuses = new Map<number, number>()
  let slowest = 0
  const traffic = { flowing: true }
  const flow = (async () => {
    while (traffic.flowing) {
      const tokens = await issueTokens(app, CLIENT.id, CLIENT.secret).catch(() => undefined)
      const started = Date.now()
      const res = tokens === undefined
        ? await CALLS[0]?.send(app, { access_token: '', refresh_token: '' })
        : await CALLS[2]?.send(app, tokens)
      slowest = Math.max(slowest, Date.now() - started)
      if (res !== undefined) statuses.set(res.statusCode, (statuses.get(res.statusCode) ?? 0) + 1)
      await sleep(10)
    }
  })()

  const tokens = await issueTokens(app, CLIENT.id, CLIENT.secret)
  await sleep(300)
  await redis.stop()
  await sleep(300)

  for (const call of CALLS) {
    const started = Date.now()
    const res = await call.send(app, tokens)
    const ms = Date.now() - started
    t.ok(ms < BOUND_MS, `${call.name}: answered in ${ms} ms with Redis down`)
    if (!call.needsRedis) {
      t.equal(res.statusCode, 200, `${call.name}: served without Redis`)
      continue
    }
    t.equal(res.statusCode, 503, `${call.name}: 503`)
    t.match(res.headers['retry-after'], /^[1-9]\d*$/, `${call.name}: Retry-After`)
    t.notMatch(res.body, /ECONNREFUSED|\bat \S+ \(|\.ts:\d+/, `${call.name}: no low-level cause or stack trace`)
    if (call.name === 'health') {
      t.match(res.json(), { status: 'unavailable', redis: { status: 'down' } }, 'health: Redis down')
    } else {
      t.strictSame(Object.keys(res.json()).sort(), ['error', 'error_description'], `${call.name}: an OAuth error body`)
      t.equal(res.json().error, 'temporarily_unavailable', `${call.name}: temporarily_unavailable`)
    }
  }

  await redis.start()
  const deadline = Date.now() + 10_000
  let back = await CALLS[0]?.send(app, tokens)
  while (back?.statusCode !== 200 && Date.now() < deadline) {
    await sleep(100)
    back = await CALLS[0]?.send(app, tokens)
  }
  t.equal(back?.statusCode, 200, 'tokens are issued again once Redis is back, without a restart')
  const fresh = await issueTokens(app, CLIENT.id, CLIENT.secret)
  for (const call of CALLS) {
    const res = await call.send(app, fresh)
    t.equal(res.statusCode, 200, `${call.name}: 200 again`)
  }

  traffic.flowing = false
  await flow
  const seen = [...statuses.keys()].sort()
  t.ok(seen.every((status) => status === 200 || status === 503), `the flowing requests got only 200 and 503 (${JSON.stringify(Object.fromEntries(statuses))})`)
  t.ok((statuses.get(200) ?? 0) > 0 && (statuses.get(503) ?? 0) > 0, 'both, before and during the outage')
  t.ok(slowest < BOUND_MS, `the slowest flowing request took ${slowest} ms`)
})
