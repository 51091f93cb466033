// Redis Cluster for tests. The cluster run (TEST_REDIS=cluster, `npm run
// test:cluster`) starts the service on a shared cluster
// (TEST_REDIS_CLUSTER_NODES; .ci/redis-cluster starts one), each test under a
// key prefix of its own. PrivateRedisCluster is a cluster of one test's own,
// whose masters it may kill.
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis'
import type { TestContext } from './servers.ts'
import { pollUntil } from './waiting.ts'

const SHARED_CLUSTER_PORTS = [7000, 7001, 7002, 7003, 7004, 7005]

/** The shared cluster's seed nodes: host:port, comma-separated. */
export const TEST_REDIS_CLUSTER_NODES = process.env.TEST_REDIS_CLUSTER_NODES ??
  SHARED_CLUSTER_PORTS.map((port) => `127.0.0.1:${port}`).join(',')

/** Whether this is the cluster run: the app's Redis is the shared cluster. */
export const clusterRun = process.env.TEST_REDIS === 'cluster'

export interface NodeAddress {
  host: string
  port: number
}

/** The addresses of a host:port list (IPv6 hosts in brackets). */
export function nodeAddresses (nodes: string): NodeAddress[] {
  return nodes.split(',').map((node) => node.trim()).filter((node) => node !== '').map((node) => {
    const colon = node.lastIndexOf(':')
    return { host: node.slice(0, colon).replace(/^\[|\]$/g, ''), port: Number(node.slice(colon + 1)) }
  })
}

/** The REDIS_URL that goes with a node list in the cluster run: its first node. */
export function firstNodeUrl (nodes: string, scheme: 'redis' | 'rediss' = 'redis'): string {
  const [first] = nodeAddresses(nodes)
  if (first === undefined) throw new Error('the Redis Cluster node list is empty')
  return `${scheme}://${first.host.includes(':') ? `[${first.host}]` : first.host}:${first.port}`
}

/** One command on one node, or undefined when the node does not answer (bounded). */
async function nodeCommand (address: NodeAddress, command: string[], redisOptions: RedisOptions = {}): Promise<unknown> {
  const redis = new Redis({
    ...redisOptions,
    ...address,
    lazyConnect: true,
    connectTimeout: 1000,
    commandTimeout: 2000,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    retryStrategy: () => null
  })
  redis.on('error', () => {})
  try {
    await redis.connect()
    const [name, ...args] = command as [string, ...string[]]
    return await redis.call(name, ...args)
  } catch {
    return undefined
  } finally {
    redis.disconnect()
  }
}

/** Whether a node says cluster_state:ok and knows `knownNodes` nodes (any number when undefined). */
async function nodeHealthy (address: NodeAddress, redisOptions: RedisOptions = {}, knownNodes?: number): Promise<boolean> {
  const info = await nodeCommand(address, ['CLUSTER', 'INFO'], redisOptions)
  if (typeof info !== 'string') return false
  const fields = new Map(info.split(/\r?\n/).map((line) => line.split(':', 2) as [string, string]))
  return fields.get('cluster_state') === 'ok' &&
    (knownNodes === undefined || fields.get('cluster_known_nodes') === String(knownNodes))
}

/** Whether the shared cluster answers: every seed node says cluster_state:ok. */
export async function clusterAnswers (nodes: string = TEST_REDIS_CLUSTER_NODES): Promise<boolean> {
  const addresses = nodeAddresses(nodes)
  if (addresses.length === 0) return false
  const answers = await Promise.all(addresses.map(async (address) => await nodeHealthy(address)))
  return answers.every(Boolean)
}

/** An ioredis Cluster client, connected (the caller disconnects it). */
export async function connectCluster (nodes: string = TEST_REDIS_CLUSTER_NODES, options: ClusterOptions = {}): Promise<Cluster> {
  const cluster = new Cluster(nodeAddresses(nodes), { ...options, lazyConnect: true })
  cluster.on('error', () => {})
  try {
    await cluster.connect()
  } catch (err) {
    cluster.disconnect()
    throw err
  }
  return cluster
}

/** Every key of one server that matches `prefix*`, by SCAN. */
export async function serverKeys (server: Redis, prefix: string): Promise<string[]> {
  const keys: string[] = []
  let cursor = '0'
  do {
    const [next, batch] = await server.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000)
    keys.push(...batch)
    cursor = next
  } while (cursor !== '0')
  return keys
}

/** Every key that matches `prefix*`, on each master (a SCAN on the cluster client reaches one node only). */
export async function clusterKeys (cluster: Cluster, prefix: string): Promise<string[]> {
  const keys: string[] = []
  for (const master of cluster.nodes('master')) keys.push(...await serverKeys(master, prefix))
  return keys
}

