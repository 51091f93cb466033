// npm run migrate: applies the pending migrations to DATABASE_URL and exits.
// Only DATABASE_URL is needed (read from the environment or a .env file).
import 'dotenv/config'
import pg from 'pg'
import { applyMigrations } from '../plugins/migrations.js'

async function main (): Promise<number> {
  const databaseUrl = process.env.DATABASE_URL
  if (databaseUrl === undefined || databaseUrl === '') {
    process.stderr.write('migrate: DATABASE_URL is required\n')
    return 1
  }
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 1, connectionTimeoutMillis: 5000 })
  try {
    const applied = await applyMigrations(pool, {
      info: (fields, message) => process.stdout.write(`${message}: ${(fields as { migration?: string }).migration ?? ''}\n`)
    })
    process.stdout.write(applied.length === 0 ? 'migrate: nothing to apply\n' : `migrate: applied ${applied.length}\n`)
    return 0
  } catch (err) {
    process.stderr.write(`migrate: ${(err as Error).message}\n`)
    return 1
  } finally {
    await pool.end()
  }
}

process.exitCode = await main()
