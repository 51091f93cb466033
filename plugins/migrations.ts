import { createHash } from 'node:crypto'
import { readdir, readFile } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { dirname, join } from 'node:path'
import type { Database } from '../storage/database.ts'
import fp from 'fastify-plugin'

// The folder holding package.json, found from this file both when it runs as
// TypeScript (plugins/) and when it runs compiled (dist/plugins/).
function projectRoot (): string {
  let dir = import.meta.dirname
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir)
    if (parent === dir) throw new Error('cannot find the project folder (package.json)')
    dir = parent
  }
  return dir
}

export const MIGRATIONS_DIR = join(projectRoot(), 'migrations')

// One fixed advisory-lock key: instances starting together queue on it, so a
// migration file is applied once. (The number is arbitrary but must not change.)
const MIGRATION_LOCK_KEY = 7_215_331_004

export interface MigrationLog {
  info: (obj: object, msg: string) => void
}

/**
 * Applies the SQL files of `dir` (named NNN_description.sql) that are not yet
 * recorded in schema_migrations, in order, each in its own transaction.
 * Returns the names applied. A recorded file whose content changed is an error.
 *
 * Each transaction first takes a transaction-scoped advisory lock, so that
 * instances starting together apply each file once; the lock goes with the
 * transaction, so it is never left behind by a connection that dies.
 */
export async function applyMigrations (db: Database, log: MigrationLog, dir: string = MIGRATIONS_DIR): Promise<string[]> {
  const files = (await readdir(dir)).filter((name) => /^\d+_[\w-]+\.sql$/.test(name)).sort()
  const recorded = await db.transaction(async (tx) => {
    await tx.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK_KEY])
    await tx.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
      name text PRIMARY KEY,
      checksum text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now()
    )`)
    const { rows } = await tx.query<{ name: string, checksum: string }>('SELECT name, checksum FROM schema_migrations')
    return new Map(rows.map((row) => [row.name, row.checksum]))
  })
  const applied: string[] = []
  for (const name of files) {
    const sql = await readFile(join(dir, name), 'utf8')
    const checksum = createHash('sha256').update(sql).digest('hex')
    const previous = recorded.get(name)
    if (previous !== undefined) {
      if (previous !== checksum) throw new Error(`migration ${name} was changed after it was applied; add a new file instead`)
      continue
    }
    const done = await db.transaction(async (tx) => {
      await tx.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK_KEY])
      // Another instance may have applied it while this one waited for the lock.
      const { rows } = await tx.query<{ checksum: string }>('SELECT checksum FROM schema_migrations WHERE name = $1', [name])
      if (rows[0] !== undefined) return false
      try {
        await tx.exec(sql)
      } catch (err) {
        throw new Error(`migration ${name} failed: ${(err as Error).message}`)
      }
      await tx.query('INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)', [name, checksum])
      return true
    })
    if (done) {
      log.info({ migration: name }, 'migration applied')
      applied.push(name)
    }
  }
  return applied
}

export default fp(async (fastify) => {
  if (!fastify.config.migrateOnStart) return
  await applyMigrations(fastify.db, fastify.log)
}, { name: 'migrations', dependencies: ['config', 'postgres'] })
