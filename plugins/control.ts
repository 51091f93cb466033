import { join } from 'node:path'
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import { CONTROL_SOCKET, PGDATA, restrictToOwner } from '../storage/data-dir.ts'
import { MAX_SOCKET_PATH, startControlServer, type ControlKeyChanges } from '../storage/control.ts'
import { keyPolicy, retireKey, rotateKeys } from '../signing-keys/stored.ts'
import type { KeysPluginOptions } from './keys.ts'
import { applyMigrations } from './migrations.ts'

/**
 * `keys rotate` and `keys retire` made here, in one transaction on this
 * process's database and with its key-encryption key, then read back at
 * once: the CLI's command returns when this instance serves the new keys.
 */
function keyChanges (fastify: FastifyInstance, clock: () => number): ControlKeyChanges | undefined {
  const { config, keyRing } = fastify
  if (keyRing === undefined || config.keyEncryptionKey === undefined) return undefined
  const kek = config.keyEncryptionKey
  return {
    rotate: async (options) => {
      const rotation = await rotateKeys(fastify.db, kek, keyPolicy(config), clock(), options)
      await keyRing.refresh()
      return rotation
    },
    retire: async (kid, options) => {
      const retirement = await retireKey(fastify.db, kid, clock(), options)
      await keyRing.refresh()
      return retirement
    }
  }
}

// Embedded mode only: the CLI reaches the embedded database through this
// process (see storage/control.ts). With a PostgreSQL server the CLI connects
// to it directly.
// The clock is the app's (as the keys plugin's), so that stored keys change on one time line.
export default fp<KeysPluginOptions>(async (fastify, opts) => {
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
    forget: async (clientId) => await fastify.clients.forget(clientId),
    keys: keyChanges(fastify, opts.clock ?? Date.now)
  })
  fastify.addHook('onClose', async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })
}, { name: 'control', dependencies: ['config', 'postgres', 'migrations', 'clients', 'keys'] })
