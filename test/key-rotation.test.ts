// Stored signing keys (KEY_STORE=database) rotate by themselves without a
// gateway ever refusing a token: the life cycle driven through days on a
// controlled clock, with two instances sharing one database and a verifier
// that caches the JWKS for two hours and never looks again before that, as
// AWS API Gateway may.
import { randomBytes } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { compactVerify, importJWK, type JWK } from 'jose'
import type { FastifyInstance } from 'fastify'
import Fastify from 'fastify'
import serviceApp, { options } from '../app.ts'
import { loadConfig } from '../plugins/config.ts'
import { POLL_MS } from '../signing-keys/ring.ts'
import { KEK_NEEDED, keyPolicy, MAX_STORED_KEYS, retireKey, rotateKeys } from '../signing-keys/stored.ts'
import { build, buildLogged, testEnv } from './helpers/app.ts'
import { createDatabase, insertClient, sql } from './helpers/databases.ts'
import { injectAdmin, issueTokens } from './helpers/http.ts'
import { needs } from './helpers/servers.ts'
import { decodeJwt, generateRsaKeyPair } from './helpers/jwt.ts'
import { createClient, migratedDataDir, start, testDataDir, WARN } from './embedded/apps.ts'

const MINUTE = 60_000
const HOUR = 60 * MINUTE
const SECRET = 'rotation-secret-0123456789'
const KEK = randomBytes(32).toString('base64')
// Scaled for a test that runs in seconds: an 8-hour rotation instead of 30 days,
// the default publish-ahead time and the gateway's real cache.
const SETTINGS = { KEY_STORE: 'database', KEY_ENCRYPTION_KEY: KEK, KEY_PUBLISH_AHEAD: '3h', KEY_ROTATION_INTERVAL: '8h', JWT_EXPIRY: '1h', RATE_LIMIT_DEFAULT: '100000' }
const PUBLISH_AHEAD = 3 * HOUR
const TOKEN_LIFETIME = HOUR
const GATEWAY_CACHE = 2 * HOUR
const UNSET = ['JWT_PRIVATE_KEY', 'JWT_PUBLIC_KEY']

async function jwksOf (app: FastifyInstance): Promise<JWK[]> {
  const res = await app.inject('/.well-known/jwks.json')
  return (res.json() as { keys: JWK[] }).keys
}

/**
 * A verifier that fetches the JWKS, then trusts that copy for two hours
 * whatever it meets. A token's signature is checked against the copy's key
 * the first time; a key's material never changes under its kid (the kid is
 * its thumbprint), so later presentations need the kid in the copy.
 */
function cachingGateway (): { accepts: (token: string, now: number, fetch: () => Promise<JWK[]>) => Promise<boolean>, fetches: number } {
  let cached: { at: number, keys: Map<string, JWK> } | undefined
  const verified = new Set<string>()
  const gateway = {
    fetches: 0,
    async accepts (token: string, now: number, fetch: () => Promise<JWK[]>): Promise<boolean> {
      if (cached === undefined || now - cached.at >= GATEWAY_CACHE) {
        cached = { at: now, keys: new Map((await fetch()).map((jwk) => [jwk.kid as string, jwk])) }
        gateway.fetches++
      }
      const kid = decodeJwt(token).header.kid as string
      const jwk = cached.keys.get(kid)
      if (jwk === undefined) return false
      if (verified.has(token)) return true
      try {
        await compactVerify(token, await importJWK(jwk, jwk.alg))
        verified.add(token)
        return true
      } catch {
        return false
      }
    }
  }
  return gateway
}

interface Issued {
  token: string
  kid: string
  expires: number
}

/** What the run saw: per kid, when it was first published, first signed, last expires, and when it left. */
class Observations {
  readonly published = new Map<string, number>()
  readonly signed = new Map<string, number>()
  readonly lastExpiry = new Map<string, number>()
  readonly left = new Map<string, number>()
  readonly early: string[] = []

