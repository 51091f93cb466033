import { join } from 'node:path'
import fp from 'fastify-plugin'
import { CONTROL_SOCKET, PGDATA, restrictToOwner } from '../storage/data-dir.ts'
import { MAX_SOCKET_PATH, startControlServer } from '../storage/control.ts'
import { applyMigrations } from './migrations.ts'

// Embedded mode only: the CLI reaches the embedded database through this
// process (see storage/control.ts). With a PostgreSQL server the CLI connects
// to it directly.
export default fp(async (fastify) => {
  const { config } = fastify
  if (config.databaseUrl !== undefined) return
  // The embedded database is open by now (this plugin depends on postgres),
  // and PGlite writes a new database's files open to everyone: close them
  // while the service runs, not only when the data directory is given back.
  restrictToOwner(join(config.dataDir, PGDATA))
  const path = join(config.dataDir, CONTROL_SOCKET)
  if (Buffer.byteLength(path) > MAX_SOCKET_PATH) {
    fastify.log.warn({ path }, 'the data directory path is too long for a Unix socket: the CLI cannot reach this process while it runs')
    return
  }
  const server = await startControlServer(path, {
    db: fastify.db,
    migrate: async () => await applyMigrations(fastify.db, fastify.log),
    forget: async (clientId) => await fastify.clients.forget(clientId)
  })
  fastify.addHook('onClose', async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
}, { name: 'control', dependencies: ['config', 'postgres', 'migrations', 'clients'] })
