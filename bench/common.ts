// What the benchmark (run.ts), the soak (soak.ts) and the tests all need.
import type { ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { createServer } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'

/** A TCP port that was free a moment ago. */
export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : 0))
    })
  })
}

/** Resolves once `url` answers 2xx; fails if `child` exits first or after 30 s. */
export async function waitFor (url: string, child: ChildProcess): Promise<void> {
  const until = Date.now() + 30_000
  while (Date.now() < until) {
    if (child.exitCode !== null) throw new Error(`${url}: the process exited with ${child.exitCode}`)
    try {
      if ((await fetch(url)).ok) return
    } catch {}
    await sleep(200)
  }
  throw new Error(`${url} did not answer within 30 s`)
}

/** Deletes every key under `prefix` on the Redis at `url` (SCAN, so that the server is never blocked). */
export async function deleteKeys (url: string, prefix: string): Promise<void> {
  // Loaded here only: the soak's load generator imports this module too and needs no Redis client.
  const { Redis } = await import('ioredis')
  const redis = new Redis(url)
  try {
    let cursor = '0'
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
      if (keys.length > 0) await redis.del(...keys)
      cursor = next
    } while (cursor !== '0')
  } finally {
    await redis.quit()
  }
}

/**
 * Deletes every key under `prefix` on a Redis Cluster reached through `nodes`
 * (host:port): each master is scanned, since a SCAN sees one node's keys only.
 */
export async function deleteClusterKeys (nodes: string[], prefix: string): Promise<void> {
  const { Cluster } = await import('ioredis')
  const cluster = new Cluster(nodes.map((node) => {
    const [host, port] = node.split(':')
    return { host: host ?? '127.0.0.1', port: Number(port) }
  }))
  try {
    if (cluster.status !== 'ready') await once(cluster, 'ready')
    await Promise.all(cluster.nodes('master').map(async (master) => {
      let cursor = '0'
      do {
        const [next, keys] = await master.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
        // One DEL per key: the keys of one node may still span several slots.
        await Promise.all(keys.map(async (key) => await master.del(key)))
        cursor = next
      } while (cursor !== '0')
    }))
  } finally {
    await cluster.quit()
  }
}