  sawJwks (kids: string[], now: number): void {
    for (const kid of kids) if (!this.published.has(kid)) this.published.set(kid, now)
    for (const kid of this.published.keys()) {
      if (kids.includes(kid) || this.left.has(kid)) continue
      this.left.set(kid, now)
      const expiry = this.lastExpiry.get(kid) ?? 0
      if (now < expiry) this.early.push(`${kid} left at ${now}, its last token expires at ${expiry}`)
    }
  }

  sawToken (issued: Issued, now: number): void {
    if (!this.signed.has(issued.kid)) this.signed.set(issued.kid, now)
    this.lastExpiry.set(issued.kid, Math.max(this.lastExpiry.get(issued.kid) ?? 0, issued.expires))
  }
}

// Two instances need a database server: the embedded one admits one process.
t.test('two instances rotate through 28 hours on a controlled clock: a caching gateway never refuses a token', { skip: needs.postgres }, async (t) => {
  let now = Date.now()
  const clock = (): number => now
  const databaseUrl = await createDatabase(t)
  await insertClient(databaseUrl, { id: 'svc-rotation', secret: SECRET })
  const options = { databaseUrl, env: SETTINGS, unset: UNSET, clock, keyPollMs: 0 }
  const a = await build(t, options)
  const b = await build(t, { ...options, redisPrefix: a.redisPrefix })
  const instances = [a.app, b.app]
  const firstKid = a.app.keys.kid
  t.equal(b.app.keys.kid, firstKid, 'both instances sign with the one key made at the first start')

  const gateway = cachingGateway()
  const seen = new Observations()
  const live: Issued[] = []
  let refused = 0
  const STEP = 2 * MINUTE
  const end = now + 28 * HOUR
  for (let step = 1; now < end; step++) {
    now += STEP
    // Instance a looks at every step, b every other one: b lags by up to one
    // step (the poll's second, stretched), and sometimes both look at once.
    await Promise.all([a.app.keyRing?.refresh(), step % 2 === 0 ? b.app.keyRing?.refresh() : undefined])
    for (const app of instances) seen.sawJwks((await jwksOf(app)).map((jwk) => jwk.kid as string), now)

    const issuer = instances[step % 2] as FastifyInstance
    const token = (await issueTokens(issuer, 'svc-rotation', SECRET)).access_token
    const issued = { token, kid: decodeJwt(token).header.kid as string, expires: now + TOKEN_LIFETIME }
    seen.sawToken(issued, now)
    live.push(issued)
    while (live.length > 0 && (live[0] as Issued).expires <= now) live.shift()
    // Every token still valid is presented again: the gateway's copy of the
    // JWKS must hold the key of each until the token expires.
    for (const presented of live) {
      const source = instances[(step + 1) % 2] as FastifyInstance
      if (!(await gateway.accepts(presented.token, now, async () => await jwksOf(source)))) refused++
    }
  }

  t.equal(refused, 0, 'the gateway refused no token')
  t.strictSame(seen.early, [], 'no key left the JWKS before the last token it signed had expired')
  const signers = [...seen.signed.keys()]
  t.ok(signers.length >= 4, `the keys rotated at least three times (${signers.length} signing keys)`)
  for (const kid of signers.filter((kid) => kid !== firstKid)) {
    const ahead = (seen.signed.get(kid) ?? 0) - (seen.published.get(kid) ?? Infinity)
    t.ok(ahead >= PUBLISH_AHEAD, `${kid.slice(0, 8)} was published ${ahead / HOUR} h before it signed (at least 3 h)`)
  }
  const retiredAndGone = signers.filter((kid) => seen.left.has(kid))
  t.ok(retiredAndGone.length >= 2, `retired keys left the JWKS once their tokens expired (${retiredAndGone.length})`)
  t.ok(gateway.fetches <= 15, `the gateway fetched the JWKS only when its copy was two hours old (${gateway.fetches} times in 28 h)`)

  const events = await sql<{ kid: string, action: string, actor: string }>(databaseUrl, 'SELECT kid, action, actor FROM signing_key_events ORDER BY id')
  const created = events.filter((event) => event.action === 'created')
  t.equal(new Set(created.map((event) => event.kid)).size, created.length, 'each key was made once, by one instance')
  t.equal(created.length, seen.published.size, 'every key made was published')
  t.ok(events.every((event) => event.actor === 'scheduler'), 'the scheduler took every step')
  for (const action of ['activated', 'retired', 'removed']) t.ok(events.some((event) => event.action === action), `the log has ${action} steps`)
})

