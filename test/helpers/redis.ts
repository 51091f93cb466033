// Redis for tests: a key prefix of each test's own on the shared server, or
// a server of one test's own that it may stop and start.
import { spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { createConnection } from 'node:net'
import { tmpdir } from 'node:os'
import { setTimeout as sleep } from 'node:timers/promises'
import { deleteKeys } from '../../bench/common.ts'
import { backends, TEST_REDIS_URL, type TestContext } from './servers.ts'

/** A Redis key prefix of its own; its keys are deleted when the test ends. */
export function createRedisPrefix (t: TestContext): string {
  const prefix = `ss-test:${process.pid}:${randomBytes(4).toString('hex')}:`
  if (!backends.redis) return prefix
  t.teardown(async () => await deleteKeys(TEST_REDIS_URL, prefix))
  return prefix
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
