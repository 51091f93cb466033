// Entry points of the project run as processes of their own, and free ports
// for them to listen on.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { TestContext } from './servers.ts'

/** The project folder (entry points are spawned from here). */
export const PROJECT_DIR = join(import.meta.dirname, '..', '..')

/**
 * Settings of the test runner's TypeScript loader (which execArgv names), so
 * that a spawned entry point runs as the tests do; nothing of the service's
 * own configuration.
 */
export function runnerEnv (): Record<string, string> {
  const env: Record<string, string> = {}
  for (const [name, value] of Object.entries(process.env)) {
    if (value === undefined) continue
    if (name === 'PATH' || name === 'HOME' || name === 'FASTIFY_AUTOLOAD_TYPESCRIPT' || name === 'TAP_TYPE_STRIP_ONLY' ||
      name.startsWith('TS_NODE_') || name.startsWith('_TAPJS_PROCESSINFO_')) env[name] = value
  }
  const typeStripping = typeStrippingOptions(process.env.NODE_OPTIONS)
  if (typeStripping !== '') env.NODE_OPTIONS = typeStripping
  return env
}

/**
 * The flags that the runner puts in NODE_OPTIONS for Node's type stripping
 * (Node 22 needs them, Node 24 none), without the rest: its process-info
 * hook adds itself to every spawned child anyway, and a developer's own
 * options stay out.
 */
function typeStrippingOptions (nodeOptions: string | undefined): string {
  const flags = new Set(['--experimental-strip-types', '--no-warnings'])
  return (nodeOptions ?? '').split(/\s+/).filter((flag) => flags.has(flag)).join(' ')
}

/**
 * What every spawned entry point gets unless the test says otherwise: the
 * admin listener on a port the system picks, since test files run in
 * parallel and the default port would be taken by the first.
 */
export const SPAWNED_SERVICE_DEFAULTS: Record<string, string> = { ADMIN_PORT: '0' }

export interface RunResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  ms: number
}

export interface RunOptions {
  /** exactly these variables (plus the loader settings and SPAWNED_SERVICE_DEFAULTS) */
  env?: Record<string, string>
  /** written to the child's standard input, which is then closed */
  stdin?: string
  cwd?: string
  /** killed (SIGKILL) after this long; default 60 s */
  timeoutMs?: number
}

/** Runs a TypeScript entry point of the project (`cli/index.ts`, say) to its end. */
export async function runEntry (entry: string, args: string[], options: RunOptions = {}): Promise<RunResult> {
  const started = Date.now()
  const child = spawn(process.execPath, [...process.execArgv, join(PROJECT_DIR, entry), ...args], {
    cwd: options.cwd ?? PROJECT_DIR,
    env: { ...runnerEnv(), ...SPAWNED_SERVICE_DEFAULTS, ...options.env },
    stdio: ['pipe', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  child.stdin.end(options.stdin ?? '')
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 60_000)
  return await new Promise((resolve, reject) => {
    child.on('error', reject)
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      resolve({ code, signal, stdout, stderr, ms: Date.now() - started })
    })
  })
}

// The benchmark's: a TCP port that was free a moment ago (nothing listens on it).
export { freePort } from '../../bench/common.ts'

export interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
}

/** A child process of a test: its output collected, killed (SIGKILL) at teardown if still running. */
export class TestProcess {
  readonly child: ChildProcessWithoutNullStreams
  readonly exited: Promise<Exit>
  stdout = ''
  stderr = ''

  constructor (t: TestContext, command: string, args: string[], options: { cwd: string, env: Record<string, string> }) {
    this.child = spawn(command, args, options)
    this.child.stdout.setEncoding('utf8').on('data', (chunk: string) => { this.stdout += chunk })
    this.child.stderr.setEncoding('utf8').on('data', (chunk: string) => { this.stderr += chunk })
    this.exited = new Promise((resolve) => {
      this.child.on('close', (code, signal) => resolve({ code, signal }))
    })
    t.teardown(async () => {
      if (this.running) {
        this.child.kill('SIGKILL')
        await this.exited
      }
    })
  }

  /** Both streams, stdout first. */
  get output (): string {
    return this.stdout + this.stderr
  }

  get running (): boolean {
    return this.child.exitCode === null && this.child.signalCode === null
  }

  /** The process's log lines, parsed (pino writes one JSON object a line). */
  logLines (): Array<Record<string, unknown>> {
    return this.stdout.split('\n').filter((line) => line !== '').map((line) => JSON.parse(line) as Record<string, unknown>)
  }

  /** Resolves with the exit, or undefined if the process still runs after `ms`. */
  async exitWithin (ms: number): Promise<Exit | undefined> {
    // An unref'd timer: a process that exits early must not keep the test file alive for the rest of `ms`.
    return await Promise.race([this.exited, sleep(ms, undefined, { ref: false })])
  }
}

/** server.ts as a process of its own, with exactly `env` (plus the loader settings and SPAWNED_SERVICE_DEFAULTS). */
export class ServerProcess extends TestProcess {
  constructor (t: TestContext, env: Record<string, string>) {
    super(t, process.execPath, [...process.execArgv, 'server.ts'], { cwd: PROJECT_DIR, env: { ...runnerEnv(), ...SPAWNED_SERVICE_DEFAULTS, ...env } })
  }
}
