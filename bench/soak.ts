// A soak test (not a test of the suite, not run in CI): the service, one
// process, for a long time at a steady fraction of its token throughput, with
// a mix of endpoints. It reports errors, latency and the service's resident
// memory over time, to show leaks, slow drifts and periodic stalls that a
// 10 s benchmark cannot.
//
//   npm run build && node dist/bench/soak.js
//   SOAK_SECONDS=3600 SOAK_INTERVAL=60 node dist/bench/soak.js
//
// 1. The service as in bench/run.ts: node dist/server.js on a fresh database
//    of the local PostgreSQL (BENCH_DATABASE_URL) and its own key prefix in
//    Redis (BENCH_REDIS_URL), a generated RS256 key passed in its
//    environment, one client made by the service's own insertClientRow (at
//    its default bcrypt cost, 12, as the CLI makes them; with a rate limit
//    no soak reaches), LOG_LEVEL=warn. One token request then, so that the
//    client's secret is checked and remembered before any load.
// 2. Without SOAK_RATE, a calibration: client_credentials for 10 s with 50
//    connections (after a 2 s warm-up), by autocannon (bench/load.js); the
//    rate offered is 70 % of it.
// 3. The soak: this script again, in a process of its own (so that the load
//    does not share the service's event loop or the report's), sends
//    requests at the fixed rate, open loop (a slow answer does not slow the
//    sending; each endpoint has its own pool of up to 256 keep-alive
//    connections), in a fixed mix: MIX below. Verify, introspect and revoke use
//    tokens issued during the soak; each refresh token is used once, and the
//    chain goes on with the one its answer returns. Any answer but the
//    expected one is an error: another status (a 429 too), a verify that
//    says invalid or an introspection that says inactive (no token of the
//    pool is revoked while a request about it is in flight), a network error,
//    no answer within 10 s.
// 4. Every SOAK_INTERVAL seconds one line on stdout: the requests answered in
//    the interval, their rate, errors, p50, p99 and max latency (all
//    endpoints together), p50 and p99 of client_credentials alone, the
//    service's resident size (VmRSS) and CPU, and the machine's load
//    average. At the end a summary, and everything as JSON in
//    bench/soak-results.json.
// 5. The service is stopped with SIGTERM (an exit other than 0 is reported),
//    the database dropped, the Redis keys of the prefix deleted.
//
// A soak longer than the service's SECRET_CACHE_TTL (300 s) crosses the
// expiry of the remembered client secret: the token, introspect and revoke
// requests that arrive before a new bcrypt check ends each start one.
//
// Settings: SOAK_SECONDS (default 600), SOAK_RATE (requests per second
// offered, all endpoints together; default 70 % of the calibration),
// SOAK_INTERVAL (seconds per report line, default 30), BENCH_DATABASE_URL,
// BENCH_REDIS_URL. SIGINT or SIGTERM ends the soak early, with the summary and
// the clean-up. Exit code 0 when no request failed, else 1.
import { execFile, fork, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { LoadResult, Scenario } from './load.ts'
import { deleteKeys, freePort, waitFor } from './common.ts'
import { generate } from './soak-generator.ts'
import { ACCESS_POOL_SIZE, FORM, type GeneratorMessage, type GeneratorSettings, type GeneratorTotals, MIX, MIX_TOTAL, REQUEST_TIMEOUT_MS, round } from './soak-messages.ts'
import { cpuSeconds, rssMiB, type SoakService, startService } from './soak-service.ts'
import { fmt, intervalHeader, intervalLine, type IntervalRow, type Summary, summarize, summaryLines } from './soak-summary.ts'

const here = fileURLToPath(new URL('.', import.meta.url))
const root = join(here, '..', '..')

const CALIBRATION_SECONDS = 10
const CALIBRATION_CONNECTIONS = 50
const CALIBRATION_SHARE = 0.7
const ADMIN_URL = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379'
const CLIENT_ID = 'soak-client'

// ---- the soak (the parent process) -------------------------------------------

function log (line: string): void {
  process.stderr.write(`${line}\n`)
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

/** The client as the CLI makes one, and its first token; the Basic header that authenticates it. */
async function registerClient (pg: typeof import('pg').default, databaseUrl: string, url: string, clientId: string, clientSecret: string): Promise<string> {
  const { insertClientRow } = await import('../plugins/clients.ts')
  // Its secret hashed at the service's bcrypt cost (12; bench/run.ts uses the
  // floor, 10, for speed), which is what each expiry of the service's secret
  // cache costs.
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 1 })
  await insertClientRow(pool, { id: clientId, secret: clientSecret, name: 'soak', rateLimit: 2_000_000_000, scopes: ['soak:read'], defaultScopes: ['soak:read'] })
  await pool.end()
  // One token request first, so that the secret is checked with bcrypt
  // (and remembered) before any load, not by a herd of first requests.
  const basic = 'Basic ' + Buffer.from(`${clientId}:${clientSecret}`).toString('base64')
  const first = await fetch(`${url}/oauth/token`, { method: 'POST', headers: { authorization: basic, 'content-type': FORM }, body: 'grant_type=client_credentials' })
  if (first.status !== 200) throw new Error(`the first token request answered ${first.status}: ${await first.text()}`)
  return basic
}

