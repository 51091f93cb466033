// The benchmark's processes, each pinned to its core with taskset: the
// service and the ceilings on SERVER_CORE, every load generator on LOAD_CORE,
// so that the load generator never takes CPU from what it measures.
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { LoadResult, Scenario } from './load.ts'
import { freePort, waitFor } from './common.ts'

export const SERVER_CORE = '0'
export const LOAD_CORE = '1'

const here = fileURLToPath(new URL('.', import.meta.url))
const root = join(here, '..', '..')

export interface Server {
  url: string
  child: ChildProcess
}

export async function stop (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  await exited
}

/** taskset execs the program, so the child's pid is the program's. */
function spawnPinned (core: string, args: string[], options: { cwd?: string, env: NodeJS.ProcessEnv }): ChildProcess {
  return spawn('taskset', ['-c', core, process.execPath, ...args], { ...options, stdio: ['ignore', 'ignore', 'inherit'] })
}

/**
 * One service process (node dist/server.js) on SERVER_CORE. `nodeOptions`:
 * flags for node itself, such as --cpu-prof.
 */
export async function startService (env: Record<string, string>, cwd: string, nodeOptions: string[] = []): Promise<Server> {
  const port = await freePort()
  const child = spawnPinned(SERVER_CORE, [...nodeOptions, join(root, 'dist', 'server.js')], {
    cwd, // no .env of the developer's is read
    env: { PATH: process.env.PATH ?? '', SERVER_HOST: '127.0.0.1', SERVER_PORT: String(port), ADMIN_PORT: '0', LOG_LEVEL: 'warn', ...env }
  })
  const url = `http://127.0.0.1:${port}`
  await waitFor(`${url}/health`, child)
  return { url, child }
}

/** The ceilings server (bench/bare.ts) on SERVER_CORE, with its settings in `settingsFile`. */
export async function startCeilings (settingsFile: string): Promise<Server> {
  const port = await freePort()
  const child = spawnPinned(SERVER_CORE, [join(here, 'bare.js')], {
    env: { PATH: process.env.PATH ?? '', BENCH_PORT: String(port), BENCH_CEILINGS: settingsFile }
  })
  const url = `http://127.0.0.1:${port}`
  await waitFor(`${url}/jwks`, child)
  return { url, child }
}

/** One run of the load generator (bench/load.ts) on LOAD_CORE. */
export async function runLoad (scenario: Scenario): Promise<LoadResult> {
  const args = ['-c', LOAD_CORE, process.execPath, join(here, 'load.js')]
  return await new Promise((resolve, reject) => {
    execFile('taskset', args, { env: { ...process.env, BENCH_SCENARIO: JSON.stringify(scenario) }, maxBuffer: 1 << 20 }, (err, stdout) => {
      if (err !== null) reject(err)
      else resolve(JSON.parse(stdout) as LoadResult)
    })
  })
}

// Linux reports a process's CPU time in clock ticks, 100 per second on the
// kernels this runs on (USER_HZ).
const TICKS_PER_SECOND = 100

/** CPU seconds (user and system) that a process has used so far (Linux). */
export function cpuSeconds (pid: number | undefined): number {
  const stat = readFileSync(`/proc/${pid ?? 0}/stat`, 'utf8')
  // The fields after the command name, which is in parentheses and may hold spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND
}

/** A load run, with the CPU that `server` used during it, in seconds per second (1 = its core saturated). */
export async function runLoadOn (server: Server, scenario: Scenario): Promise<LoadResult & { serverCpu: number }> {
  const before = { cpu: cpuSeconds(server.child.pid), at: performance.now() }
  const result = await runLoad(scenario)
  const used = cpuSeconds(server.child.pid) - before.cpu
  return { ...result, serverCpu: Math.round(used / ((performance.now() - before.at) / 1000) * 100) / 100 }
}
