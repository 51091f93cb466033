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
import { execFile, fork, spawn, type ChildProcess } from 'node:child_process'
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import type { LoadResult, Scenario } from './load.js'
import { deleteKeys, freePort, waitFor } from './common.js'
import { generate } from './soak-generator.js'
import { ACCESS_POOL_SIZE, FORM, type GeneratorMessage, type GeneratorSettings, type GeneratorTotals, type IntervalReport, KINDS, MIX, MIX_TOTAL, REQUEST_TIMEOUT_MS, round } from './soak-messages.js'

const here = fileURLToPath(new URL('.', import.meta.url))
const root = join(here, '..', '..')

const CALIBRATION_SECONDS = 10
const CALIBRATION_CONNECTIONS = 50
const CALIBRATION_SHARE = 0.7
const CLK_TCK = 100

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

/** Resident set size in MiB; null once the process is gone. */
function rssMiB (pid: number | undefined): number | null {
  try {
    const kib = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid ?? 0}/status`, 'utf8'))?.[1])
    return Number.isFinite(kib) ? round(kib / 1024) : null
  } catch {
    return null
  }
}

/** CPU time (user + system) in seconds; null once the process is gone. */
function cpuSeconds (pid: number | undefined): number | null {
  try {
    const stat = readFileSync(`/proc/${pid ?? 0}/stat`, 'utf8')
    // After the command name, in parentheses: state is field 3, utime 14, stime 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK
  } catch {
    return null
  }
}

/** Least-squares slope of y over x. */
function slope (points: Array<[number, number]>): number | null {
  if (points.length < 2) return null
  const meanX = points.reduce((sum, [x]) => sum + x, 0) / points.length
  const meanY = points.reduce((sum, [, y]) => sum + y, 0) / points.length
  let numerator = 0
  let denominator = 0
  for (const [x, y] of points) {
    numerator += (x - meanX) * (y - meanY)
    denominator += (x - meanX) ** 2
  }
  return denominator === 0 ? null : numerator / denominator
}

interface IntervalRow extends IntervalReport {
  rssMiB: number | null
  /** the service's CPU over the interval, % of one core */
  cpuPercent: number | null
  generatorCpuPercent: number | null
  load1: number
}

interface ServiceExit {
  code: number | null
  signal: string | null
  /** seconds from SIGTERM to exit */
  seconds: number
  killed: boolean
  /** it had exited before it was asked to */
  early: boolean
}

const fmt = (value: number | null, digits = 1): string => value === null ? '-' : value.toFixed(digits)

async function main (): Promise<number> {
  const SECONDS = setting('SOAK_SECONDS') ?? 600
  const INTERVAL = setting('SOAK_INTERVAL') ?? 30
  const RATE = setting('SOAK_RATE')
  const ADMIN_URL = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
  const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379'
  const CLIENT_ID = 'soak-client'
  const CLIENT_SECRET = randomBytes(24).toString('base64url')
  const work = mkdtempSync(join(tmpdir(), 'session-service-soak-'))

  const { default: pg } = await import('pg')
  const { insertClientRow } = await import('../plugins/clients.js')

  let interrupted = false
  let generator: ChildProcess | undefined
  const interrupt = (signal: string): void => {
    if (interrupted) return
    interrupted = true
    log(`${signal}: ending the soak early (summary and clean-up follow)`)
    if (generator?.connected === true) generator.send({ type: 'stop' })
  }
  process.on('SIGINT', interrupt)
  process.on('SIGTERM', interrupt)

  const database = `ss_soak_${process.pid}`
  const redisPrefix = `ss-soak:${process.pid}:`
  const admin = new pg.Client({ connectionString: ADMIN_URL })
  await admin.connect()
  await admin.query(`CREATE DATABASE ${database}`)
  const databaseUrl = Object.assign(new URL(ADMIN_URL), { pathname: `/${database}` }).toString()
  let service: ChildProcess | undefined

  try {
    log(`session-service soak: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node.js ${process.version}, load average ${loadavg().map((value) => value.toFixed(2)).join(' ')}`)

    // 1. The service, its key in its environment only.
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 })
    const port = await freePort()
    const url = `http://127.0.0.1:${port}`
    const child = spawn(process.execPath, [join(root, 'dist', 'server.js')], {
      cwd: work, // no .env of the developer's is read
      env: {
        PATH: process.env.PATH ?? '',
        SERVER_HOST: '127.0.0.1',
        SERVER_PORT: String(port),
        LOG_LEVEL: 'warn',
        DATABASE_URL: databaseUrl,
        REDIS_URL,
        REDIS_KEY_PREFIX: redisPrefix,
        JWT_PRIVATE_KEY: rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
        JWT_ISSUER: 'https://auth.soak.example',
        RATE_LIMIT_DEFAULT: '100000000'
      },
      // Its own process group: a Ctrl-C in the terminal reaches this script
      // only, which then ends the soak in order.
      detached: true,
      stdio: ['ignore', 'pipe', 'inherit']
    })
    service = child
    const serviceStart = Date.now()
    let exitedEarly: { code: number | null, signal: string | null, at: number } | undefined
    let stopRequested = false
    child.once('exit', (code, signal) => {
      if (stopRequested) return
      exitedEarly = { code, signal, at: round((Date.now() - serviceStart) / 1000) }
      log(`the service exited on its own: code ${code}, signal ${signal}`)
    })
    // Its log (warn and above): each kind of line counted, the first shown.
    const serviceLog = new Map<string, { count: number, first: string }>()
    createInterface({ input: child.stdout! }).on('line', (line) => {
      let key = line.slice(0, 120)
      try {
        const entry = JSON.parse(line) as { level?: number, msg?: string }
        key = `${entry.level ?? '?'} ${entry.msg ?? ''}`
      } catch {}
      const seen = serviceLog.get(key)
      if (seen !== undefined) seen.count++
      else {
        serviceLog.set(key, { count: 1, first: line.slice(0, 2000) })
        log(`service log (first of its kind): ${line.slice(0, 500)}`)
      }
    })
    await waitFor(`${url}/health`, child)

    // The client as the CLI makes one: its secret hashed at the service's
    // bcrypt cost (12; bench/run.ts uses the floor, 10, for speed), which
    // is what each expiry of the service's secret cache costs.
    const pool = new pg.Pool({ connectionString: databaseUrl, max: 1 })
    await insertClientRow(pool, { id: CLIENT_ID, secret: CLIENT_SECRET, name: 'soak', rateLimit: 2_000_000_000, scopes: ['soak:read'], defaultScopes: ['soak:read'] })
    await pool.end()

    // One token request first, so that the secret is checked with bcrypt
    // (and remembered) before any load, not by a herd of first requests.
    const basic = 'Basic ' + Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64')
    const first = await fetch(`${url}/oauth/token`, { method: 'POST', headers: { authorization: basic, 'content-type': FORM }, body: 'grant_type=client_credentials' })
    if (first.status !== 200) throw new Error(`the first token request answered ${first.status}: ${await first.text()}`)

    // 2. The rate.
    let calibration: LoadResult | undefined
    let rate = RATE
    if (rate === undefined) {
      const scenario: Scenario = { url, connections: CALIBRATION_CONNECTIONS, duration: 2, kind: 'form', path: '/oauth/token', body: 'grant_type=client_credentials', headers: { authorization: basic } }
      log(`calibration: client_credentials, ${CALIBRATION_CONNECTIONS} connections, 2 s warm-up then ${CALIBRATION_SECONDS} s`)
      await load(scenario)
      calibration = await load({ ...scenario, duration: CALIBRATION_SECONDS })
      log(`calibration: ${Math.round(calibration.rps)} req/s, p50 ${calibration.p50} ms, p99 ${calibration.p99} ms, errors ${calibration.errors + calibration.timeouts}, non-2xx ${calibration.non2xx}`)
      if (calibration.errors + calibration.timeouts + calibration.non2xx > 0 || calibration.rps <= 0) throw new Error('the calibration run had errors; no rate to derive')
      rate = Math.round(calibration.rps * CALIBRATION_SHARE)
    }
    const mix = MIX.map(([kind, weight]) => `${kind} ${round(weight / MIX_TOTAL * 100)} %`).join(', ')
    log(`soak: ${SECONDS} s at ${rate} req/s offered${calibration === undefined ? ' (SOAK_RATE)' : ` (${CALIBRATION_SHARE * 100} % of the calibration)`}, a line every ${INTERVAL} s; mix: ${mix}`)

    // 3. The soak.
    const rows: IntervalRow[] = []
    const rssBefore = rssMiB(child.pid)
    log(`service resident size before the soak: ${fmt(rssBefore)} MiB`)
    const header = ['time s', 'requests', 'req/s', 'errors', 'p50 ms', 'p99 ms', 'max ms', 'cc p50', 'cc p99', 'RSS MiB', 'CPU %', 'load']
    const widths = [7, 9, 8, 7, 7, 7, 8, 7, 7, 8, 6, 5]
    const line = (cells: string[]): string => cells.map((cell, column) => cell.padStart(widths[column] ?? 0)).join('  ')
    process.stdout.write(line(header) + '\n')

    const generatorSettings: GeneratorSettings = { url, rate, seconds: SECONDS, interval: INTERVAL, clientId: CLIENT_ID, clientSecret: CLIENT_SECRET }
    let previous = { at: performance.now(), service: cpuSeconds(child.pid), generator: null as number | null }
    const totals = await new Promise<GeneratorTotals>((resolve, reject) => {
      const forked = fork(fileURLToPath(import.meta.url), [], {
        env: { ...process.env, SOAK_ROLE: 'generator', SOAK_GENERATOR: JSON.stringify(generatorSettings) },
        detached: true,
        stdio: ['ignore', 'inherit', 'inherit', 'ipc']
      })
      generator = forked
      if (interrupted) forked.send({ type: 'stop' })
      previous.generator = cpuSeconds(forked.pid)
      forked.on('message', (message: GeneratorMessage) => {
        if (message.type === 'done') {
          resolve(message.totals)
          return
        }
        const now = performance.now()
        const seconds = (now - previous.at) / 1000
        const serviceCpu = cpuSeconds(child.pid)
        const generatorCpu = cpuSeconds(forked.pid)
        const percent = (after: number | null, before: number | null): number | null =>
          after === null || before === null || seconds <= 0 ? null : round((after - before) / seconds * 100)
        const row: IntervalRow = {
          ...message.report,
          rssMiB: rssMiB(child.pid),
          cpuPercent: percent(serviceCpu, previous.service),
          generatorCpuPercent: percent(generatorCpu, previous.generator),
          load1: round(loadavg()[0] ?? 0, 2)
        }
        previous = { at: now, service: serviceCpu, generator: generatorCpu }
        rows.push(row)
        const errors = Object.entries(row.errorsByLabel).map(([label, count]) => `${label}: ${count}`).join(', ')
        process.stdout.write(line([
          row.to.toFixed(0), String(row.requests), row.rps.toFixed(1), String(row.errors), fmt(row.p50, 2), fmt(row.p99, 2), fmt(row.max, 1),
          fmt(row.ccP50, 2), fmt(row.ccP99, 2), fmt(row.rssMiB), fmt(row.cpuPercent, 0), row.load1.toFixed(2)
        ]) + (errors === '' ? '' : `  [${errors}]`) + (row.lagMs > 100 ? `  [generator ${row.lagMs} ms late]` : '') + '\n')
      })
      forked.once('error', reject)
      forked.once('exit', (code, signal) => reject(new Error(`the load generator exited (code ${code}, signal ${signal}) before its report`)))
    })
    const finished = generator
    await new Promise<void>((resolve) => {
      if (finished === undefined || finished.exitCode !== null || finished.signalCode !== null) resolve()
      else finished.once('exit', () => resolve())
    })

    // 4. The service stops; its exit is part of the result.
    const exit: ServiceExit = await (async () => {
      if (child.exitCode !== null || child.signalCode !== null) {
        return { code: child.exitCode, signal: child.signalCode, seconds: 0, killed: false, early: true }
      }
      stopRequested = true
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
    })()
    const cleanExit = !exit.early && !exit.killed && exit.code === 0

    // 5. The summary.
    const p99s = rows.map((row) => row.p99).filter((value): value is number => value !== null)
    const ccP99s = rows.map((row) => row.ccP99).filter((value): value is number => value !== null)
    const rss = rows.map((row) => row.rssMiB).filter((value): value is number => value !== null)
    const secondHalf = rows.slice(Math.floor(rows.length / 2)).filter((row) => row.rssMiB !== null)
    const perSecond = slope(secondHalf.map((row) => [row.to, row.rssMiB!]))
    const trend = perSecond === null ? null : round(perSecond * 3600, 2)
    const trendSpan = secondHalf.length < 2 ? 0 : round(secondHalf[secondHalf.length - 1]!.to - secondHalf[0]!.to)
    const summary = {
      seconds: totals.seconds,
      offeredRate: rate,
      sent: totals.sent,
      requests: totals.requests,
      errors: totals.errors,
      p50: totals.p50,
      p99: totals.p99,
      max: totals.max,
      maxPerInterval: rows.length === 0 ? null : Math.max(...rows.map((row) => row.max ?? 0)),
      p99PerInterval: { min: p99s.length === 0 ? null : Math.min(...p99s), max: p99s.length === 0 ? null : Math.max(...p99s) },
      ccP99PerInterval: { min: ccP99s.length === 0 ? null : Math.min(...ccP99s), max: ccP99s.length === 0 ? null : Math.max(...ccP99s) },
      rssMiB: { beforeSoak: rssBefore, first: rss[0] ?? null, last: rss[rss.length - 1] ?? null, max: rss.length === 0 ? null : Math.max(...rss) },
      rssTrendMiBPerHour: trend,
      rssTrendIntervals: secondHalf.length,
      rssTrendSpanSeconds: trendSpan,
      serviceExit: exit,
      serviceExitedCleanly: cleanExit
    }
    const out = (text = ''): void => { process.stdout.write(`${text}\n`) }
    out()
    out(`summary: ${totals.seconds} s at ${rate} req/s offered${calibration === undefined ? '' : ` (${CALIBRATION_SHARE * 100} % of ${Math.round(calibration.rps)} req/s client_credentials)`}${interrupted ? ', ended early' : ''}`)
    out(`  requests: ${totals.sent} sent, ${totals.requests} answered, ${totals.errors} errors${totals.unfinished > 0 ? ` (${totals.unfinished} without an answer at the end)` : ''}; p50 ${fmt(totals.p50, 2)} ms, p99 ${fmt(totals.p99, 2)} ms, max ${fmt(totals.max, 1)} ms over the whole soak`)
    if (totals.errors > 0) out(`  errors: ${Object.entries(totals.errorsByLabel).map(([label, count]) => `${label}: ${count}`).join(', ')}`)
    out(`  p99 per interval: all endpoints min ${fmt(summary.p99PerInterval.min, 2)} ms, max ${fmt(summary.p99PerInterval.max, 2)} ms; client_credentials min ${fmt(summary.ccP99PerInterval.min, 2)} ms, max ${fmt(summary.ccP99PerInterval.max, 2)} ms`)
    out(`  resident size: ${fmt(rssBefore)} MiB before the soak; first ${fmt(summary.rssMiB.first)}, last ${fmt(summary.rssMiB.last)}, max ${fmt(summary.rssMiB.max)} MiB; trend ${trend === null ? `- (the second half has ${secondHalf.length} of ${rows.length} intervals; 2 are needed)` : `${trend >= 0 ? '+' : ''}${trend.toFixed(2)} MiB/h (least squares over the last ${secondHalf.length} of ${rows.length} intervals, ${trendSpan} s apart)`}`)
    out('  per endpoint:')
    for (const kind of KINDS) {
      const figures = totals.byKind[kind]
      if (figures === undefined) continue
      out(`    ${kind.padEnd(18)} ${String(figures.requests).padStart(8)} requests  ${String(figures.errors).padStart(5)} errors  p50 ${fmt(figures.p50, 2).padStart(7)} ms  p99 ${fmt(figures.p99, 2).padStart(7)} ms  max ${fmt(figures.max, 1).padStart(7)} ms`)
    }
    if (totals.substituted > 0) out(`    (${totals.substituted} requests sent as client_credentials while there was no token yet to use)`)
    const logged = [...serviceLog.entries()]
    out(`  service log (warn and above): ${logged.length === 0 ? 'nothing' : logged.map(([key, { count }]) => `${count} × "${key}"`).join(', ')}`)
    out(exit.early
      ? `  service: EXITED ON ITS OWN during the soak (code ${exit.code}, signal ${exit.signal}, ${exitedEarly?.at ?? '?'} s after start)`
      : `  service: ${cleanExit ? 'exited 0' : `DID NOT EXIT CLEANLY: code ${exit.code}, signal ${exit.signal}${exit.killed ? ', killed after 30 s' : ''}`} ${exit.seconds} s after SIGTERM`)

    const results = {
      date: new Date().toISOString(),
      machine: { cpus: cpus().length, model: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version },
      settings: {
        seconds: SECONDS,
        interval: INTERVAL,
        rate,
        rateFrom: calibration === undefined ? 'SOAK_RATE' : `${CALIBRATION_SHARE} × calibration`,
        mix: Object.fromEntries(MIX.map(([kind, weight]) => [kind, weight / MIX_TOTAL])),
        accessPool: ACCESS_POOL_SIZE,
        requestTimeoutMs: REQUEST_TIMEOUT_MS
      },
      calibration: calibration === undefined ? null : { seconds: CALIBRATION_SECONDS, connections: CALIBRATION_CONNECTIONS, ...calibration },
      intervals: rows,
      totals,
      summary,
      serviceLog: Object.fromEntries(serviceLog),
      interrupted
    }
    const file = join(root, 'bench', 'soak-results.json')
    writeFileSync(file, JSON.stringify(results, null, 2) + '\n')
    out(`\nwritten to ${file}`)
    return totals.errors === 0 ? 0 : 1
  } finally {
    if (generator !== undefined && generator.exitCode === null && generator.signalCode === null) generator.kill('SIGKILL')
    const running = service
    if (running !== undefined && running.exitCode === null && running.signalCode === null) {
      const exited = new Promise((resolve) => running.once('exit', resolve))
      running.kill('SIGTERM')
      const timer = setTimeout(() => running.kill('SIGKILL'), 30_000)
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
