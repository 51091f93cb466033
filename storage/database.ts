// The service's SQL database: a PostgreSQL server through a pg pool, or the
// embedded PostgreSQL (PGlite) in a data directory. Both run the same
// migrations and the same SQL; the code above this module sees one interface.
import pg from 'pg'
import type { PGlite } from '@electric-sql/pglite'

export interface QueryResult<R> {
  rows: R[]
}

/** What runs statements: the database itself, or one transaction of it. */
export interface Queryable {
  query: <R = Record<string, unknown>>(text: string, values?: unknown[]) => Promise<QueryResult<R>>
  /** Runs a script of several statements without parameters (a migration file). */
  exec: (script: string) => Promise<void>
}

export interface Database extends Queryable {
  /** 'server': a PostgreSQL server (DATABASE_URL); 'embedded': PGlite in DATA_DIR. */
  readonly kind: 'server' | 'embedded'
  /** Runs `work` in one transaction: committed when it resolves, rolled back when it throws. */
  transaction: <T>(work: (tx: Queryable) => Promise<T>) => Promise<T>
  close: () => Promise<void>
}

export interface ServerDatabaseOptions {
  connectionString: string
  max?: number
  /** bound on connecting and on each query, milliseconds */
  timeoutMs?: number
  /** told when an idle connection is lost (the pool replaces it) */
  onIdleError?: (err: Error) => void
}

/** The pool settings of the service: bounded waits, so a stopped server turns into errors, not hangs. */
export function poolSettings (options: ServerDatabaseOptions): pg.PoolConfig {
  return {
    connectionString: options.connectionString,
    max: options.max ?? 10,
    connectionTimeoutMillis: options.timeoutMs ?? 0,
    query_timeout: options.timeoutMs,
    idleTimeoutMillis: 30_000,
    application_name: 'session-service'
  }
}

/** A PostgreSQL server through a pool of connections (a new one, or one given). */
export function serverDatabase (source: ServerDatabaseOptions | pg.Pool): Database & { pool: pg.Pool } {
  const pool = source instanceof pg.Pool ? source : new pg.Pool(poolSettings(source))
  if (!(source instanceof pg.Pool)) {
    // Without a listener, an idle connection that drops would crash the process.
    pool.on('error', (err) => source.onIdleError?.(err))
  }

  function queryable (client: pg.Pool | pg.PoolClient): Queryable {
    return {
      query: async <R>(text: string, values?: unknown[]) => {
        const result = await client.query(text, values)
        return { rows: result.rows as R[] }
      },
      exec: async (script: string) => { await client.query(script) }
    }
  }

  return {
    kind: 'server',
    pool,
    ...queryable(pool),
    async transaction<T> (work: (tx: Queryable) => Promise<T>): Promise<T> {
      const client = await pool.connect()
      let broken = false
      try {
        await client.query('BEGIN')
        try {
          const result = await work(queryable(client))
          await client.query('COMMIT')
          return result
        } catch (err) {
          await client.query('ROLLBACK').catch(() => { broken = true })
          throw err
        }
      } finally {
        // A connection whose rollback failed is not handed out again.
        client.release(broken)
      }
    },
    close: async () => { await pool.end() }
  }
}

/** The embedded PostgreSQL, opened on a data directory (created when missing). */
export async function embeddedDatabase (dataDir: string): Promise<Database & { pglite: PGlite }> {
  const { PGlite } = await import('@electric-sql/pglite')
  const pglite = await PGlite.create(dataDir)

  function queryable (target: Pick<PGlite, 'query' | 'exec'>): Queryable {
    return {
      query: async <R>(text: string, values?: unknown[]) => {
        const result = await target.query<R>(text, values)
        return { rows: result.rows }
      },
      exec: async (script: string) => { await target.exec(script) }
    }
  }

  return {
    kind: 'embedded',
    pglite,
    ...queryable(pglite),
    transaction: async <T>(work: (tx: Queryable) => Promise<T>) => await pglite.transaction(async (tx) => await work(queryable(tx))),
    close: async () => { if (!pglite.closed) await pglite.close() }
  }
}
