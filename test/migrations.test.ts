import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'tap'
import bcrypt from 'bcryptjs'
import { serverDatabase, type Database } from '../storage/database.ts'
import { clientsRepository } from '../storage/clients.ts'
import { applyMigrations, MIGRATIONS_DIR, type MigrationLog } from '../plugins/migrations.ts'
import { basicAuth, build, createDatabase, freePort, needs, runEntry, type RunResult, insertClient, issueTokens, sql, tokenRequest, verify } from './helper.ts'

const MIGRATION_FILES = readdirSync(MIGRATIONS_DIR).filter((name) => /^\d+_[\w-]+\.sql$/.test(name)).sort()

// A log that keeps what it is told, for applyMigrations.
function memoryLog (): MigrationLog & { entries: Array<{ obj: object, msg: string }> } {
  const entries: Array<{ obj: object, msg: string }> = []
  return { entries, info: (obj, msg) => { entries.push({ obj, msg }) } }
}

function pool (t: { teardown: (fn: () => unknown) => void }, databaseUrl: string): Database {
  const db = serverDatabase({ connectionString: databaseUrl, max: 2 })
  t.teardown(async () => await db.close())
  return db
}

async function tableExists (databaseUrl: string, table: string): Promise<boolean> {
  const rows = await sql<{ exists: boolean }>(databaseUrl, 'SELECT to_regclass($1) IS NOT NULL AS exists', [`public.${table}`])
  return rows[0]?.exists === true
}

async function recordedMigrations (databaseUrl: string): Promise<string[]> {
  const rows = await sql<{ name: string }>(databaseUrl, 'SELECT name FROM schema_migrations ORDER BY name')
  return rows.map((row) => row.name)
}

// The migrations folder copied into a fixture folder, plus extra files.
function migrationsCopy (t: { testdir: (fixture: Record<string, string>) => string }, extra: Record<string, string> = {}): string {
  const files: Record<string, string> = {}
  for (const name of MIGRATION_FILES) files[name] = readFileSync(join(MIGRATIONS_DIR, name), 'utf8')
  return t.testdir({ ...files, ...extra })
}

// Runs cli/migrate.ts with exactly `env` (plus the loader settings); killed after timeoutMs.
async function runMigrate (env: Record<string, string>, timeoutMs = 20_000): Promise<RunResult> {
  return await runEntry('cli/migrate.ts', [], { env, timeoutMs })
}

test('two concurrent runs on a fresh database apply each file once', { skip: needs.postgres }, async (t) => {
  const databaseUrl = await createDatabase(t, { empty: true })
  const [first, second] = await Promise.all([
    applyMigrations(pool(t, databaseUrl), memoryLog()),
    applyMigrations(pool(t, databaseUrl), memoryLog())
  ])
  t.strictSame([...first ?? [], ...second ?? []].sort(), MIGRATION_FILES, 'every file applied by exactly one of the runs')
  const counts = await sql<{ name: string, count: string }>(databaseUrl, 'SELECT name, count(*) AS count FROM schema_migrations GROUP BY name ORDER BY name')
  t.strictSame(counts, MIGRATION_FILES.map((name) => ({ name, count: '1' })))
  t.ok(await tableExists(databaseUrl, 'clients'), 'clients table exists')

  const log = memoryLog()
  t.strictSame(await applyMigrations(pool(t, databaseUrl), log), [], 'a further run applies nothing')
  t.strictSame(log.entries, [], 'and logs nothing applied')
})

test('a run logs each file it applies', { skip: needs.postgres }, async (t) => {
  const databaseUrl = await createDatabase(t, { empty: true })
  const log = memoryLog()
  t.strictSame(await applyMigrations(pool(t, databaseUrl), log), MIGRATION_FILES)
  t.strictSame(log.entries.map((entry) => entry.obj), MIGRATION_FILES.map((migration) => ({ migration })))
})

