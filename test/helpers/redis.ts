// Redis for tests: a key prefix of each test's own on the shared server (in
// the cluster run, the shared Redis Cluster), or a server of one test's own
// that it may stop and start.
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { createConnection } from 'node:net'
import { tmpdir } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import { Cluster, Redis } from 'ioredis'
import { deleteKeys } from '../../bench/common.ts'
import { clusterKeys, clusterRun, serverKeys, connectCluster, deleteClusterKeys, firstNodeUrl, TEST_REDIS_CLUSTER_NODES } from './redis-cluster.ts'
import { backends, TEST_REDIS_URL, type TestContext } from './servers.ts'

/** A Redis key prefix of its own; its keys are deleted when the test ends. */
export function createRedisPrefix (t: TestContext): string {
  const prefix = `ss-test:${process.pid}:${randomBytes(4).toString('hex')}:`
  if (!backends.redis) return prefix
  t.teardown(async () => {
    if (clusterRun) await deleteClusterKeys(prefix)
    else await deleteKeys(TEST_REDIS_URL, prefix)
  })
  return prefix
}

/** The service's Redis settings for the run's shared Redis: the server, or the cluster's nodes. */
export function serviceRedisEnv (): Record<string, string> {
  if (!clusterRun) return { REDIS_URL: TEST_REDIS_URL }
  return { REDIS_URL: firstNodeUrl(TEST_REDIS_CLUSTER_NODES), REDIS_CLUSTER_NODES: TEST_REDIS_CLUSTER_NODES }
}

/** A connection of the test's own to the run's shared Redis (a cluster client in the cluster run); the caller quits it. */
export async function openTestRedis (): Promise<Redis | Cluster> {
  return clusterRun ? await connectCluster(TEST_REDIS_CLUSTER_NODES) : new Redis(TEST_REDIS_URL)
}

/** Every key under `prefix`, by SCAN (on each master of a cluster). */
export async function keysUnderPrefix (redis: Redis | Cluster, prefix: string): Promise<string[]> {
  return redis instanceof Cluster ? await clusterKeys(redis, prefix) : await serverKeys(redis, prefix)
}

/** Whether a Redis server answers PING on the port (one attempt, bounded). */
export async function redisAnswers (port: number): Promise<boolean> {
  return await new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port })
    const done = (answer: boolean): void => { socket.destroy(); resolve(answer) }
    socket.setTimeout(500, () => done(false))
    socket.on('error', () => done(false))
    socket.on('connect', () => socket.write('PING\r\n'))
    socket.on('data', (data) => done(data.toString().startsWith('+PONG')))
  })
}

/**
 * A Redis server of one test only, on its own port, so that it can be
 * stopped and started again without touching the shared one. Stopped at
 * teardown (create it before build() so that the app closes first).
 */
export class PrivateRedis {
  readonly port: number
  #child: ChildProcess | undefined

  readonly #persistIn: string | undefined

  /** `persistIn`: a folder for an append-only file that survives a restart (none: no persistence). */
  constructor (t: TestContext, port: number, options: { persistIn?: string } = {}) {
    this.port = port
    this.#persistIn = options.persistIn
    t.teardown(async () => await this.stop())
  }

  get url (): string {
    return `redis://127.0.0.1:${this.port}`
  }

  async start (): Promise<void> {
    const child = spawn('redis-server', [
      '--port', String(this.port), '--bind', '127.0.0.1', '--save', '',
      '--appendonly', this.#persistIn === undefined ? 'no' : 'yes', '--appendfsync', 'everysec',
      '--daemonize', 'no', '--dir', this.#persistIn ?? tmpdir()
    ], { stdio: 'ignore' })
    this.#child = child
    const deadline = Date.now() + 10_000
    while (!(await redisAnswers(this.port))) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`private redis-server on port ${this.port} did not start`)
      await sleep(50)
    }
  }

  async stop (): Promise<void> {
    const child = this.#child
    this.#child = undefined
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return
    const exited = new Promise((resolve) => child.once('exit', resolve))
    child.kill('SIGTERM')
    await exited
  }
}
