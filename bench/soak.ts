// A soak test (not a test of the suite, not run in CI): the service, one or
// several processes, for a long time at a steady fraction of its token
// throughput, with a mix of endpoints. It reports errors, latency and each
// process's resident memory over time, to show leaks, slow drifts and
// periodic stalls that a 10 s benchmark cannot, and with several processes,
// that what one of them revokes or rotates holds on the others.
//
//   npm run build && node dist/bench/soak.js
//   SOAK_SECONDS=3600 SOAK_INTERVAL=60 node dist/bench/soak.js
//   SOAK_INSTANCES=3 BENCH_REDIS_CLUSTER_NODES=127.0.0.1:7000,127.0.0.1:7001 node dist/bench/soak.js
//
// 1. SOAK_INSTANCES processes of the service (node dist/server.js), started
//    together, each on its own port (its admin listener on any free one), all
//    on one fresh database of the local PostgreSQL (BENCH_DATABASE_URL), one
//    key prefix in Redis and one generated RS256 key passed in their
//    environment, LOG_LEVEL=warn. Redis is one server (BENCH_REDIS_URL) or,
//    with BENCH_REDIS_CLUSTER_NODES, a Redis Cluster: the nodes are the
//    instances' REDIS_CLUSTER_NODES and REDIS_URL is BENCH_REDIS_URL or
//    redis://<the first node>. One client made by the service's own
//    insertClientRow (at its default bcrypt cost, 12, as the CLI makes them;
//    with a rate limit no soak reaches). One token request to each instance
//    then, so that each checks the client's secret and remembers it before
//    any load.
// 2. Without SOAK_RATE, a calibration: client_credentials for 10 s with 50
//    connections in all, shared out among the instances (after a 2 s
//    warm-up), by autocannon (bench/load.js, one process per instance); the
//    rate offered is 70 % of their sum.
// 3. The soak: this script again, in a process of its own (so that the load
//    does not share a service's event loop or the report's), sends
//    requests at the fixed rate, open loop (a slow answer does not slow the
//    sending; each endpoint has its own pool of up to 256 keep-alive
//    connections per instance), in a fixed mix: MIX below, each request to
//    the next instance in turn, so that a token issued by one instance is
//    refreshed, verified, introspected and revoked through the others.
//    Verify, introspect and revoke use tokens issued during the soak; each
//    refresh token is used once, and the chain goes on with the one its
//    answer returns. 1 s after each revocation answered 200, on top of the
//    rate, the token is verified on the next instance, which must say
//    revoked; a revoked refresh token is also verified through its session's
//    access token, and presented again for a refresh, which must fail with
//    invalid_grant. Any answer but the expected one is an error: another
//    status (a 429 too), a verify that says invalid or an introspection that
//    says inactive (no token of the pool is revoked while a request about it
//    is in flight), a revoked token still valid after 1 s, a network error,
//    no answer within 10 s.
// 4. Every SOAK_INTERVAL seconds one line on stdout: the requests answered in
//    the interval, their rate, errors, p50, p99 and max latency (all
//    endpoints together), p50 and p99 of client_credentials alone, each
//    instance's resident size (VmRSS), CPU and requests, and the machine's
//    load average. At the end a summary, and everything as JSON in
//    bench/soak-results.json. Each instance's log is kept in a file of the
//    temporary folder (the summary names it).
// 5. The instances are stopped with SIGTERM (an exit other than 0 is
//    reported), the database dropped, the Redis keys of the prefix deleted
//    (on every master of a cluster).
//
// A soak longer than the service's SECRET_CACHE_TTL (300 s) crosses the
// expiry of the remembered client secret: on each instance, the token,
// introspect and revoke requests that arrive before a new bcrypt check ends
// each start one.
//
// Settings: SOAK_SECONDS (default 600), SOAK_RATE (requests per second
// offered, all endpoints and instances together; default 70 % of the
// calibration), SOAK_INTERVAL (seconds per report line, default 30),
// SOAK_INSTANCES (default 1), BENCH_DATABASE_URL, BENCH_REDIS_URL,
// BENCH_REDIS_CLUSTER_NODES (comma-separated host:port). SIGINT or SIGTERM
// ends the soak early, with the summary and the clean-up. Exit code 0 when no
// request failed, else 1.
import { execFile, fork, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { LoadResult, Scenario } from './load.ts'
import { deleteKeys, freePort, waitFor } from './common.ts'
import { deleteClusterKeys, parseClusterNodes } from './cluster-keys.ts'
import { generate } from './soak-generator.ts'
import { ACCESS_POOL_SIZE, CROSS_CHECK_DELAY_MS, FORM, type GeneratorMessage, type GeneratorSettings, type GeneratorTotals, MIX, MIX_TOTAL, REQUEST_TIMEOUT_MS, round } from './soak-messages.ts'
import { cpuSeconds, generateSigningKey, rssMiB, type SoakService, startService } from './soak-service.ts'
import { fmt, intervalHeader, intervalLine, type IntervalRow, type Summary, summarize, summaryLines } from './soak-summary.ts'

const here = fileURLToPath(new URL('.', import.meta.url))
const root = join(here, '..', '..')

const CALIBRATION_SECONDS = 10
const CALIBRATION_CONNECTIONS = 50
const CALIBRATION_SHARE = 0.7
const ADMIN_URL = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const CLUSTER_NODES = nonEmpty(process.env.BENCH_REDIS_CLUSTER_NODES)
const REDIS_URL = nonEmpty(process.env.BENCH_REDIS_URL) ?? (CLUSTER_NODES === undefined ? 'redis://127.0.0.1:6379' : firstNodeUrl(CLUSTER_NODES))
const REDIS_MODE = CLUSTER_NODES === undefined ? 'single' : 'cluster'
const CLIENT_ID = 'soak-client'

// ---- the soak (the parent process) -------------------------------------------

function log (line: string): void {
  process.stderr.write(`${line}\n`)
}

function nonEmpty (raw: string | undefined): string | undefined {
  return raw === undefined || raw.trim() === '' ? undefined : raw.trim()
}

function firstNodeUrl (nodes: string): string {
  const first = parseClusterNodes(nodes)[0]
  if (first === undefined) throw new Error('BENCH_REDIS_CLUSTER_NODES lists no node')
  return `redis://${first.host.includes(':') ? `[${first.host}]` : first.host}:${first.port}`
}

function setting (name: string): number | undefined {
  const raw = process.env[name]
  if (raw === undefined || raw.trim() === '') return undefined
  const value = Number(raw)
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} must be a positive number, not ${JSON.stringify(raw)}`)
  return value
}

async function load (scenario: Scenario): Promise<LoadResult> {
  return await new Promise((resolve, reject) => {
    execFile(process.execPath, [join(here, 'load.js')], { env: { ...process.env, BENCH_SCENARIO: JSON.stringify(scenario) }, maxBuffer: 1 << 20 }, (err, stdout) => {
      if (err !== null) reject(err)
      else resolve(JSON.parse(stdout) as LoadResult)
    })
  })
}

/** The instances, started together on one database and one key prefix; resolves once each answers. */
async function startInstances (count: number, databaseUrl: string, redisPrefix: string, work: string, run: SoakRun): Promise<SoakService[]> {
  const jwtPrivateKey = generateSigningKey()
  const logFolder = mkdtempSync(join(tmpdir(), 'session-service-soak-logs-'))
  for (let index = 0; index < count; index++) {
    const port = await freePort()
    const name = `instance ${index + 1}`
    const logFile = join(logFolder, `instance-${index + 1}.log`)
    run.services.push(startService({ root, cwd: work, name, port, databaseUrl, redisUrl: REDIS_URL, redisClusterNodes: CLUSTER_NODES, redisPrefix, jwtPrivateKey, logFile }, log))
  }
  await Promise.all(run.services.map(async (service) => await waitFor(`${service.url}/health`, service.child)))
  log(`${count} instance${count === 1 ? ' on port' : 's on ports'} ${run.services.map((service) => service.port).join(', ')}; Redis ${REDIS_MODE === 'cluster' ? `Cluster (${CLUSTER_NODES})` : 'single server'}; logs in ${logFolder}`)
  return run.services
}

/** The client as the CLI makes one, and its first token from each instance; the Basic header that authenticates it. */
async function registerClient (databaseUrl: string, urls: string[], clientId: string, clientSecret: string): Promise<string> {
  const { default: pg } = await import('pg')
  const { insertClientRow } = await import('../plugins/clients.ts')
  // Its secret hashed at the service's bcrypt cost (12; bench/run.ts uses the
  // floor, 10, for speed), which is what each expiry of the service's secret
  // cache costs.
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 1 })
  await insertClientRow(pool, { id: clientId, secret: clientSecret, name: 'soak', rateLimit: 2_000_000_000, scopes: ['soak:read'], defaultScopes: ['soak:read'] })
  await pool.end()
  // One token request to each instance first, so that each checks the secret
  // with bcrypt (and remembers it) before any load, not for a herd of first requests.
  const basic = 'Basic ' + Buffer.from(`${clientId}:${clientSecret}`).toString('base64')
  for (const url of urls) {
    const first = await fetch(`${url}/oauth/token`, { method: 'POST', headers: { authorization: basic, 'content-type': FORM }, body: 'grant_type=client_credentials' })
    if (first.status !== 200) throw new Error(`the first token request to ${url} answered ${first.status}: ${await first.text()}`)
  }
  return basic
}

/** The instances' client_credentials throughput together, after a warm-up: one load generator per instance, the connections shared out. */
async function calibrate (urls: string[], basic: string): Promise<LoadResult> {
  const connections = Math.max(1, Math.round(CALIBRATION_CONNECTIONS / urls.length))
  const scenario = (url: string, duration: number): Scenario => ({ url, connections, duration, kind: 'form', path: '/oauth/token', body: 'grant_type=client_credentials', headers: { authorization: basic } })
  log(`calibration: client_credentials, ${connections * urls.length} connections (${connections} per instance), 2 s warm-up then ${CALIBRATION_SECONDS} s`)
  await Promise.all(urls.map(async (url) => await load(scenario(url, 2))))
  const results = await Promise.all(urls.map(async (url) => await load(scenario(url, CALIBRATION_SECONDS))))
  const sum = (pick: (result: LoadResult) => number): number => results.reduce((total, result) => total + pick(result), 0)
  const calibration: LoadResult = {
    requests: sum((result) => result.requests),
    rps: sum((result) => result.rps),
    // Per instance they are alike; the slowest instance's stands for all.
    p50: Math.max(...results.map((result) => result.p50)),
    p99: Math.max(...results.map((result) => result.p99)),
    errors: sum((result) => result.errors),
    timeouts: sum((result) => result.timeouts),
    non2xx: sum((result) => result.non2xx),
    cpu: sum((result) => result.cpu)
  }
  const each = results.length === 1 ? '' : ` (${results.map((result) => Math.round(result.rps)).join(' + ')})`
  log(`calibration: ${Math.round(calibration.rps)} req/s${each}, p50 ${calibration.p50} ms, p99 ${calibration.p99} ms (the slowest instance's), errors ${calibration.errors + calibration.timeouts}, non-2xx ${calibration.non2xx}`)
  if (calibration.errors + calibration.timeouts + calibration.non2xx > 0 || calibration.rps <= 0) throw new Error('the calibration run had errors; no rate to derive')
  return calibration
}

/** Each instance's CPU seconds and the generator's, at one moment, to measure an interval's CPU from. */
interface CpuMark {
  at: number
  services: Array<number | null>
  generator: number | null
}

function markCpu (services: SoakService[], generator: ChildProcess): CpuMark {
  return { at: performance.now(), services: services.map((service) => cpuSeconds(service.child.pid)), generator: cpuSeconds(generator.pid) }
}

/** The interval's row: the generator's report, and what this process measures of each instance and of the machine. */
function intervalRow (message: GeneratorMessage & { type: 'interval' }, services: SoakService[], before: CpuMark, after: CpuMark): IntervalRow {
  const seconds = (after.at - before.at) / 1000
  const percent = (to: number | null | undefined, from: number | null | undefined): number | null =>
    to == null || from == null || seconds <= 0 ? null : round((to - from) / seconds * 100)
  return {
    ...message.report,
    instances: services.map((service, index) => ({ rssMiB: rssMiB(service.child.pid), cpuPercent: percent(after.services[index], before.services[index]) })),
    generatorCpuPercent: percent(after.generator, before.generator),
    load1: round(loadavg()[0] ?? 0, 2)
  }
}

/**
 * The load generator (this file again, SOAK_ROLE=generator): a line per
 * interval as its reports come; resolves with its totals once it has exited.
 */
async function runGenerator (settings: GeneratorSettings, services: SoakService[], rows: IntervalRow[], started: (forked: ChildProcess) => void): Promise<GeneratorTotals> {
  const forked = fork(fileURLToPath(import.meta.url), [], {
    env: { ...process.env, SOAK_ROLE: 'generator', SOAK_GENERATOR: JSON.stringify(settings) },
    detached: true,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc']
  })
  started(forked)
  let previous = markCpu(services, forked)
  const totals = await new Promise<GeneratorTotals>((resolve, reject) => {
    forked.on('message', (message: GeneratorMessage) => {
      if (message.type === 'done') {
        resolve(message.totals)
        return
      }
      const now = markCpu(services, forked)
      const row = intervalRow(message, services, previous, now)
      previous = now
      rows.push(row)
      process.stdout.write(intervalLine(row) + '\n')
    })
    forked.once('error', reject)
    forked.once('exit', (code, signal) => reject(new Error(`the load generator exited (code ${code}, signal ${signal}) before its report`)))
  })
  await new Promise<void>((resolve) => {
    if (forked.exitCode !== null || forked.signalCode !== null) resolve()
    else forked.once('exit', () => resolve())
  })
  return totals
}

/** The summary on stdout, and everything in bench/soak-results.json. */
function writeResults (settings: { seconds: number, interval: number, rate: number }, calibration: LoadResult | undefined, rows: IntervalRow[], totals: GeneratorTotals, summary: Summary, services: SoakService[], interrupted: boolean): void {
  const rateFrom = calibration === undefined ? ' (SOAK_RATE)' : ` (${CALIBRATION_SHARE * 100} % of ${Math.round(calibration.rps)} req/s client_credentials)`
  const lines = summaryLines(summary, totals, { rateFrom, interrupted, intervals: rows.length, exitedEarlyAt: services.map((service) => service.exitedEarly()?.at) })
  for (const text of lines) process.stdout.write(`${text}\n`)
  const results = {
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, model: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version },
    settings: {
      ...settings,
      instances: services.length,
      redis: REDIS_MODE === 'cluster' ? { mode: REDIS_MODE, nodes: CLUSTER_NODES } : { mode: REDIS_MODE },
      rateFrom: calibration === undefined ? 'SOAK_RATE' : `${CALIBRATION_SHARE} × calibration`,
      mix: Object.fromEntries(MIX.map(([kind, weight]) => [kind, weight / MIX_TOTAL])),
      crossCheckDelayMs: CROSS_CHECK_DELAY_MS,
      accessPool: ACCESS_POOL_SIZE,
      requestTimeoutMs: REQUEST_TIMEOUT_MS
    },
    calibration: calibration === undefined ? null : { seconds: CALIBRATION_SECONDS, connections: CALIBRATION_CONNECTIONS, ...calibration },
    intervals: rows,
    totals,
    summary,
    interrupted
  }
  const file = join(root, 'bench', 'soak-results.json')
  writeFileSync(file, JSON.stringify(results, null, 2) + '\n')
  process.stdout.write(`\nwritten to ${file}\n`)
}