test('a recorded migration whose content changed is refused', { skip: needs.postgres }, async (t) => {
  const databaseUrl = await createDatabase(t, { empty: true })
  const dir = migrationsCopy(t)
  const db = pool(t, databaseUrl)
  const name = MIGRATION_FILES[0] ?? '001_clients.sql'
  t.strictSame(await applyMigrations(db, memoryLog(), dir), MIGRATION_FILES)
  writeFileSync(join(dir, name), readFileSync(join(dir, name), 'utf8') + '\n-- edited afterwards\n')
  await t.rejects(applyMigrations(db, memoryLog(), dir), new RegExp(`${name.replace('.', '\\.')}.*changed`))
  t.strictSame(await recordedMigrations(databaseUrl), MIGRATION_FILES, 'nothing else recorded')
})

test('a failing migration is not recorded and earlier files stay applied', { skip: needs.postgres }, async (t) => {
  const databaseUrl = await createDatabase(t, { empty: true })
  const broken = '999_broken.sql'
  const dir = migrationsCopy(t, {
    [broken]: 'CREATE TABLE half_done (id integer);\nSELEC this is not sql;\n'
  })
  const db = pool(t, databaseUrl)
  await t.rejects(applyMigrations(db, memoryLog(), dir), /999_broken\.sql/)
  t.strictSame(await recordedMigrations(databaseUrl), MIGRATION_FILES, 'the earlier files are recorded, the broken one is not')
  t.ok(await tableExists(databaseUrl, 'clients'), 'the earlier files stay applied')
  t.notOk(await tableExists(databaseUrl, 'half_done'), 'the broken file is rolled back as a whole')

  await t.rejects(applyMigrations(db, memoryLog(), dir), /999_broken\.sql/, 'it is tried again on the next run')
  writeFileSync(join(dir, broken), 'CREATE TABLE half_done (id integer);\n')
  t.strictSame(await applyMigrations(db, memoryLog(), dir), [broken], 'once fixed, it is applied')
  t.ok(await tableExists(databaseUrl, 'half_done'))
})

test('006 on a database with clients: they keep working, and a plain INSERT too; then they rotate with overlap', { skip: needs.postgres }, async (t) => {
  const databaseUrl = await createDatabase(t, { empty: true })
  const db = pool(t, databaseUrl)
  const before006 = MIGRATION_FILES.filter((name) => name < '006')
  const earlier: Record<string, string> = {}
  for (const name of before006) earlier[name] = readFileSync(join(MIGRATIONS_DIR, name), 'utf8')
  t.strictSame(await applyMigrations(db, memoryLog(), t.testdir(earlier)), before006)
  await sql(databaseUrl, 'INSERT INTO clients (client_id, client_secret_hash, rate_limit) VALUES ($1, $2, $3)', ['svc-old', await bcrypt.hash('old-client-secret', 10), 10])
  await sql(databaseUrl, 'INSERT INTO clients (client_id, jwks_uri) VALUES ($1, $2)', ['svc-keys', 'https://keys.example/jwks.json'])

  t.strictSame(await applyMigrations(db, memoryLog()), MIGRATION_FILES.filter((name) => name >= '006'), '006 and later applied')
  await sql(databaseUrl, 'INSERT INTO clients (client_id, client_secret_hash, rate_limit) VALUES ($1, $2, $3)', ['svc-new', await bcrypt.hash('new-client-secret', 10), null])
  t.strictSame(await sql(databaseUrl, 'SELECT client_id, previous_secret_hash, previous_secret_expires_at FROM clients ORDER BY client_id'), [
    { client_id: 'svc-keys', previous_secret_hash: null, previous_secret_expires_at: null },
    { client_id: 'svc-new', previous_secret_hash: null, previous_secret_expires_at: null },
    { client_id: 'svc-old', previous_secret_hash: null, previous_secret_expires_at: null }
  ], 'every client, old and new, without a previous secret')
  t.strictSame(await sql(databaseUrl, 'SELECT count(*)::int AS events FROM client_events'), [{ events: 0 }], 'no history is invented for existing clients')
  await t.rejects(sql(databaseUrl, "UPDATE clients SET previous_secret_hash = client_secret_hash WHERE client_id = 'svc-old'"), /clients_previous_secret_expires/, 'a previous hash needs the end of its grace period')

  const { app } = await build(t, { databaseUrl })
  const auth = (secret: string): Record<string, string> => ({ authorization: basicAuth('svc-old', secret) })
  t.equal((await tokenRequest(app, { grant_type: 'client_credentials' }, auth('old-client-secret'))).statusCode, 200, 'an existing client gets tokens after 006')
  await clientsRepository(app.db).rotateSecret('svc-old', { secret: 'rotated-client-secret', cost: 10, graceMs: 60_000, actor: 'test' })
  await app.clients.forget('svc-old')
  t.equal((await tokenRequest(app, { grant_type: 'client_credentials' }, auth('old-client-secret'))).statusCode, 200, 'its old secret during the grace period')
  t.equal((await tokenRequest(app, { grant_type: 'client_credentials' }, auth('rotated-client-secret'))).statusCode, 200, 'and its new one')
})