/** Deletes a test's keys on the cluster, one DEL per key: keys of different slots cannot share one. */
export async function deleteClusterKeys (prefix: string, nodes: string = TEST_REDIS_CLUSTER_NODES): Promise<void> {
  const cluster = await connectCluster(nodes)
  try {
    const keys = await clusterKeys(cluster, prefix)
    await Promise.all(keys.map(async (key) => await cluster.del(key)))
  } finally {
    cluster.disconnect()
  }
}

/**
 * Certificate, key and CA of a cluster that speaks TLS only. The nodes also
 * present the certificate to each other on the cluster bus: it needs
 * extendedKeyUsage clientAuth besides serverAuth (or no extendedKeyUsage),
 * or the cluster never joins.
 */
export interface ClusterTls {
  certFile: string
  keyFile: string
  caFile: string
}

/** Ports whose node is a master that serves slots and is not failed, from CLUSTER NODES. */
export function mastersOf (clusterNodes: string): number[] {
  const ports: number[] = []
  for (const line of clusterNodes.split('\n')) {
    const [, address, flags, , , , , , ...slots] = line.trim().split(' ')
    if (address === undefined || flags === undefined || slots.length === 0) continue
    const flagList = flags.split(',')
    if (!flagList.includes('master') || flagList.some((flag) => flag.startsWith('fail'))) continue
    const hostPort = address.split('@')[0] ?? ''
    ports.push(Number(hostPort.slice(hostPort.lastIndexOf(':') + 1)))
  }
  return ports.sort((a, b) => a - b)
}

const runFile = promisify(execFile)
const NODE_COUNT = 6
const START_TIMEOUT_MS = 30_000
const FAILOVER_TIMEOUT_MS = 30_000

/**
 * A Redis Cluster of one test only: six redis-server processes (three
 * masters, three replicas) on basePort to basePort + 5, children of the test
 * in a temporary folder, stopped at teardown (create it before build() so
 * that the app closes first). With `tls`, the nodes listen on TLS only and
 * speak TLS among themselves.
 */
export class PrivateRedisCluster {
  readonly ports: number[]
  readonly #tls: ClusterTls | undefined
  readonly #children = new Map<number, ChildProcess>()
  readonly #killed = new Set<number>()
  #dir: string | undefined

  constructor (t: TestContext, basePort: number, options: { tls?: ClusterTls } = {}) {
    this.ports = Array.from({ length: NODE_COUNT }, (_, index) => basePort + index)
    this.#tls = options.tls
    t.teardown(async () => await this.stop())
  }

  /** REDIS_CLUSTER_NODES for this cluster. */
  get nodes (): string {
    return this.ports.map((port) => `127.0.0.1:${port}`).join(',')
  }

  /** REDIS_URL for this cluster: its scheme and first node. */
  get url (): string {
    return firstNodeUrl(this.nodes, this.#tls === undefined ? 'redis' : 'rediss')
  }

  /** What each connection to a node needs: TLS with the cluster's CA when it speaks TLS. */
  get redisOptions (): RedisOptions {
    return this.#tls === undefined ? {} : { tls: { ca: readFileSync(this.#tls.caFile, 'utf8') } }
  }

  /** An ioredis Cluster client on this cluster, connected (the caller disconnects it). */
  async connect (options: ClusterOptions = {}): Promise<Cluster> {
    return await connectCluster(this.nodes, { ...options, redisOptions: { ...this.redisOptions, ...options.redisOptions } })
  }

  async start (): Promise<void> {
    this.#dir = await mkdtemp(join(tmpdir(), 'ss-redis-cluster-'))
    for (const port of this.ports) this.#children.set(port, this.#spawnNode(port, this.#dir))
    await this.#waitFor('every node to answer', async () => {
      const answers = await Promise.all(this.ports.map(async (port) => await this.#command(port, ['PING'])))
      return answers.every((answer) => answer === 'PONG')
    }, START_TIMEOUT_MS)
    await this.#create()
    await this.#waitFor('cluster_state:ok on every node, and each replica in sync with its master',
      async () => await this.#allHealthy() && await this.#replicasInSync(), START_TIMEOUT_MS)
  }

  /** The ports of the current masters, by CLUSTER NODES on a running node. */
  async masters (): Promise<number[]> {
    for (const port of this.#runningPorts()) {
      const answer = await this.#command(port, ['CLUSTER', 'NODES'])
      if (typeof answer === 'string') return mastersOf(answer)
    }
    throw new Error('no node of the private Redis Cluster answers')
  }

  /** Kills a master's process at once (SIGKILL): no goodbye to the other nodes. */
  async killMaster (port: number): Promise<void> {
    const child = this.#children.get(port)
    if (child === undefined) throw new Error(`no running node of the private Redis Cluster on port ${port}`)
    if (!(await this.masters()).includes(port)) throw new Error(`the node on port ${port} is not a master`)
    const exited = once(child, 'exit')
    child.kill('SIGKILL')
    await exited
    this.#children.delete(port)
    this.#killed.add(port)
  }

  /** Waits until a replica has taken over each killed master and every running node says cluster_state:ok. */
  async waitForFailover (): Promise<void> {
    await this.#waitFor('a replica to take over and cluster_state:ok on every running node', async () => {
      const masters = await this.masters().catch(() => [])
      return masters.length === NODE_COUNT / 2 && masters.every((port) => !this.#killed.has(port)) && await this.#allHealthy()
    }, FAILOVER_TIMEOUT_MS)
  }

