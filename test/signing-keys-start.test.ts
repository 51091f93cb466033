// The first starts of KEY_STORE=database: the configured key is stored with
// its kid, or one is made (once, however many instances start together); a
// key-encryption key that does not open the stored keys stops the process
// with one line and changes nothing.
import { createPublicKey, randomBytes, verify as verifySignature, type JsonWebKey } from 'node:crypto'
import { chmodSync } from 'node:fs'
import { cp, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test, type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { publicJwk } from '../plugins/keys.ts'
import { PGDATA } from '../storage/data-dir.ts'
import { embeddedTemplate } from './backends.ts'
import { createClient, jwksKids, migratedDataDir, start } from './embedded/apps.ts'
import { build, createDatabase, createRedisPrefix, decodeJwt, freePort, insertClient, issueTokens, ServerProcess, sql, testEnv, testKeys, verify } from './helper.ts'

const kekText = (): string => randomBytes(32).toString('base64')
const databaseMode = (kek: string): Record<string, string> => ({ KEY_STORE: 'database', KEY_ENCRYPTION_KEY: kek })
const NO_SETTINGS_KEY = ['JWT_PRIVATE_KEY', 'JWT_PUBLIC_KEY']

interface Jwks { keys: Array<JsonWebKey & { kid: string, alg: string }> }

async function jwks (app: FastifyInstance): Promise<Jwks> {
  return (await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })).json() as Jwks
}

/** Whether `token` verifies with the key of the JWKS its header names, as a gateway checks it. */
function verifiesWithJwks (token: string, set: Jwks): boolean {
  const kid = decodeJwt(token).header.kid
  const jwk = set.keys.find((key) => key.kid === kid)
  if (jwk === undefined) return false
  const [header = '', payload = '', signature = ''] = token.split('.')
  return verifySignature('sha256', Buffer.from(`${header}.${payload}`), createPublicKey({ key: jwk, format: 'jwk' }), Buffer.from(signature, 'base64url'))
}

async function tokenOf (app: FastifyInstance): Promise<string> {
  return (await issueTokens(app, 'keys-client', 'keys-client-secret')).access_token
}

async function assertValid (t: Test, app: FastifyInstance, token: string, what: string): Promise<void> {
  const res = await verify(app, token)
  t.match(res.json(), { valid: true }, `${what}: /oauth/verify says valid`, { body: res.body })
  t.ok(verifiesWithJwks(token, await jwks(app)), `${what}: verifies with the published JWKS`)
}

/** The stored keys as they are in the table, sealed parts included. */
async function storedRows (databaseUrl: string): Promise<string> {
  const keys = await sql(databaseUrl, "SELECT kid, state, encode(private_key, 'hex') AS sealed, activate_after, retired_at FROM signing_keys ORDER BY kid")
  const events = await sql(databaseUrl, 'SELECT id, kid, action FROM signing_key_events ORDER BY id')
  return JSON.stringify({ keys, events })
}

test('the first start in database mode stores JWT_PRIVATE_KEY: same kid, earlier tokens valid; later starts need no key', async (t) => {
  const databaseUrl = await createDatabase(t)
  const redisPrefix = createRedisPrefix(t)
  await insertClient(databaseUrl, { id: 'keys-client', secret: 'keys-client-secret' })
  const settingsApp = (await build(t, { databaseUrl, redisPrefix })).app
  const settingsKid = settingsApp.keys.kid
  const before = await tokenOf(settingsApp)
  await settingsApp.close()

  const kek = kekText()
  const imported = (await build(t, { databaseUrl, redisPrefix, env: databaseMode(kek), keyPollMs: 0 })).app
  t.same((await jwks(imported)).keys.map((key) => key.kid), [settingsKid], 'the JWKS publishes the settings key, by its kid, and nothing else')
  t.equal(decodeJwt(await tokenOf(imported)).header.kid, settingsKid, 'new tokens are signed with it')
  await assertValid(t, imported, before, 'a token signed in settings mode')
  const events = await sql<{ kid: string, action: string }>(databaseUrl, 'SELECT kid, action FROM signing_key_events ORDER BY id')
  t.same(events, [{ kid: settingsKid, action: 'imported' }, { kid: settingsKid, action: 'activated' }], 'the audit log: imported, then activated')
  await imported.close()

  const stored = (await build(t, { databaseUrl, redisPrefix, env: databaseMode(kek), unset: NO_SETTINGS_KEY, keyPollMs: 0 })).app
  t.equal(stored.keys.kid, settingsKid, 'without JWT_PRIVATE_KEY, the stored key signs')
  const after = await tokenOf(stored)
  t.equal(decodeJwt(after).header.kid, settingsKid)
  await assertValid(t, stored, after, 'a token of the stored key')
  await assertValid(t, stored, before, 'the token signed in settings mode, still')
  t.equal((await sql(databaseUrl, 'SELECT kid FROM signing_keys')).length, 1, 'one key stored')
})

