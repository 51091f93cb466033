// Test databases: one per build(), on the real PostgreSQL (cloned from a
// migrated template) or, where none answers, an embedded one in a folder of
// its own, named by a URL of the form embedded:<folder>.
import { createHash, randomBytes } from 'node:crypto'
import { readdirSync, readFileSync } from 'node:fs'
import { cp, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import pg from 'pg'
import bcrypt from 'bcryptjs'
import { embeddedDatabase, serverDatabase, type Database } from '../../storage/database.ts'
import { lockDataDir, PGDATA } from '../../storage/data-dir.ts'
import { applyMigrations, MIGRATIONS_DIR } from '../../plugins/migrations.ts'
import { embeddedTemplate } from '../backends.ts'
import { backends, TEST_DATABASE_URL, type TestContext } from './servers.ts'

const EMBEDDED_PREFIX = 'embedded:'

/** The folder of an embedded test database, or undefined for a server URL. */
export function embeddedDir (databaseUrl: string): string | undefined {
  return databaseUrl.startsWith(EMBEDDED_PREFIX) ? databaseUrl.slice(EMBEDDED_PREFIX.length) : undefined
}

// The open database of each running embedded app, by folder: the embedded
// database admits one opener, so sql() goes through the app while it runs.
const openEmbedded = new Map<string, Database>()

function databaseUrlFor (name: string): string {
  const url = new URL(TEST_DATABASE_URL)
  url.pathname = `/${name}`
  return url.toString()
}

async function onAdmin<T> (work: (admin: pg.Client) => Promise<T>): Promise<T> {
  const admin = new pg.Client({ connectionString: TEST_DATABASE_URL })
  await admin.connect()
  try {
    return await work(admin)
  } finally {
    await admin.end()
  }
}

function migrationsChecksum (): string {
  const hash = createHash('sha256')
  for (const name of readdirSync(MIGRATIONS_DIR).sort()) hash.update(name).update(readFileSync(join(MIGRATIONS_DIR, name)))
  return hash.digest('hex').slice(0, 16)
}

// Any fixed number: the advisory lock that serialises building the template
// across the test processes of a run.
const TEMPLATE_LOCK = 0x55_7e_57

let templateName: Promise<string> | undefined

/**
 * A migrated database on the server that test databases are cloned from
 * (CREATE DATABASE ... TEMPLATE takes milliseconds; running the migrations,
 * far longer). One per set of migrations; built by whichever test process
 * comes first, under an advisory lock, under a temporary name renamed when
 * complete, so that no process clones a half-built one.
 *
 * Migration 004 makes a random 'redis-records' secret, so every clone shares
 * one. That is harmless here: the secret authenticates records in Redis, and
 * every test has a Redis key prefix of its own, so no test can meet a record
 * another test wrote; the service's own deployments still run 004 each.
 */
async function postgresTemplate (): Promise<string> {
  templateName ??= onAdmin(async (admin) => {
    const name = `ss_template_${migrationsChecksum()}`
    const exists = async (): Promise<boolean> => (await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])).rowCount === 1
    if (await exists()) return name
    await admin.query('SELECT pg_advisory_lock($1)', [TEMPLATE_LOCK])
    try {
      if (await exists()) return name
      const building = `${name}_building`
      await admin.query(`DROP DATABASE IF EXISTS ${building} WITH (FORCE)`)
      await admin.query(`CREATE DATABASE ${building}`)
      const db = serverDatabase({ connectionString: databaseUrlFor(building), max: 1 })
      try {
        await applyMigrations(db, { info: () => {} })
      } finally {
        await db.close()
      }
      await admin.query(`ALTER DATABASE ${building} RENAME TO ${name}`)
      return name
    } finally {
      await admin.query('SELECT pg_advisory_unlock($1)', [TEMPLATE_LOCK])
    }
  })
  return await templateName
}

export interface DatabaseOptions {
  /** No tables at all, for the tests of the migrations themselves (default: migrated). */
  empty?: boolean
}

/** A new database, migrated unless asked `empty`, dropped when the test ends. */
export async function createDatabase (t: TestContext, options: DatabaseOptions = {}): Promise<string> {
  if (!backends.postgres) {
    const dir = await mkdtemp(join(tmpdir(), 'ss-test-'))
    t.teardown(async () => await rm(dir, { recursive: true, force: true }))
    if (options.empty !== true) await cp(await embeddedTemplate(), join(dir, PGDATA), { recursive: true })
    return `${EMBEDDED_PREFIX}${dir}`
  }
  const name = `ss_test_${process.pid}_${randomBytes(4).toString('hex')}`
  const template = options.empty === true ? '' : ` TEMPLATE ${await postgresTemplate()}`
  await onAdmin(async (admin) => await admin.query(`CREATE DATABASE ${name}${template}`))
  t.teardown(async () => {
    await onAdmin(async (admin) => await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`))
  })
  return databaseUrlFor(name)
}

export interface ClientSpec {
  id: string
  secret: string
  rateLimit?: number | null
  status?: 'enabled' | 'disabled'
}

/** Inserts a client the way the original service's operators did: plain SQL and a bcrypt hash. */
export async function insertClient (databaseUrl: string, spec: ClientSpec): Promise<void> {
  const hash = await bcrypt.hash(spec.secret, 10)
  await sql(databaseUrl, 'INSERT INTO clients (client_id, client_secret_hash, rate_limit) VALUES ($1, $2, $3)', [spec.id, hash, spec.rateLimit ?? null])
  if (spec.status === 'disabled') await sql(databaseUrl, "UPDATE clients SET status = 'disabled' WHERE client_id = $1", [spec.id])
}

/**
 * Called before ready(): once ready, the app's database serves sql() for its
 * folder, until the app closes.
 */
export function trackEmbedded (instance: FastifyInstance, databaseUrl: string): void {
  const dir = embeddedDir(databaseUrl)
  if (dir === undefined) return
  instance.addHook('onReady', async () => { openEmbedded.set(dir, instance.db) })
  instance.addHook('onClose', async () => { if (openEmbedded.get(dir) === instance.db) openEmbedded.delete(dir) })
}

/** For an app built elsewhere (the Lambda module's): sql() on its embedded database goes through it. */
export function attachEmbedded (instance: FastifyInstance, databaseUrl: string): void {
  const dir = embeddedDir(databaseUrl)
  if (dir !== undefined) openEmbedded.set(dir, instance.db)
}

// Nobody has the embedded database open: open it for the statement, under the
// same lock as the service (which refuses a second opener, in this process or another).
async function embeddedQuery<R extends pg.QueryResultRow> (dir: string, text: string, values: unknown[]): Promise<R[]> {
  const running = openEmbedded.get(dir)
  if (running !== undefined) return (await running.query<R>(text, values)).rows
  const release = lockDataDir(dir)
  try {
    const db = await embeddedDatabase(join(dir, PGDATA))
    try {
      return (await db.query<R>(text, values)).rows
    } finally {
      await db.close()
    }
  } finally {
    release()
  }
}

/**
 * Runs one statement on a database with a connection of its own (an embedded
 * database: through the app that has it open, or opened for the statement).
 */
export async function sql<R extends pg.QueryResultRow = Record<string, unknown>> (databaseUrl: string, text: string, values: unknown[] = []): Promise<R[]> {
  const dir = embeddedDir(databaseUrl)
  if (dir !== undefined) return await embeddedQuery<R>(dir, text, values)
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  try {
    return (await client.query<R>(text, values)).rows
  } finally {
    await client.end()
  }
}