  async stop (): Promise<void> {
    const children = [...this.#children.values()]
    this.#children.clear()
    await Promise.all(children.map(async (child) => {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = once(child, 'exit')
      child.kill('SIGTERM')
      await exited
    }))
    if (this.#dir !== undefined) await rm(this.#dir, { recursive: true, force: true })
    this.#dir = undefined
  }

  #spawnNode (port: number, dir: string): ChildProcess {
    const tls = this.#tls
    const listen = tls === undefined
      ? ['--port', String(port)]
      : ['--port', '0', '--tls-port', String(port), '--tls-cluster', 'yes', '--tls-replication', 'yes', '--tls-auth-clients', 'no',
          '--tls-cert-file', tls.certFile, '--tls-key-file', tls.keyFile, '--tls-ca-cert-file', tls.caFile]
    return spawn('redis-server', [
      ...listen, '--bind', '127.0.0.1', '--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${port}.conf`,
      '--cluster-node-timeout', '3000', '--save', '', '--appendonly', 'no', '--dir', dir, '--daemonize', 'no'
    ], { stdio: 'ignore' })
  }

  async #create (): Promise<void> {
    const tls = this.#tls === undefined ? [] : ['--tls', '--cacert', this.#tls.caFile]
    const addresses = this.ports.map((port) => `127.0.0.1:${port}`)
    try {
      await runFile('redis-cli', [...tls, '--cluster', 'create', ...addresses, '--cluster-replicas', '1', '--cluster-yes'], { timeout: START_TIMEOUT_MS })
    } catch (err) {
      const { stdout, stderr } = err as { stdout?: string, stderr?: string }
      throw new Error(`redis-cli --cluster create failed on ports ${this.ports.join(',')}: ${(err as Error).message}\n${stdout ?? ''}${stderr ?? ''}`)
    }
  }

  #runningPorts (): number[] {
    return this.ports.filter((port) => this.#children.has(port))
  }

  async #command (port: number, command: string[]): Promise<unknown> {
    return await nodeCommand({ host: '127.0.0.1', port }, command, this.redisOptions)
  }

  async #allHealthy (): Promise<boolean> {
    const answers = await Promise.all(this.#runningPorts().map(async (port) =>
      await nodeHealthy({ host: '127.0.0.1', port }, this.redisOptions, NODE_COUNT)))
    return answers.every(Boolean)
  }

  // ROLE on every node: three masters with a replica each, and every replica's link up.
  async #replicasInSync (): Promise<boolean> {
    const roles = await Promise.all(this.ports.map(async (port) => await this.#command(port, ['ROLE']) as unknown[] | undefined))
    const mastersWithReplica = roles.filter((role) => role?.[0] === 'master' && Array.isArray(role[2]) && role[2].length === 1)
    const replicasConnected = roles.filter((role) => role?.[0] === 'slave' && role[3] === 'connected')
    return mastersWithReplica.length === NODE_COUNT / 2 && replicasConnected.length === NODE_COUNT / 2
  }

  async #waitFor (what: string, condition: () => Promise<boolean>, timeoutMs: number): Promise<void> {
    const probe = async (): Promise<boolean> => {
      const exited = [...this.#children].filter(([, child]) => child.exitCode !== null).map(([port]) => port)
      if (exited.length > 0) throw new Error(`the private Redis Cluster's nodes on ports ${exited.join(',')} exited (waiting for ${what})`)
      return await condition()
    }
    if (!(await pollUntil(probe, Boolean, timeoutMs, 200))) {
      throw new Error(`the private Redis Cluster on ports ${this.ports.join(',')}: no ${what} within ${timeoutMs / 1000} s`)
    }
  }
}