test('a first start without a key makes one; two instances starting together end with one key both sign with', async (t) => {
  const databaseUrl = await createDatabase(t)
  const redisPrefix = createRedisPrefix(t)
  await insertClient(databaseUrl, { id: 'keys-client', secret: 'keys-client-secret' })
  const options = { databaseUrl, redisPrefix, env: databaseMode(kekText()), unset: NO_SETTINGS_KEY, keyPollMs: 0 }
  const [one, two] = await Promise.all([build(t, options), build(t, options)])
  const stored = await sql<{ kid: string, state: string }>(databaseUrl, 'SELECT kid, state FROM signing_keys')
  t.equal(stored.length, 1, 'exactly one key stored')
  t.equal(stored[0]?.state, 'current')
  const kid = stored[0]?.kid
  t.not(kid, publicJwk(createPublicKey(testKeys.publicKey), 'RS256').kid, 'a new key, not the test key')
  const events = await sql<{ action: string }>(databaseUrl, "SELECT action FROM signing_key_events WHERE action IN ('created', 'imported')")
  t.same(events, [{ action: 'created' }], "one 'created' event, no import")
  for (const [name, instance] of [['first', one.app], ['second', two.app]] as const) {
    const token = await tokenOf(instance)
    t.equal(decodeJwt(token).header.kid, kid, `the ${name} instance signs with the stored key`)
    t.same((await jwks(instance)).keys.map((key) => key.kid), [kid], `the ${name} instance publishes it alone`)
    await assertValid(t, instance === one.app ? two.app : one.app, token, `the ${name} instance's token, on the other`)
  }
})

/** Makes the stored keys look as old as a rotation being due, so that a start would take a step if it could. */
async function ageKeys (databaseUrl: string): Promise<void> {
  await sql(databaseUrl, "UPDATE signing_keys SET created_at = created_at - interval '40 days', activated_at = activated_at - interval '40 days'")
}

/** server.ts with `env`: exits 1 with one line naming KEY_ENCRYPTION_KEY and no secret; the stored keys unchanged. */
async function assertLostKek (t: Test, databaseUrl: string, env: Record<string, string>, secrets: string[]): Promise<void> {
  const before = await storedRows(databaseUrl)
  const server = new ServerProcess(t, { ...env, SERVER_PORT: String(await freePort()), SERVER_HOST: '127.0.0.1', LOG_LEVEL: 'info' })
  const exit = await server.exitWithin(60_000)
  t.strictSame(exit, { code: 1, signal: null }, 'exit code 1', { stderr: server.stderr })
  t.match(server.stderr, /^session-service: KEY_ENCRYPTION_KEY: [^\n]+\n$/, `exactly one line on stderr, naming KEY_ENCRYPTION_KEY (${server.stderr})`)
  for (const secret of secrets) t.notOk(server.output.includes(secret), 'no secret in the output')
  t.notMatch(server.output, /PRIVATE KEY/, 'no PEM in the output')
  t.equal(await storedRows(databaseUrl), before, 'the stored keys and their history are unchanged: no new key, no step taken')
}

test('another KEY_ENCRYPTION_KEY stops server.ts with one line, and no key is made or changed', async (t) => {
  const databaseUrl = await createDatabase(t)
  const redisPrefix = createRedisPrefix(t)
  const kek = kekText()
  const first = await build(t, { databaseUrl, redisPrefix, env: databaseMode(kek), unset: NO_SETTINGS_KEY, keyPollMs: 0 })
  await first.app.close()
  await ageKeys(databaseUrl)
  const other = kekText()
  const env = testEnv(databaseUrl, redisPrefix, databaseMode(other))
  for (const name of NO_SETTINGS_KEY) Reflect.deleteProperty(env, name)
  await t.test('without a configured key', async (t) => await assertLostKek(t, databaseUrl, env, [kek, other]))
  // A configured key is not stored either while stored keys exist.
  await t.test('with JWT_PRIVATE_KEY set', async (t) =>
    await assertLostKek(t, databaseUrl, { ...env, JWT_PRIVATE_KEY: testKeys.privateKey }, [kek, other]))
})

/** An embedded database in a short folder of its own (the control socket's path is limited), migrated. */
async function embeddedDatabaseDir (t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ss-kek-'))
  chmodSync(dir, 0o700)
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  await cp(await embeddedTemplate(), join(dir, PGDATA), { recursive: true })
  return dir
}

test('embedded: another KEY_ENCRYPTION_KEY stops server.ts with one line, and no key is made or changed', async (t) => {
  const dir = await embeddedDatabaseDir(t)
  const databaseUrl = `embedded:${dir}`
  const kek = kekText()
  const first = await build(t, { databaseUrl, env: databaseMode(kek), unset: NO_SETTINGS_KEY, keyPollMs: 0 })
  await first.app.close()
  await ageKeys(databaseUrl)
  const other = kekText()
  await assertLostKek(t, databaseUrl, { DATA_DIR: dir, ...databaseMode(other) }, [kek, other])
})

test('embedded: a data directory used in settings mode, switched to KEY_STORE=database, stores its saved key', async (t) => {
  const dir = await migratedDataDir(t)
  const settingsApp = await start(t, dir)
  const savedKid = settingsApp.keys.kid
  const client = await createClient(settingsApp, 'keys-client')
  const before = await tokenOf(settingsApp)
  t.equal(client.id, 'keys-client')
  await settingsApp.close()

  const stored = await start(t, dir, undefined, databaseMode(kekText()))
  t.same(await jwksKids(stored), [savedKid], 'the JWKS publishes the saved key, by its kid')
  t.equal(stored.keys.kid, savedKid, 'and it signs')
  await assertValid(t, stored, before, 'a token signed in settings mode')
  const { rows } = await stored.db.query<{ kid: string, action: string }>("SELECT kid, action FROM signing_key_events WHERE action IN ('created', 'imported')")
  t.same(rows, [{ kid: savedKid, action: 'imported' }], 'imported, not created')
})
