import { join } from 'node:path'
import fp from 'fastify-plugin'
import fastifyPostgres from '@fastify/postgres'
import { guard, withTimeout } from './errors.ts'
import { embeddedDatabase, poolSettings, serverDatabase, type Database } from '../storage/database.ts'
import { lockDataDir, PGDATA } from '../storage/data-dir.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** The SQL database: the PostgreSQL server of DATABASE_URL, or the embedded one. */
    db: Database
    /** Resolves when the database answers a query within the given time. */
    pingPostgres: (timeoutMs: number) => Promise<void>
  }
}

export default fp(async (fastify) => {
  const { config } = fastify
  let db: Database
  if (config.databaseUrl !== undefined) {
    // Bounded waits: a stopped server must turn into a 503, not a hung request.
    await fastify.register(fastifyPostgres, poolSettings({
      connectionString: config.databaseUrl,
      max: config.pgPoolMax,
      timeoutMs: config.dependencyTimeoutMs
    }))
    // An idle client that loses its connection emits 'error' on the pool;
    // without a listener that would crash the process. The pool replaces it.
    fastify.pg.pool.on('error', (err) => {
      fastify.log.warn({ cause: err.message }, 'postgresql connection lost')
    })
    // @fastify/postgres ends the pool when the app closes.
    db = serverDatabase(fastify.pg.pool)
  } else {
    // One process per data directory: a second one would corrupt the files.
    const release = lockDataDir(config.dataDir)
    try {
      db = await embeddedDatabase(join(config.dataDir, PGDATA))
    } catch (err) {
      release()
      throw err
    }
    fastify.log.info({ dataDir: config.dataDir }, 'no DATABASE_URL: using the embedded PostgreSQL in the data directory')
    fastify.addHook('onClose', async () => {
      try {
        await db.close()
      } finally {
        release()
      }
    })
  }
  fastify.decorate('db', db)

  fastify.decorate('pingPostgres', async (timeoutMs: number) => {
    await guard('postgresql', withTimeout(db.query('SELECT 1'), timeoutMs, 'postgresql'))
  })
}, { name: 'postgres', dependencies: ['config'] })