test('clients inserted the original way, with $2a$ and $2b$ hashes, get tokens', async (t) => {
  const { app, databaseUrl } = await build(t)
  const hash2b = await bcrypt.hash('secret-2b', 10)
  t.match(hash2b, /^\$2b\$/, 'bcryptjs makes $2b$ hashes')
  const hash2a = (await bcrypt.hash('secret-2a', 10)).replace(/^\$2b\$/, '$2a$')
  await sql(databaseUrl, 'INSERT INTO clients (client_id, client_secret_hash, rate_limit) VALUES ($1, $2, $3)', ['svc-2b', hash2b, 100])
  await sql(databaseUrl, 'INSERT INTO clients (client_id, client_secret_hash, rate_limit) VALUES ($1, $2, $3)', ['svc-2a', hash2a, null])

  const rows = await sql<{ client_id: string, status: string, name: string, rate_limit: number | null, has_created: boolean, has_updated: boolean }>(databaseUrl,
    'SELECT client_id, status, name, rate_limit, created_at IS NOT NULL AS has_created, updated_at IS NOT NULL AS has_updated FROM clients ORDER BY client_id')
  t.strictSame(rows, [
    { client_id: 'svc-2a', status: 'enabled', name: '', rate_limit: null, has_created: true, has_updated: true },
    { client_id: 'svc-2b', status: 'enabled', name: '', rate_limit: 100, has_created: true, has_updated: true }
  ])

  const basic = await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-2a', 'secret-2a') })
  t.equal(basic.statusCode, 200, '$2a$ client, Basic auth')
  t.equal(basic.json().token_type, 'Bearer')
  const post = await issueTokens(app, 'svc-2b', 'secret-2b')
  const checked = await verify(app, post.access_token)
  t.equal(checked.json().valid, true, '$2b$ client, client_secret_post')
  t.equal(checked.json().claims.sub, 'svc-2b')

  const wrong = await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-2a', 'secret-2b') })
  t.equal(wrong.statusCode, 401, 'the hash is really checked')
})

