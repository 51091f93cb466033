// The setting of the injection tests: hostile strings, clients whose ids are
// themselves hostile, a sentinel in Redis, and what must still hold after the
// attacks (the same clients, working tokens, no key outside the test's prefix).
import { randomBytes } from 'node:crypto'
import type { Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import { clientCacheKey, insertClientRow } from '../../plugins/clients.ts'
import { backends, build, decodeJwt, insertClient, type IssuedTokens, issueTokens, parseBody, sql, TEST_REDIS_URL } from '../helper.ts'
import { assertUntouched, basicOf, CLIENT, countRows, postForm, SECRET } from './common.ts'

/** SQL and Redis metacharacters, and Redis commands. */
export const HOSTILE = ['\' OR 1=1 --', '"; DROP TABLE clients; --', '*', '\r\nFLUSHALL\r\n', 'client:v2:*', '\') OR (\'a\'=\'a', '$1', '\\', '%00%', '*\r\nDEL *\r\n']

/** Keys of the whole Redis matching a glob, across every prefix. */
export async function scanKeys (redis: Redis, pattern: string): Promise<string[]> {
  const found: string[] = []
  let cursor = '0'
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', pattern, 'COUNT', 1000)
    found.push(...keys)
    cursor = next
  } while (cursor !== '0')
  return found
}

export const globEscape = (value: string): string => value.replace(/[*?[\]\\]/g, '\\$&')

/** The shape of every test's Redis key prefix (test/helpers/redis.ts createRedisPrefix). */
const TEST_PREFIX = /^ss-test:\d+:[0-9a-f]{8}:/

export interface InjectionScene {
  app: FastifyInstance
  databaseUrl: string
  redisPrefix: string
  marker: string
  /** HOSTILE, each as it is and with the marker */
  values: string[]
  hostileIds: string[]
  hostileSecret: string
  /** the client ids inserted, sorted */
  inserted: string[]
  genuine: IssuedTokens
  redis: Redis | undefined
  patterns: string[]
  /** the keys matching the patterns before the attacks */
  before: Set<string>
}

export async function injectionScene (t: Test): Promise<InjectionScene> {
  const { app, databaseUrl, redisPrefix } = await build(t)
  const marker = randomBytes(6).toString('hex')
  const hostile = HOSTILE
  // Each string as it is, and with a marker that only this run's requests can have put in a key.
  const values = hostile.flatMap((value) => [value, `${value} ${marker}`])

  // The known client, allowed enough requests for all of the below; and
  // clients whose ids are themselves hostile, registered legitimately (with
  // a secret of their own: the requests below present the known client's).
  await insertClient(databaseUrl, { id: CLIENT, secret: SECRET, rateLimit: 100_000 })
  const hostileIds = [`client:v2:* ${marker}`, `\r\nFLUSHALL\r\n ${marker}`, `' OR 1=1 -- ${marker}`]
  const hostileSecret = 'hostile-id-secret'
  // At the service's bcrypt cost: a cheaper hash would be replaced at the
  // first success, and its cache entry dropped, under the control below.
  for (const id of hostileIds) await insertClientRow(app.db, { id, secret: hostileSecret })
  const inserted = [CLIENT, ...hostileIds].sort()
  const genuine = await issueTokens(app, CLIENT, SECRET)

  const redis = backends.redis ? new Redis(TEST_REDIS_URL) : undefined
  t.teardown(async () => { await redis?.quit() })
  const patterns = [`*${marker}*`, ...hostile.map((value) => `*${globEscape(value)}*`)]
  const before = new Set<string>()
  if (redis !== undefined) {
    await redis.set(`${redisPrefix}attacks:sentinel`, 'still here')
    for (const pattern of patterns) for (const key of await scanKeys(redis, pattern)) before.add(key)
  }
  return { app, databaseUrl, redisPrefix, marker, values, hostileIds, hostileSecret, inserted, genuine, redis, patterns, before }
}

/** After the attacks: the same clients, a usable refresh token, a known client served, Redis untouched outside the prefix. */
export async function assertNothingChanged (t: Test, scene: InjectionScene): Promise<void> {
  const { app, databaseUrl, redisPrefix, marker, hostileIds, hostileSecret, inserted, genuine, redis, patterns, before } = scene
  const basic = basicOf(CLIENT, SECRET)
  const cc = { grant_type: 'client_credentials' }
  t.equal(await countRows(databaseUrl, 'clients'), inserted.length, 'the clients table holds exactly the clients inserted')
  const ids = await sql<{ client_id: string }>(databaseUrl, 'SELECT client_id FROM clients ORDER BY client_id')
  t.strictSame(ids.map((row) => row.client_id).sort(), inserted, 'and they are the same clients')
  const refreshed = await postForm(app, '/oauth/token', { grant_type: 'refresh_token', refresh_token: genuine.refresh_token }, basic)
  t.equal(refreshed.statusCode, 200, 'the refresh token refused with hostile scopes and audiences still refreshes', { body: refreshed.body })
  const again = await postForm(app, '/oauth/token', cc, basic)
  t.equal(again.statusCode, 200, 'the known client still gets tokens')
  for (const id of hostileIds) {
    const res = await postForm(app, '/oauth/token', cc, basicOf(id, hostileSecret))
    t.equal(res.statusCode, 200, `a client registered as ${JSON.stringify(id)} gets tokens`, { body: res.body })
    t.equal(decodeJwt(String(parseBody(res.body).access_token)).payload.sub, id, 'issued to exactly that id')
  }
  await assertUntouched(t, app, databaseUrl, String(parseBody(again.body).access_token))

  if (redis === undefined) {
    t.comment('no Redis server: the Redis checks are skipped (the store is in the database)')
    return
  }
  t.equal(await redis.get(`${redisPrefix}attacks:sentinel`), 'still here', 'Redis was not flushed: a key set before the attacks is still there')
  // Positive control: the hostile ids' cache entries are found, under the
  // prefix. Cached afresh first: the entry made when the attacks began may
  // have outlived CLIENT_CACHE_TTL by now on a slow machine.
  await app.clients.forget(hostileIds[0] ?? '')
  t.equal((await postForm(app, '/oauth/token', cc, basicOf(hostileIds[0] ?? '', hostileSecret))).statusCode, 200)
  const cached = await scanKeys(redis, `${globEscape(redisPrefix)}*${marker}*`)
  t.ok(cached.includes(`${redisPrefix}${clientCacheKey(hostileIds[0] ?? '')}`), 'control: the scan finds the cache entry of a hostile client id, under the prefix')
  const created: string[] = []
  for (const pattern of patterns) {
    for (const key of await scanKeys(redis, pattern)) if (!before.has(key)) created.push(key)
  }
  // A key under another test's prefix is that test's app at work (test files
  // run side by side and send the same strings); a key that escaped its
  // prefix would be under none. This run's marked keys must be under its own.
  const escaped = created.filter((key) => key.includes(marker) ? !key.startsWith(redisPrefix) : !TEST_PREFIX.test(key))
  t.strictSame(escaped, [], 'no key holding an injected string was created outside the test\'s prefix')
}