t.test('a change made elsewhere reaches an instance through its own poll, JWKS, discovery and signing key together', { skip: needs.postgres }, async (t) => {
  const databaseUrl = await createDatabase(t)
  await insertClient(databaseUrl, { id: 'svc-rotation', secret: SECRET })
  const a = await build(t, { databaseUrl, env: SETTINGS, unset: UNSET, keyPollMs: 0 })
  // b polls as the service does (POLL_MS); nothing here asks it to look.
  const b = await build(t, { databaseUrl, redisPrefix: a.redisPrefix, env: SETTINGS, unset: UNSET })
  const before = b.app.keys.kid
  const config = a.config
  const rotated = await rotateKeys(a.app.db, config.keyEncryptionKey as Buffer, keyPolicy(config), Date.now(), { immediately: true, algorithm: 'ES256', actor: 'test' })
  const started = Date.now()
  let seenAfter: number | undefined
  while (Date.now() - started < 10_000) {
    const jwks = await jwksOf(b.app)
    if (jwks[0]?.kid === rotated.kid) {
      seenAfter = Date.now() - started
      break
    }
    await sleep(20)
  }
  t.not(seenAfter, undefined, `b serves the new key first in its JWKS by itself (after ${String(seenAfter)} ms; it reads every ${POLL_MS} ms)`)
  const discovery = (await b.app.inject('/.well-known/openid-configuration')).json() as { access_token_signing_alg_values_supported: string[] }
  t.same(discovery.access_token_signing_alg_values_supported, ['ES256', 'RS256'], 'its discovery document names the new algorithm first')
  const token = (await issueTokens(b.app, 'svc-rotation', SECRET)).access_token
  t.same([decodeJwt(token).header.kid, decodeJwt(token).header.alg], [rotated.kid, 'ES256'], 'and it signs with the new key')
  t.ok((await jwksOf(b.app)).some((jwk) => jwk.kid === before), 'the retired key stays published')
})

t.test('a new key-encryption key: KEY_ENCRYPTION_KEY_PREVIOUS lets the start seal every key again, after which the old one opens nothing', async (t) => {
  const databaseUrl = await createDatabase(t)
  const oldKek = KEK
  const newKek = randomBytes(32).toString('base64')
  const first = await build(t, { databaseUrl, env: SETTINGS, unset: UNSET, keyPollMs: 0 })
  const kid = first.app.keys.kid
  const next = (await rotateKeys(first.app.db, first.config.keyEncryptionKey as Buffer, keyPolicy(first.config), Date.now(), { immediately: false, actor: 'test' })).kid
  await first.app.close()
  const rewrappedKids = async (): Promise<string[]> =>
    (await sql<{ kid: string }>(databaseUrl, "SELECT kid FROM signing_key_events WHERE action = 'rewrapped' ORDER BY id")).map((row) => row.kid)

  const moving = await build(t, { databaseUrl, env: { ...SETTINGS, KEY_ENCRYPTION_KEY: newKek, KEY_ENCRYPTION_KEY_PREVIOUS: oldKek }, unset: UNSET, keyPollMs: 0 })
  t.equal(moving.app.keys.kid, kid, 'the same key signs')
  t.equal((await rewrappedKids()).length, 2, 'both stored keys were sealed again, each recorded')

  // A key made meanwhile by an instance still on the old key-encryption key.
  await retireKey(moving.app.db, next, Date.now(), { immediately: false, actor: 'test' })
  await rotateKeys(moving.app.db, Buffer.from(oldKek, 'base64'), keyPolicy(moving.config), Date.now(), { immediately: true, actor: 'test' })
  await moving.app.keyRing?.refresh()
  t.equal((await rewrappedKids()).length, 3, 'a key sealed with the previous one is sealed again once read')
  const signing = moving.app.keys.kid
  await moving.app.close()

  const settled = await build(t, { databaseUrl, env: { ...SETTINGS, KEY_ENCRYPTION_KEY: newKek }, unset: UNSET, keyPollMs: 0 })
  t.equal(settled.app.keys.kid, signing, 'the new key-encryption key alone opens every key')
  await settled.app.close()

  const config = loadConfig(testEnv(databaseUrl, 'unused:', { ...SETTINGS, KEY_ENCRYPTION_KEY: oldKek }))
  const instance = Fastify(options)
  t.teardown(async () => await instance.close())
  await t.rejects(async () => { await instance.register(serviceApp, { config }).ready() }, { message: /^KEY_ENCRYPTION_KEY: does not decrypt the signing key/ }, 'the old one alone opens nothing')
})

