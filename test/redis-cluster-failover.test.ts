// A master of the Redis Cluster dies while requests flow: until its replica
// takes over, every answer is 200 or a 503 with Retry-After (never a 500,
// never a hang); once it has, the same service (no restart) answers 200 to
// every kind of request again within 15 s, and what was revoked before the
// failover is still revoked. The master killed is the one holding the
// revocations' slot, the case with the most to lose. In the cluster run only
// (`npm run test:cluster`): it starts a cluster of six nodes of its own.
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { basicAuth, build, form, FORM, insertClient, issueTokens, needs, tokenRequest, verify } from './helper.ts'
import { PrivateRedisCluster } from './helpers/redis-cluster.ts'

const CLIENT = { id: 'svc-failover', secret: 'failover-secret' }
const AUTH = { authorization: basicAuth(CLIENT.id, CLIENT.secret) }
/** A request during the failover may take up to DEPENDENCY_TIMEOUT (1 s here) and a retry; more is a hang. */
const HANG_MS = 5000
const RECOVERY_MS = 15_000

interface Tokens { access_token: string, refresh_token: string }
type Call = (app: FastifyInstance, tokens: Tokens) => Promise<LightMyRequestResponse>

// Each kind of request; the refresh uses a fresh token each time (single use).
const CALLS: Record<string, Call> = {
  client_credentials: async (app) => await tokenRequest(app, { grant_type: 'client_credentials' }, AUTH),
  refresh_token: async (app) => {
    const issued = await tokenRequest(app, { grant_type: 'client_credentials' }, AUTH)
    if (issued.statusCode !== 200) return issued
    return await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: issued.json().refresh_token }, AUTH)
  },
  verify: async (app, tokens) => await verify(app, tokens.access_token),
  introspect: async (app, tokens) => await app.inject({ method: 'POST', url: '/oauth/introspect', headers: { ...FORM, ...AUTH }, payload: form({ token: tokens.refresh_token }) }),
  revoke: async (app) => {
    const issued = await tokenRequest(app, { grant_type: 'client_credentials' }, AUTH)
    if (issued.statusCode !== 200) return issued
    return await app.inject({ method: 'POST', url: '/oauth/revoke', headers: { ...FORM, ...AUTH }, payload: form({ token: issued.json().access_token }) })
  }
}

interface Seen { statuses: Map<string, number>, slowest: number, withoutRetryAfter: number }

/** Sends every kind of request in a loop until `flowing.on` is false; tallies what came back. */
async function flow (app: FastifyInstance, tokens: Tokens, flowing: { on: boolean }, seen: Seen): Promise<void> {
  while (flowing.on) {
    for (const [name, call] of Object.entries(CALLS)) {
      const started = Date.now()
      const res = await call(app, tokens)
      seen.slowest = Math.max(seen.slowest, Date.now() - started)
      const key = `${name} ${res.statusCode}`
      seen.statuses.set(key, (seen.statuses.get(key) ?? 0) + 1)
      if (res.statusCode === 503 && res.headers['retry-after'] === undefined) seen.withoutRetryAfter++
    }
    await sleep(5)
  }
}

/** Milliseconds until every kind of request answers 200 in one round, or undefined past `withinMs`. */
async function msUntilAllSucceed (app: FastifyInstance, tokens: Tokens, withinMs: number): Promise<number | undefined> {
  const started = Date.now()
  while (Date.now() - started < withinMs) {
    const answers = await Promise.all(Object.values(CALLS).map(async (call) => (await call(app, tokens)).statusCode))
    if (answers.every((status) => status === 200)) return Date.now() - started
    await sleep(100)
  }
  return undefined
}

test('a master dies while requests flow: 200 or 503 meanwhile, 200 again after the failover', { skip: needs.postgres }, async (t) => {
  // Fixed ports: a node's cluster bus listens on its port + 10000.
  const cluster = new PrivateRedisCluster(t, 7400)
  await cluster.start()
  const { app, databaseUrl } = await build(t, { env: { REDIS_URL: cluster.url, REDIS_CLUSTER_NODES: cluster.nodes, DEPENDENCY_TIMEOUT: '1s', RATE_LIMIT_DEFAULT: '1000000' } })
  await insertClient(databaseUrl, CLIENT)
  const tokens = await issueTokens(app, CLIENT.id, CLIENT.secret)
  const revoked = await issueTokens(app, CLIENT.id, CLIENT.secret)
  t.equal((await CALLS.revoke?.(app, tokens))?.statusCode, 200, 'every kind of request works on the cluster')
  const revocation = await app.inject({ method: 'POST', url: '/oauth/revoke', headers: { ...FORM, ...AUTH }, payload: form({ token: revoked.refresh_token }) })
  t.equal(revocation.statusCode, 200, 'a session revoked before the failover')

  // The master that serves the revocations' slot.
  const admin = await cluster.connect()
  const slot = Number(await admin.call('CLUSTER', 'KEYSLOT', '{revocations}'))
  const shards = await admin.call('CLUSTER', 'SLOTS') as Array<[number, number, [string, number]]>
  admin.disconnect()
  const victim = shards.find(([first, last]) => slot >= first && slot <= last)?.[2][1]
  t.ok(victim !== undefined && (await cluster.masters()).includes(victim), `the master of slot ${slot} is on port ${victim ?? '?'}`)

  const seen: Seen = { statuses: new Map(), slowest: 0, withoutRetryAfter: 0 }
  const flowing = { on: true }
  const flows = [flow(app, tokens, flowing, seen), flow(app, tokens, flowing, seen)]
  await sleep(500)
  const killedAt = Date.now()
  await cluster.killMaster(victim ?? 0)
  await cluster.waitForFailover()
  const failoverMs = Date.now() - killedAt
  const recoveryMs = await msUntilAllSucceed(app, tokens, RECOVERY_MS)
  flowing.on = false
  await Promise.all(flows)

  t.ok(recoveryMs !== undefined, `every kind of request answers 200 again ${recoveryMs ?? 'never'} ms after the failover (which took ${failoverMs} ms)`)
  const tally = Object.fromEntries(seen.statuses)
  t.ok([...seen.statuses.keys()].every((key) => / (200|503)$/.test(key)), `only 200 and 503 while it happened (${JSON.stringify(tally)})`)
  t.equal(seen.withoutRetryAfter, 0, 'every 503 said when to retry')
  t.ok(seen.slowest < HANG_MS, `the slowest request took ${seen.slowest} ms`)
  t.same((await verify(app, revoked.access_token)).json(), { valid: false, error: 'revoked' }, 'the session revoked before the failover stays revoked')
  const refused = await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: revoked.refresh_token }, AUTH)
  t.equal(refused.json().error, 'invalid_grant', 'and its refresh token stays refused')
})