/** 1. the instances; 2. the rate; 3. the soak; 4. the instances stop; 5. the summary. */
async function soak (databaseUrl: string, redisPrefix: string, work: string, run: SoakRun): Promise<number> {
  log(`session-service soak: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node.js ${process.version}, load average ${loadavg().map((value) => value.toFixed(2)).join(' ')}`)
  const services = await startInstances(run.instances, databaseUrl, redisPrefix, work, run)
  const urls = services.map((service) => service.url)
  const basic = await registerClient(databaseUrl, urls, CLIENT_ID, run.clientSecret)

  const calibration = run.rate === undefined ? await calibrate(urls, basic) : undefined
  const rate = run.rate ?? Math.round(calibration!.rps * CALIBRATION_SHARE)
  const mix = MIX.map(([kind, weight]) => `${kind} ${round(weight / MIX_TOTAL * 100)} %`).join(', ')
  log(`soak: ${run.seconds} s at ${rate} req/s offered${calibration === undefined ? ' (SOAK_RATE)' : ` (${CALIBRATION_SHARE * 100} % of the calibration)`} across ${services.length} instance${services.length === 1 ? '' : 's'}, a line every ${run.interval} s; mix: ${mix}`)

  const rows: IntervalRow[] = []
  const rssBefore = services.map((service) => rssMiB(service.child.pid))
  log(`resident size before the soak: ${rssBefore.map((value) => fmt(value)).join(' / ')} MiB`)
  process.stdout.write(intervalHeader(services.length) + '\n')
  const settings: GeneratorSettings = { urls, rate, seconds: run.seconds, interval: run.interval, clientId: CLIENT_ID, clientSecret: run.clientSecret }
  const totals = await runGenerator(settings, services, rows, (forked) => {
    run.generator = forked
    if (run.interrupted) forked.send({ type: 'stop' })
  })

  const exits = await Promise.all(services.map(async (service) => await service.stop()))
  const summary = summarize(rows, totals, rate, REDIS_MODE, services.map((service, index) => ({
    name: service.name, port: service.port, rssBefore: rssBefore[index] ?? null, exit: exits[index]!, exitedEarlyAt: service.exitedEarly()?.at, logFile: service.logFile, serviceLog: service.log
  })))
  writeResults({ seconds: run.seconds, interval: run.interval, rate }, calibration, rows, totals, summary, services, run.interrupted)
  return totals.errors === 0 && summary.perInstance.every((instance) => instance.serviceExitedCleanly) ? 0 : 1
}