t.test('a rotation without a key-encryption key makes nothing; rotations at once, one after another, stop at the bound of stored keys', async (t) => {
  const { app, config } = await build(t, { env: SETTINGS, unset: UNSET, keyPollMs: 0 })
  const rotate = async (): Promise<unknown> => await rotateKeys(app.db, config.keyEncryptionKey as Buffer, keyPolicy(config), Date.now(), { immediately: true, algorithm: 'ES256', actor: 'test' })
  await t.rejects(rotateKeys(app.db, undefined, keyPolicy(config), Date.now(), { immediately: true, actor: 'test' }), { message: KEK_NEEDED },
    'without a key-encryption key no key is made')
  for (let stored = 1; stored < MAX_STORED_KEYS; stored++) await rotate()
  await t.rejects(rotate(), { message: `${MAX_STORED_KEYS} keys are stored, the most the JWKS publishes; retired keys leave once their tokens have expired (or retire one at once: \`keys retire <kid> --now\`, or {"now":true})` })
  await app.keyRing?.refresh()
  t.equal((await jwksOf(app)).length, MAX_STORED_KEYS, 'the JWKS holds the bound, no more')
})

t.test('an instance that cannot read the keys for longer than the removal margin stops signing, and recovers', async (t) => {
  let now = Date.now()
  const databaseUrl = await createDatabase(t)
  await insertClient(databaseUrl, { id: 'svc-rotation', secret: SECRET })
  const { app } = await build(t, { databaseUrl, env: SETTINGS, unset: UNSET, clock: () => now, keyPollMs: 0 })
  t.equal((await issueTokens(app, 'svc-rotation', SECRET)).token_type, 'Bearer', 'a fresh view signs')
  now += 6 * MINUTE
  t.equal((await issueTokens(app, 'svc-rotation', SECRET)).token_type, 'Bearer', 'a view left unread (a paused process) is read again before the request')

  // The keys cannot be read (as when this instance cannot reach the database).
  await sql(databaseUrl, 'ALTER TABLE signing_keys RENAME TO signing_keys_away')
  t.teardown(async () => await sql(databaseUrl, 'ALTER TABLE IF EXISTS signing_keys_away RENAME TO signing_keys'))
  now += 4 * MINUTE
  await app.keyRing?.refresh()
  t.equal((await issueTokens(app, 'svc-rotation', SECRET)).token_type, 'Bearer', 'within the margin, the last view signs')
  now += 2 * MINUTE
  await app.keyRing?.refresh()
  const refused = await app.inject({ method: 'POST', url: '/oauth/token', headers: { 'content-type': 'application/x-www-form-urlencoded' }, payload: `grant_type=client_credentials&client_id=svc-rotation&client_secret=${SECRET}` })
  t.equal(refused.statusCode, 503, 'past the margin: 503, not a token signed with a key the others may have removed')
  t.equal((await app.inject('/.well-known/jwks.json')).statusCode, 200, 'the JWKS is still served')
  const ready = await injectAdmin(app, '/ready')
  t.equal(ready.statusCode, 503, '/ready says the instance is not ready')
  t.equal(ready.json().signing_key, 'stale', 'and why')

  await sql(databaseUrl, 'ALTER TABLE signing_keys_away RENAME TO signing_keys')
  await app.keyRing?.refresh()
  t.equal((await issueTokens(app, 'svc-rotation', SECRET)).token_type, 'Bearer', 'signing again once the keys are read')
})

