// The database, wherever it is: the PostgreSQL server of DATABASE_URL, or the
// embedded one in DATA_DIR, opened here or reached through the running
// service's control socket (the embedded database admits a single process).
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { applyMigrations } from '../plugins/migrations.ts'
import { embeddedDatabase, serverDatabase, type Database } from '../storage/database.ts'
import { CONTROL_SOCKET, DataDirInUseError, heldByThisProcess, lockDataDir, lockHolder, PGDATA } from '../storage/data-dir.ts'
import { connectControl, type ControlClient } from '../storage/control.ts'
import { CliError, describeFailure, PROGRAM } from './io.ts'
import type { Settings } from '../plugins/config.ts'

/** How long to wait for another command that holds the embedded database. */
const LOCK_WAIT_MS = 10_000

export interface Connection {
  db: Database
  /** the running embedded service, when the CLI goes through it */
  service: ControlClient | undefined
  /** how it got there, for messages */
  where: string
  close: () => Promise<void>
}

async function connectServer (databaseUrl: string): Promise<Connection> {
  const db = serverDatabase({ connectionString: databaseUrl, max: 1, timeoutMs: 5000 })
  try {
    await db.query('SELECT 1')
  } catch (err) {
    await db.close().catch(() => {})
    throw new CliError(`cannot reach PostgreSQL (DATABASE_URL): ${describeFailure(err)}`)
  }
  return { db, service: undefined, where: 'PostgreSQL (DATABASE_URL)', close: async () => await db.close() }
}

// Whoever holds the folder has the database open. The service answers on its
// control socket; another CLI command does not, but ends soon: wait for it a
// little. A lock with our own pid is a service in this process (tests, an
// embedding program) when this process took it, else a stale one.
async function connectRunningService (dataDir: string): Promise<Connection | undefined> {
  const deadline = Date.now() + LOCK_WAIT_MS
  for (;;) {
    const holder = lockHolder(dataDir)
    if (holder === undefined || (holder === process.pid && !heldByThisProcess(dataDir))) return undefined
    const socket = join(dataDir, CONTROL_SOCKET)
    try {
      const service = await connectControl(socket)
      return { db: service, service, where: `the running service (process ${holder})`, close: async () => await service.close() }
    } catch (err) {
      if (Date.now() > deadline) {
        throw new CliError(`process ${holder} holds ${dataDir} and does not answer on ${socket} (${describeFailure(err)}); is it a service started without its control socket, or another command still running?`)
      }
      await sleep(200)
    }
  }
}

async function openEmbedded (dataDir: string): Promise<Connection> {
  let release: () => void
  try {
    release = lockDataDir(dataDir)
  } catch (err) {
    if (err instanceof DataDirInUseError) throw new CliError(err.message)
    throw new CliError(`cannot use the data directory ${dataDir}: ${describeFailure(err)}`)
  }
  let db: Database
  try {
    db = await embeddedDatabase(join(dataDir, PGDATA))
    // A new data directory gets its tables, as the service would on start.
    await applyMigrations(db, { info: () => {} })
  } catch (err) {
    release()
    throw new CliError(`cannot open the embedded database in ${dataDir}: ${describeFailure(err)}`)
  }
  return {
    db,
    service: undefined,
    where: `the embedded database in ${dataDir}`,
    close: async () => {
      try { await db.close() } finally { release() }
    }
  }
}

export async function connect (config: Settings): Promise<Connection> {
  if (config.databaseUrl !== undefined) return await connectServer(config.databaseUrl)
  return await connectRunningService(config.dataDir) ?? await openEmbedded(config.dataDir)
}

// What a database error means to an operator.
function databaseProblem (err: unknown): CliError {
  if (err instanceof CliError) return err
  const code = (err as { code?: string }).code
  const message = (err as Error).message
  const table = /relation "(\w+)" does not exist/.exec(message)?.[1]
  if (code === '42P01' || table !== undefined) {
    return new CliError(`${table === undefined ? 'a table is missing from the database' : `the database has no ${table} table`}: run \`${PROGRAM} migrate\` first`)
  }
  return new CliError(`database error: ${message}`)
}

/** Runs `work` on a connection, closed afterwards; database errors become one-line CliErrors. */
export async function withDatabase<T> (config: Settings, work: (connection: Connection) => Promise<T>): Promise<T> {
  const connection = await connect(config)
  try {
    return await work(connection)
  } catch (err) {
    throw databaseProblem(err)
  } finally {
    await connection.close().catch(() => {})
  }
}