/** The service's client_credentials throughput, after a warm-up. */
async function calibrate (url: string, basic: string): Promise<LoadResult> {
  const scenario: Scenario = { url, connections: CALIBRATION_CONNECTIONS, duration: 2, kind: 'form', path: '/oauth/token', body: 'grant_type=client_credentials', headers: { authorization: basic } }
  log(`calibration: client_credentials, ${CALIBRATION_CONNECTIONS} connections, 2 s warm-up then ${CALIBRATION_SECONDS} s`)
  await load(scenario)
  const calibration = await load({ ...scenario, duration: CALIBRATION_SECONDS })
  log(`calibration: ${Math.round(calibration.rps)} req/s, p50 ${calibration.p50} ms, p99 ${calibration.p99} ms, errors ${calibration.errors + calibration.timeouts}, non-2xx ${calibration.non2xx}`)
  if (calibration.errors + calibration.timeouts + calibration.non2xx > 0 || calibration.rps <= 0) throw new Error('the calibration run had errors; no rate to derive')
  return calibration
}

/**
 * The load generator (this file again, SOAK_ROLE=generator): a line per
 * interval as its reports come, with the service's and its own CPU and the
 * service's resident size; resolves with its totals once it has exited.
 */
async function runGenerator (settings: GeneratorSettings, service: ChildProcess, rows: IntervalRow[], started: (forked: ChildProcess) => void): Promise<GeneratorTotals> {
  let previous = { at: performance.now(), service: cpuSeconds(service.pid), generator: null as number | null }
  const forked = fork(fileURLToPath(import.meta.url), [], {
    env: { ...process.env, SOAK_ROLE: 'generator', SOAK_GENERATOR: JSON.stringify(settings) },
    detached: true,
    stdio: ['ignore', 'inherit', 'inherit', 'ipc']
  })
  started(forked)
  previous.generator = cpuSeconds(forked.pid)
  const totals = await new Promise<GeneratorTotals>((resolve, reject) => {
    forked.on('message', (message: GeneratorMessage) => {
      if (message.type === 'done') {
        resolve(message.totals)
        return
      }
      const now = performance.now()
      const seconds = (now - previous.at) / 1000
      const serviceCpu = cpuSeconds(service.pid)
      const generatorCpu = cpuSeconds(forked.pid)
      const percent = (after: number | null, before: number | null): number | null =>
        after === null || before === null || seconds <= 0 ? null : round((after - before) / seconds * 100)
      const row: IntervalRow = {
        ...message.report,
        rssMiB: rssMiB(service.pid),
        cpuPercent: percent(serviceCpu, previous.service),
        generatorCpuPercent: percent(generatorCpu, previous.generator),
        load1: round(loadavg()[0] ?? 0, 2)
      }
      previous = { at: now, service: serviceCpu, generator: generatorCpu }
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
function writeResults (settings: { seconds: number, interval: number, rate: number }, calibration: LoadResult | undefined, rows: IntervalRow[], totals: GeneratorTotals, summary: Summary, service: SoakService, interrupted: boolean): void {
  const rateFrom = calibration === undefined ? '' : ` (${CALIBRATION_SHARE * 100} % of ${Math.round(calibration.rps)} req/s client_credentials)`
  const lines = summaryLines(summary, totals, { rateFrom, interrupted, intervals: rows.length, serviceLog: service.log, exitedEarlyAt: service.exitedEarly()?.at })
  for (const text of lines) process.stdout.write(`${text}\n`)
  const results = {
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, model: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version },
    settings: {
      ...settings,
      rateFrom: calibration === undefined ? 'SOAK_RATE' : `${CALIBRATION_SHARE} × calibration`,
      mix: Object.fromEntries(MIX.map(([kind, weight]) => [kind, weight / MIX_TOTAL])),
      accessPool: ACCESS_POOL_SIZE,
      requestTimeoutMs: REQUEST_TIMEOUT_MS
    },
    calibration: calibration === undefined ? null : { seconds: CALIBRATION_SECONDS, connections: CALIBRATION_CONNECTIONS, ...calibration },
    intervals: rows,
    totals,
    summary,
    serviceLog: Object.fromEntries(service.log),
    interrupted
  }
  const file = join(root, 'bench', 'soak-results.json')
  writeFileSync(file, JSON.stringify(results, null, 2) + '\n')
  process.stdout.write(`\nwritten to ${file}\n`)
}

/** 1. the service; 2. the rate; 3. the soak; 4. the service stops; 5. the summary. */
async function soak (databaseUrl: string, redisPrefix: string, work: string, run: SoakRun): Promise<number> {
  log(`session-service soak: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node.js ${process.version}, load average ${loadavg().map((value) => value.toFixed(2)).join(' ')}`)
  const port = await freePort()
  const url = `http://127.0.0.1:${port}`
  const service = startService({ root, cwd: work, port, databaseUrl, redisUrl: REDIS_URL, redisPrefix }, log)
  run.service = service.child
  await waitFor(`${url}/health`, service.child)
  const { default: pg } = await import('pg')
  const basic = await registerClient(pg, databaseUrl, url, CLIENT_ID, run.clientSecret)

  const calibration = run.rate === undefined ? await calibrate(url, basic) : undefined
  const rate = run.rate ?? Math.round(calibration!.rps * CALIBRATION_SHARE)
  const mix = MIX.map(([kind, weight]) => `${kind} ${round(weight / MIX_TOTAL * 100)} %`).join(', ')
  log(`soak: ${run.seconds} s at ${rate} req/s offered${calibration === undefined ? ' (SOAK_RATE)' : ` (${CALIBRATION_SHARE * 100} % of the calibration)`}, a line every ${run.interval} s; mix: ${mix}`)

  const rows: IntervalRow[] = []
  const rssBefore = rssMiB(service.child.pid)
  log(`service resident size before the soak: ${fmt(rssBefore)} MiB`)
  process.stdout.write(intervalHeader() + '\n')
  const settings: GeneratorSettings = { url, rate, seconds: run.seconds, interval: run.interval, clientId: CLIENT_ID, clientSecret: run.clientSecret }
  const totals = await runGenerator(settings, service.child, rows, (forked) => {
    run.generator = forked
    if (run.interrupted) forked.send({ type: 'stop' })
  })

  const exit = await service.stop()
  const summary = summarize(rows, totals, rate, rssBefore, exit)
  writeResults({ seconds: run.seconds, interval: run.interval, rate }, calibration, rows, totals, summary, service, run.interrupted)
  return totals.errors === 0 ? 0 : 1
}

/** What the clean-up and the signal handlers need to know of a soak under way. */
interface SoakRun {
  /** SOAK_SECONDS, SOAK_INTERVAL, SOAK_RATE */
  seconds: number
  interval: number
  rate: number | undefined
  clientSecret: string
  interrupted: boolean
  service?: ChildProcess
  generator?: ChildProcess
}

async function main (): Promise<number> {
  const run: SoakRun = {
    seconds: setting('SOAK_SECONDS') ?? 600,
    interval: setting('SOAK_INTERVAL') ?? 30,
    rate: setting('SOAK_RATE'),
    clientSecret: randomBytes(24).toString('base64url'),
    interrupted: false
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
    const { generator, service } = run
    if (generator !== undefined && generator.exitCode === null && generator.signalCode === null) generator.kill('SIGKILL')
    if (service !== undefined && service.exitCode === null && service.signalCode === null) {
      const exited = new Promise((resolve) => service.once('exit', resolve))
      service.kill('SIGTERM')
      const timer = setTimeout(() => service.kill('SIGKILL'), 30_000)
      await exited
      clearTimeout(timer)
    }
    await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`)
    await admin.end()
    await deleteKeys(REDIS_URL, redisPrefix)
    rmSync(work, { recursive: true, force: true })
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