t.test('the settings\' public keys, and a configured key that is not stored, are published beside the stored keys', { skip: needs.postgres }, async (t) => {
  const databaseUrl = await createDatabase(t)
  const first = await build(t, { databaseUrl, env: SETTINGS, unset: UNSET })
  const stored = first.app.keys.kid
  await first.app.close()
  const extra = generateRsaKeyPair()
  const configured = generateRsaKeyPair()
  const { instance, lines } = await buildLogged(t, {
    DATABASE_URL: databaseUrl, ...SETTINGS, JWT_PRIVATE_KEY: configured.privateKey, JWT_ADDITIONAL_PUBLIC_KEYS: extra.publicKey
  }, ['JWT_PUBLIC_KEY'])
  t.equal(instance.keys.kid, stored, 'the stored key signs')
  const kids = (await jwksOf(instance)).map((jwk) => jwk.kid)
  t.equal(kids[0], stored, 'listed first')
  t.equal(kids.length, 3, 'beside it: the configured key and the additional one')
  t.ok(lines.some((line) => line.level === WARN && /not a stored key/.test(String(line.msg))), 'a warning says the configured key does not sign')
})

t.test('a database without the signing_keys table stops the start with one line saying what to run', async (t) => {
  const databaseUrl = await createDatabase(t)
  await sql(databaseUrl, 'DROP TABLE signing_keys')
  const config = loadConfig(testEnv(databaseUrl, 'unused:', { ...SETTINGS, MIGRATE_ON_START: 'false' }))
  const instance = Fastify(options)
  t.teardown(async () => await instance.close())
  await t.rejects(async () => { await instance.register(serviceApp, { config }).ready() },
    { message: /^KEY_STORE: is database, but the database has no signing_keys table: apply the migrations/ })
})

t.test('embedded database: one instance rotates through 20 hours', async (t) => {
  let now = Date.now()
  testDataDir(t)
  const app = await start(t, await migratedDataDir(t), undefined, { ...SETTINGS, LOG_LEVEL: 'silent' }, { clock: () => now, keyPollMs: 0 })
  const client = await createClient(app, 'svc-embedded')
  const gateway = cachingGateway()
  const seen = new Observations()
  const live: Issued[] = []
  let refused = 0
  const end = now + 20 * HOUR
  while (now < end) {
    now += 5 * MINUTE
    await app.keyRing?.refresh()
    seen.sawJwks((await jwksOf(app)).map((jwk) => jwk.kid as string), now)
    const token = (await issueTokens(app, client.id, client.secret)).access_token
    const issued = { token, kid: decodeJwt(token).header.kid as string, expires: now + TOKEN_LIFETIME }
    seen.sawToken(issued, now)
    live.push(issued)
    while (live.length > 0 && (live[0] as Issued).expires <= now) live.shift()
    for (const presented of live) if (!(await gateway.accepts(presented.token, now, async () => await jwksOf(app)))) refused++
  }
  t.equal(refused, 0, 'the gateway refused no token')
  t.strictSame(seen.early, [], 'no key left before its last token expired')
  t.ok(seen.signed.size >= 3, `the keys rotated (${seen.signed.size} signing keys)`)
  t.ok(seen.left.size >= 1, `a retired key left once its tokens had expired (${seen.left.size})`)
  const { rows } = await app.db.query<{ state: string }>('SELECT state FROM signing_keys ORDER BY state')
  t.ok(rows.filter((row) => row.state === 'current').length === 1, 'one current key in the embedded database')
})
