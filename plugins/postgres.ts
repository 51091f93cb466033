import fp from 'fastify-plugin'
import fastifyPostgres from '@fastify/postgres'
import { guard, withTimeout } from './errors.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Resolves when PostgreSQL answers a query within the given time. */
    pingPostgres: (timeoutMs: number) => Promise<void>
  }
}

export default fp(async (fastify) => {
  const { config } = fastify
  await fastify.register(fastifyPostgres, {
    connectionString: config.databaseUrl,
    max: config.pgPoolMax,
    // Bounded waits: a stopped server must turn into a 503, not a hung request.
    connectionTimeoutMillis: config.dependencyTimeoutMs,
    query_timeout: config.dependencyTimeoutMs,
    idleTimeoutMillis: 30_000,
    application_name: 'session-service'
  })
  // An idle client that loses its connection emits 'error' on the pool; without
  // a listener that would crash the process. The pool replaces the client.
  fastify.pg.pool.on('error', (err) => {
    fastify.log.warn({ cause: err.message }, 'postgresql connection lost')
  })

  fastify.decorate('pingPostgres', async (timeoutMs: number) => {
    await guard('postgresql', withTimeout(fastify.pg.query('SELECT 1'), timeoutMs, 'postgresql'))
  })
}, { name: 'postgres', dependencies: ['config'] })