/** What the clean-up and the signal handlers need to know of a soak under way. */
interface SoakRun {
  /** SOAK_SECONDS, SOAK_INTERVAL, SOAK_RATE, SOAK_INSTANCES */
  seconds: number
  interval: number
  rate: number | undefined
  instances: number
  clientSecret: string
  interrupted: boolean
  services: SoakService[]
  generator?: ChildProcess
}

/** Whatever is still running is stopped; the database, the keys and the working folder go. */
async function cleanUp (run: SoakRun, admin: import('pg').Client, database: string, redisPrefix: string, work: string): Promise<void> {
  const { generator } = run
  if (generator !== undefined && generator.exitCode === null && generator.signalCode === null) generator.kill('SIGKILL')
  await Promise.all(run.services.map(async ({ child }) => {
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = new Promise((resolve) => child.once('exit', resolve))
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000)
    await exited
    clearTimeout(timer)
  }))
  await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`)
  await admin.end()
  if (CLUSTER_NODES === undefined) await deleteKeys(REDIS_URL, redisPrefix)
  else log(`${await deleteClusterKeys(CLUSTER_NODES, REDIS_URL, redisPrefix)} keys of the prefix deleted on the cluster's masters`)
  rmSync(work, { recursive: true, force: true })
}

async function main (): Promise<number> {
  const run: SoakRun = {
    seconds: setting('SOAK_SECONDS') ?? 600,
    interval: setting('SOAK_INTERVAL') ?? 30,
    rate: setting('SOAK_RATE'),
    instances: Math.round(setting('SOAK_INSTANCES') ?? 1),
    clientSecret: randomBytes(24).toString('base64url'),
    interrupted: false,
    services: []
  }
  const interrupt = (signal: string): void => {
    if (run.interrupted) return
    run.interrupted = true
    log(`${signal}: ending the soak early (summary and clean-up follow)`)
    if (run.generator?.connected === true) run.generator.send({ type: 'stop' })
  }
  process.on('SIGINT', interrupt)
  process.on('SIGTERM', interrupt)

  const { default: pg } = await import('pg')
  const work = mkdtempSync(join(tmpdir(), 'session-service-soak-'))
  const database = `ss_soak_${process.pid}`
  const redisPrefix = `ss-soak:${process.pid}:`
  const admin = new pg.Client({ connectionString: ADMIN_URL })
  await admin.connect()
  await admin.query(`CREATE DATABASE ${database}`)
  const databaseUrl = Object.assign(new URL(ADMIN_URL), { pathname: `/${database}` }).toString()
  try {
    return await soak(databaseUrl, redisPrefix, work, run)
  } finally {
    await cleanUp(run, admin, database, redisPrefix, work)
  }
}

if (process.env.SOAK_ROLE === 'generator') {
  await generate()
} else {
  process.exitCode = await main().catch((err: Error) => {
    log(`soak: ${err.stack ?? err.message}`)
    return 1
  })
}