test('an UPDATE bumps updated_at', async (t) => {
  const { databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-touch', secret: 'touch-secret' })
  const before = await sql<{ created_at: Date, updated_at: Date }>(databaseUrl, 'SELECT created_at, updated_at FROM clients WHERE client_id = $1', ['svc-touch'])
  await sql(databaseUrl, "UPDATE clients SET name = 'renamed' WHERE client_id = $1", ['svc-touch'])
  const after = await sql<{ created_at: Date, updated_at: Date, later: boolean }>(databaseUrl,
    'SELECT created_at, updated_at, updated_at > created_at AS later FROM clients WHERE client_id = $1', ['svc-touch'])
  t.equal(after[0]?.created_at.getTime(), before[0]?.created_at.getTime(), 'created_at unchanged')
  t.equal(after[0]?.later, true, 'updated_at moved past created_at')
})

test('CHECK constraints refuse a non-bcrypt hash and a rate_limit of 0', async (t) => {
  const { databaseUrl } = await build(t)
  const insert = 'INSERT INTO clients (client_id, client_secret_hash, rate_limit) VALUES ($1, $2, $3)'
  const hash = await bcrypt.hash('fine-secret', 10)
  await t.rejects(sql(databaseUrl, insert, ['svc-plain', 'plain-text-secret', null]), { code: '23514' }, 'non-bcrypt hash')
  await t.rejects(sql(databaseUrl, insert, ['svc-sha', '$5$rounds=5000$abc$def', null]), { code: '23514' }, 'another crypt scheme')
  await t.rejects(sql(databaseUrl, insert, ['svc-zero', hash, 0]), { code: '23514' }, 'rate_limit 0')
  await t.rejects(sql(databaseUrl, insert, ['svc-negative', hash, -1]), { code: '23514' }, 'negative rate_limit')
  const rows = await sql(databaseUrl, 'SELECT client_id FROM clients')
  t.strictSame(rows, [], 'nothing inserted')
})

test('cli/migrate.ts applies pending migrations and exits 0', { skip: needs.postgres }, async (t) => {
  const databaseUrl = await createDatabase(t, { empty: true })
  const first = await runMigrate({ DATABASE_URL: databaseUrl })
  t.equal(first.code, 0, `exit code (stderr: ${first.stderr})`)
  t.match(first.stdout, /001_clients\.sql/)
  t.equal(first.stderr, '')
  t.ok(await tableExists(databaseUrl, 'clients'), 'clients table exists')
  t.strictSame(await recordedMigrations(databaseUrl), MIGRATION_FILES)

  const again = await runMigrate({ DATABASE_URL: databaseUrl })
  t.equal(again.code, 0)
  t.match(again.stdout, /nothing to apply/)
  t.notMatch(again.stdout, /001_clients\.sql/)
})

test('cli/migrate.ts without DATABASE_URL migrates the embedded database in DATA_DIR', async (t) => {
  const dataDir = t.testdir({})
  const first = await runMigrate({ DATA_DIR: dataDir }, 60_000)
  t.equal(first.code, 0, `exit code (stderr: ${first.stderr})`)
  t.match(first.stdout, /migrate: applied|nothing to apply/)
  t.ok(existsSync(join(dataDir, 'pgdata')), 'the embedded database is created in DATA_DIR')
  const again = await runMigrate({ DATA_DIR: dataDir }, 60_000)
  t.equal(again.code, 0)
  t.match(again.stdout, /nothing to apply/, 'every migration is recorded')
})

test('cli/migrate.ts with an unreachable database exits 1 with one line, in bounded time', async (t) => {
  const port = await freePort()
  const result = await runMigrate({ DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/postgres` })
  t.equal(result.code, 1)
  t.equal(result.signal, null, 'not killed by the test timeout')
  t.match(result.stderr, /^session-service: cannot reach PostgreSQL[^\n]+\n$/, 'one line')
  t.notMatch(result.stdout + result.stderr, /^\s+at /m, 'no stack trace')
  t.ok(result.ms < 15_000, `exited in ${result.ms} ms`)
})

test('MIGRATE_ON_START=false: the app starts on an empty database without creating tables', { skip: needs.postgres }, async (t) => {
  const databaseUrl = await createDatabase(t, { empty: true })
  const { app } = await build(t, { databaseUrl, env: { MIGRATE_ON_START: 'false' } })
  t.notOk(await tableExists(databaseUrl, 'clients'), 'no clients table')
  t.notOk(await tableExists(databaseUrl, 'schema_migrations'), 'no schema_migrations table')
  const health = await app.inject({ method: 'GET', url: '/health' })
  t.equal(health.statusCode, 200, 'the app runs')
})
