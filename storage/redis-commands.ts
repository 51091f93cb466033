// What the Redis implementations of storage/ share: the client type, their
// Lua scripts, kept in storage/lua as files of their own (copied next to the
// compiled modules by the build), the check of a transaction's replies, and
// the connection that subscriptions need.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { ChainableCommander, Cluster, Redis } from 'ioredis'

/** One Redis server, or a Redis Cluster (REDIS_CLUSTER_NODES): the service's commands work on either. */
export type RedisClient = Redis | Cluster

/** The text of storage/lua/<name>.lua; read at module load, so a missing script stops the start. */
export function luaScript (name: string): string {
  return readFileSync(join(import.meta.dirname, 'lua', `${name}.lua`), 'utf8')
}

/** Runs a pipeline or MULTI; throws the first error among its replies (ioredis resolves with them). */
export async function execAll (commands: ChainableCommander): Promise<void> {
  const results = await commands.exec()
  const failed = results?.find(([err]) => err !== null)?.[0]
  if (failed !== undefined && failed !== null) throw failed
}

/**
 * A connection of its own, subscribed to `channel` (a connection that
 * subscribes can send nothing else), with the client's options; commands
 * queue while it reconnects, and it subscribes again each time it is back.
 * On one server that is done here rather than by ioredis, whose own
 * resubscription leaves its promise unhandled: one that fails because the
 * connection closes (a shutdown just as Redis comes back) would be an
 * unhandled rejection. A cluster's subscriber catches its own.
 */
export function subscriberOf (client: RedisClient, connectionName: string, channel: string): { connection: RedisClient, subscribed: Promise<unknown> } {
  if (client.isCluster) {
    const connection = (client as Cluster).duplicate(undefined, { enableOfflineQueue: true, redisOptions: { ...(client as Cluster).options.redisOptions, connectionName } })
    return { connection, subscribed: connection.subscribe(channel) }
  }
  const connection = (client as Redis).duplicate({ enableOfflineQueue: true, connectionName, autoResubscribe: false })
  let connections = 0
  connection.on('ready', () => {
    if (++connections > 1) connection.subscribe(channel).catch(() => {})
  })
  return { connection, subscribed: connection.subscribe(channel) }
}
