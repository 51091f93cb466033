// The service under the soak: started as a process of its own (dist/server.js)
// with its key in its environment only, watched (its log, its resident size
// and CPU time), and stopped with SIGTERM at the end, its exit part of the result.
import { spawn, type ChildProcess } from 'node:child_process'
import { generateKeyPairSync } from 'node:crypto'
import { createWriteStream, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { round } from './soak-messages.ts'

const CLK_TCK = 100

/** Resident set size in MiB; null once the process is gone. */
export function rssMiB (pid: number | undefined): number | null {
  try {
    const kib = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid ?? 0}/status`, 'utf8'))?.[1])
    return Number.isFinite(kib) ? round(kib / 1024) : null
  } catch {
    return null
  }
}

/** CPU time (user + system) in seconds; null once the process is gone. */
export function cpuSeconds (pid: number | undefined): number | null {
  try {
    const stat = readFileSync(`/proc/${pid ?? 0}/stat`, 'utf8')
    // After the command name, in parentheses: state is field 3, utime 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK
  } catch {
    return null
  }
}

export interface ServiceExit {
  code: number | null
  signal: string | null
  /** seconds from SIGTERM to exit */
  seconds: number
  killed: boolean
  /** it had exited before it was asked to */
  early: boolean
}

export interface ServiceSettings {
  root: string
  /** the working folder: no .env of the developer's is read */
  cwd: string
  /** how the soak's lines name this instance */
  name: string
  port: number
  databaseUrl: string
  redisUrl: string
  /** REDIS_CLUSTER_NODES; undefined: one Redis server */
  redisClusterNodes: string | undefined
  redisPrefix: string
  /** PKCS#8 PEM, the same for every instance: each verifies what the others sign */
  jwtPrivateKey: string
  /** every line the service logs (warn and above) is kept there */
  logFile: string
}

export interface SoakService {
  name: string
  port: number
  url: string
  logFile: string
  child: ChildProcess
  /** its log (warn and above): each kind of line counted, the first shown */
  log: Map<string, { count: number, first: string }>
  /** when it exited before it was asked to: how, and how many seconds after its start */
  exitedEarly: () => { code: number | null, signal: string | null, at: number } | undefined
  /** SIGTERM, then SIGKILL after 30 s */
  stop: () => Promise<ServiceExit>
}

/** An RS256 signing key for the soak's instances. */
export function generateSigningKey (): string {
  return generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
}

export function startService (settings: ServiceSettings, log: (line: string) => void): SoakService {
  const child = spawn(process.execPath, [join(settings.root, 'dist', 'server.js')], {
    cwd: settings.cwd,
    env: {
      PATH: process.env.PATH ?? '',
      SERVER_HOST: '127.0.0.1',
      SERVER_PORT: String(settings.port),
      // The admin listener on any free port: 9090 may be taken on the machine.
      ADMIN_PORT: '0',
      LOG_LEVEL: 'warn',
      DATABASE_URL: settings.databaseUrl,
      REDIS_URL: settings.redisUrl,
      ...(settings.redisClusterNodes === undefined ? {} : { REDIS_CLUSTER_NODES: settings.redisClusterNodes }),
      REDIS_KEY_PREFIX: settings.redisPrefix,
      JWT_PRIVATE_KEY: settings.jwtPrivateKey,
      JWT_ISSUER: 'https://auth.soak.example',
      RATE_LIMIT_DEFAULT: '100000000'
    },
    // Its own process group: a Ctrl-C in the terminal reaches this script
    // only, which then ends the soak in order.
    detached: true,
    stdio: ['ignore', 'pipe', 'inherit']
  })
  const started = Date.now()
  let exitedEarly: { code: number | null, signal: string | null, at: number } | undefined
  let stopRequested = false
  child.once('exit', (code, signal) => {
    if (stopRequested) return
    exitedEarly = { code, signal, at: round((Date.now() - started) / 1000) }
    log(`${settings.name} exited on its own: code ${code}, signal ${signal}`)
  })
  const serviceLog = countLogLines(child, settings, log)
  const stop = async (): Promise<ServiceExit> => {
    stopRequested = true
    return await stopService(child)
  }
  const { name, port, logFile } = settings
  return { name, port, url: `http://127.0.0.1:${port}`, logFile, child, log: serviceLog, exitedEarly: () => exitedEarly, stop }
}

/** Each line of the service's log kept in its file, each kind counted, the first of each kind shown. */
function countLogLines (child: ChildProcess, settings: ServiceSettings, log: (line: string) => void): Map<string, { count: number, first: string }> {
  const file = createWriteStream(settings.logFile)
  child.once('exit', () => file.end())
  const serviceLog = new Map<string, { count: number, first: string }>()
  createInterface({ input: child.stdout! }).on('line', (line) => {
    file.write(`${line}\n`)
    let key = line.slice(0, 120)
    try {
      const entry = JSON.parse(line) as { level?: number, msg?: string }
      key = `${entry.level ?? '?'} ${entry.msg ?? ''}`
    } catch {}
    const seen = serviceLog.get(key)
    if (seen !== undefined) seen.count++
    else {
      serviceLog.set(key, { count: 1, first: line.slice(0, 2000) })
      log(`${settings.name} log (first of its kind): ${line.slice(0, 500)}`)
    }
  })
  return serviceLog
}

async function stopService (child: ChildProcess): Promise<ServiceExit> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return { code: child.exitCode, signal: child.signalCode, seconds: 0, killed: false, early: true }
  }
  const asked = performance.now()
  const exited = new Promise<[number | null, string | null]>((resolve) => child.once('exit', (code, signal) => resolve([code, signal])))
  child.kill('SIGTERM')
  let killed = false
  const timer = setTimeout(() => {
    killed = true
    child.kill('SIGKILL')
  }, 30_000)
  const [code, signal] = await exited
  clearTimeout(timer)
  return { code, signal, seconds: round((performance.now() - asked) / 1000, 2), killed, early: false }
}
