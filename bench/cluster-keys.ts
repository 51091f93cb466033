// The soak's key clean-up on a Redis Cluster: each master holds its own part
// of the keys, and SCAN only walks the node it is sent to, so every master is
// scanned in turn.

/** `host:port` seeds as REDIS_CLUSTER_NODES lists them (an IPv6 host in brackets). */
export function parseClusterNodes (list: string): Array<{ host: string, port: number }> {
  return list.split(',').map((entry) => entry.trim()).filter((entry) => entry !== '').map((entry) => {
    const match = /^\[?([^\]]+?)\]?:(\d+)$/.exec(entry)
    if (match === null) throw new Error(`BENCH_REDIS_CLUSTER_NODES: "${entry}" is not host:port`)
    return { host: match[1]!, port: Number(match[2]) }
  })
}

/**
 * Deletes every key under `prefix` in the cluster that `nodes` seed, on
 * every master; `redisUrl` gives the user and password of the nodes.
 */
export async function deleteClusterKeys (nodes: string, redisUrl: string, prefix: string): Promise<number> {
  const { Cluster } = await import('ioredis')
  const url = new URL(redisUrl)
  const cluster = new Cluster(parseClusterNodes(nodes), {
    redisOptions: {
      username: url.username === '' ? undefined : decodeURIComponent(url.username),
      password: url.password === '' ? undefined : decodeURIComponent(url.password),
      tls: url.protocol === 'rediss:' ? {} : undefined
    }
  })
  let deleted = 0
  try {
    await new Promise<void>((resolve, reject) => {
      cluster.once('ready', resolve)
      cluster.once('error', reject)
    })
    for (const master of cluster.nodes('master')) {
      let cursor = '0'
      do {
        const [next, keys] = await master.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
        // One key per command: keys of different slots may not share one DEL.
        if (keys.length > 0) await Promise.all(keys.map(async (key) => await master.unlink(key)))
        deleted += keys.length
        cursor = next
      } while (cursor !== '0')
    }
  } finally {
    await cluster.quit()
  }
  return deleted
}
