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
import { Agent, request as httpRequest } from 'node:http'
import { cpus, loadavg, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import type { LoadResult, Scenario } from './load.js'
import { deleteKeys, freePort, waitFor } from './common.js'

const here = fileURLToPath(new URL('.', import.meta.url))
const root = join(here, '..', '..')

type Kind = 'client_credentials' | 'refresh_token' | 'verify' | 'introspect' | 'revoke' | 'jwks' | 'discovery'

/** The mix, in fortieths (2.5 % each). */
const MIX: ReadonlyArray<readonly [Kind, number]> = [
  ['client_credentials', 16],
  ['refresh_token', 6],
  ['verify', 10],
  ['introspect', 4],
  ['revoke', 2],
  ['jwks', 1],
  ['discovery', 1]
]
const MIX_TOTAL = MIX.reduce((sum, [, weight]) => sum + weight, 0)
const KINDS = MIX.map(([kind]) => kind)

const CALIBRATION_SECONDS = 10
const CALIBRATION_CONNECTIONS = 50
const CALIBRATION_SHARE = 0.7
const REQUEST_TIMEOUT_MS = 10_000
/** connections per endpoint at most */
const MAX_SOCKETS = 256
/** Access tokens kept for verify, introspect and revoke: the most recent ones. */
const ACCESS_POOL_SIZE = 2000
/** Unused refresh tokens kept; beyond it, the oldest half is forgotten. */
const REFRESH_QUEUE_MAX = 4000
const ERROR_SAMPLES = 20
const CLK_TCK = 100
const FORM = 'application/x-www-form-urlencoded'

function round (value: number, digits = 1): number {
  const factor = 10 ** digits
  return Math.round(value * factor) / factor
}

/** Latencies in log buckets 1 % wide: constant memory however long the soak. */
class Histogram {
  private static readonly floor = 0.01
  private static readonly step = Math.log(1.01)
  private readonly buckets = new Map<number, number>()
  count = 0
  max = 0

  record (ms: number): void {
    const bucket = ms <= Histogram.floor ? 0 : Math.ceil(Math.log(ms / Histogram.floor) / Histogram.step)
    this.buckets.set(bucket, (this.buckets.get(bucket) ?? 0) + 1)
    this.count++
    if (ms > this.max) this.max = ms
  }

  /** The p-th percentile in ms (at most 1 % above the true value); null without values. */
  percentile (p: number): number | null {
    if (this.count === 0) return null
    const rank = Math.max(1, Math.ceil(this.count * p / 100))
    let seen = 0
    for (const [bucket, count] of [...this.buckets.entries()].sort((a, b) => a[0] - b[0])) {
      seen += count
      if (seen >= rank) return round(Math.min(Histogram.floor * Math.exp(bucket * Histogram.step), this.max), 2)
    }
    return round(this.max, 2)
  }
}

// ---- messages between the two processes -------------------------------------

interface GeneratorSettings {
  url: string
  rate: number
  seconds: number
  interval: number
  clientId: string
  clientSecret: string
}

interface IntervalReport {
  index: number
  /** seconds since the start of the soak */
  from: number
  to: number
  sent: number
  /** answered (or failed) in the interval */
  requests: number
  rps: number
  errors: number
  errorsByLabel: Record<string, number>
  p50: number | null
  p99: number | null
  max: number | null
  ccRequests: number
  ccP50: number | null
  ccP99: number | null
  byKind: Record<string, number>
  /** the most a request was sent after its time (the generator's own lag) */
  lagMs: number
  /** requests in flight at the end of the interval */
  inFlight: number
}

interface KindTotals {
  requests: number
  errors: number
  p50: number | null
  p99: number | null
  max: number | null
}

interface ErrorSample {
  at: number
  kind: Kind
  label: string
  body: string
}

interface GeneratorTotals {
  seconds: number
  sent: number
  requests: number
  errors: number
  unfinished: number
  errorsByLabel: Record<string, number>
  errorSamples: ErrorSample[]
  p50: number | null
  p99: number | null
  max: number | null
  byKind: Record<string, KindTotals>
  /** requests of another kind sent as client_credentials for want of a token */
  substituted: number
}

type GeneratorMessage = { type: 'interval', report: IntervalReport } | { type: 'done', totals: GeneratorTotals }

// ---- the load generator (its own process) ------------------------------------

interface PoolEntry {
  token: string
  /** a local number for the token's session (refreshes keep it) */
  session: number
}

interface Outgoing {
  method: 'GET' | 'POST'
  path: string
  headers: Record<string, string>
  body?: string
}

interface Planned {
  kind: Kind
  outgoing: Outgoing
  /** undefined when the answer is the expected one, else what was wrong */
  check: (status: number, body: string) => string | undefined
  /** after the answer, whatever it is */
  after?: () => void
}

class Tally {
  requests = 0
  errors = 0
  sent = 0
  lagMs = 0
  readonly all = new Histogram()
  readonly cc = new Histogram()
  readonly errorsByLabel = new Map<string, number>()
  readonly byKind = new Map<Kind, number>()
}

async function generate (): Promise<void> {
  const settings = JSON.parse(process.env.SOAK_GENERATOR ?? '{}') as GeneratorSettings
  const target = new URL(settings.url)
  // A connection pool per endpoint, as its callers would be: token requests
  // held up by the service do not hold up the verify requests behind them.
  const agents = new Map<Kind, Agent>(KINDS.map((kind) => [kind, new Agent({ keepAlive: true, maxSockets: MAX_SOCKETS })]))
  const basic = 'Basic ' + Buffer.from(`${settings.clientId}:${settings.clientSecret}`).toString('base64')
  let stopping = false
  process.on('message', (message: { type?: string }) => {
    if (message.type === 'stop') stopping = true
  })
  process.on('SIGINT', () => {}) // the parent decides when to stop

  // Tokens. The access pool is a ring of the most recent access tokens (a
  // revoked one leaves a hole); the refresh queue holds each session's one
  // unused refresh token. A token is revoked only while no verify or
  // introspect of its session is in flight, so that every answer about a
  // token of the pool must say valid or active.
  const accessPool: Array<PoolEntry | undefined> = []
  let accessWritten = 0
  const refreshQueue: PoolEntry[] = []
  const busySessions = new Map<number, number>()
  let sessions = 0
  let revocations = 0
  let substituted = 0

  const addAccess = (entry: PoolEntry): void => {
    accessPool[accessWritten % ACCESS_POOL_SIZE] = entry
    accessWritten++
  }
  const addRefresh = (entry: PoolEntry): void => {
    refreshQueue.push(entry)
    if (refreshQueue.length > REFRESH_QUEUE_MAX) refreshQueue.splice(0, REFRESH_QUEUE_MAX / 2)
  }
  const busy = (session: number): void => { busySessions.set(session, (busySessions.get(session) ?? 0) + 1) }
  const idle = (session: number): void => {
    const count = (busySessions.get(session) ?? 1) - 1
    if (count <= 0) busySessions.delete(session)
    else busySessions.set(session, count)
  }
  function pickAccess (needIdle: boolean): { entry: PoolEntry, slot: number } | undefined {
    const filled = Math.min(accessWritten, ACCESS_POOL_SIZE)
    if (filled === 0) return undefined
    for (let attempt = 0; attempt < 16; attempt++) {
      const slot = Math.floor(Math.random() * filled)
      const entry = accessPool[slot]
      if (entry !== undefined && (!needIdle || !busySessions.has(entry.session))) return { entry, slot }
    }
    return undefined
  }

  const tokenPair = (body: string): { access: string, refresh: string } | undefined => {
    const parsed = JSON.parse(body) as { access_token?: unknown, refresh_token?: unknown }
    return typeof parsed.access_token === 'string' && typeof parsed.refresh_token === 'string'
      ? { access: parsed.access_token, refresh: parsed.refresh_token }
      : undefined
  }
  const issued = (session: number) => (status: number, body: string): string | undefined => {
    if (status !== 200) return String(status)
    const pair = tokenPair(body)
    if (pair === undefined) return '200 without tokens'
    addAccess({ token: pair.access, session })
    addRefresh({ token: pair.refresh, session })
    return undefined
  }
  const status200 = (status: number): string | undefined => status === 200 ? undefined : String(status)
  const form = (path: string, body: string): Outgoing => ({ method: 'POST', path, headers: { authorization: basic, 'content-type': FORM }, body })

  function plan (kind: Kind): Planned | undefined {
    switch (kind) {
      case 'client_credentials':
        return { kind, outgoing: form('/oauth/token', 'grant_type=client_credentials'), check: issued(sessions++) }
      case 'refresh_token': {
        const entry = refreshQueue.pop() // the newest
        if (entry === undefined) return undefined
        return { kind, outgoing: form('/oauth/token', `grant_type=refresh_token&refresh_token=${encodeURIComponent(entry.token)}`), check: issued(entry.session) }
      }
      case 'verify': {
        const picked = pickAccess(false)
        if (picked === undefined) return undefined
        busy(picked.entry.session)
        return {
          kind,
          outgoing: { method: 'POST', path: '/oauth/verify', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: picked.entry.token }) },
          check: (status, body) => {
            if (status !== 200) return String(status)
            const result = JSON.parse(body) as { valid?: unknown, error?: unknown }
            return result.valid === true ? undefined : `200 valid:false (${String(result.error)})`
          },
          after: () => idle(picked.entry.session)
        }
      }
      case 'introspect': {
        const picked = pickAccess(false)
        if (picked === undefined) return undefined
        busy(picked.entry.session)
        return {
          kind,
          outgoing: form('/oauth/introspect', `token=${encodeURIComponent(picked.entry.token)}`),
          check: (status, body) => {
            if (status !== 200) return String(status)
            return (JSON.parse(body) as { active?: unknown }).active === true ? undefined : '200 active:false'
          },
          after: () => idle(picked.entry.session)
        }
      }
      case 'revoke': {
        // In turn an access token (it leaves the pool) and a refresh token
        // (its whole session ends: its access tokens leave the pool too).
        revocations++
        if (revocations % 2 === 0) {
          const picked = pickAccess(true)
          if (picked === undefined) return undefined
          accessPool[picked.slot] = undefined
          return { kind, outgoing: form('/oauth/revoke', `token=${encodeURIComponent(picked.entry.token)}&token_type_hint=access_token`), check: status200 }
        }
        const index = refreshQueue.findIndex((entry, position) => position < 16 && !busySessions.has(entry.session))
        const entry = index < 0 ? undefined : refreshQueue.splice(index, 1)[0]
        if (entry === undefined) return undefined
        for (let slot = 0; slot < accessPool.length; slot++) {
          if (accessPool[slot]?.session === entry.session) accessPool[slot] = undefined
        }
        return { kind, outgoing: form('/oauth/revoke', `token=${encodeURIComponent(entry.token)}&token_type_hint=refresh_token`), check: status200 }
      }
      case 'jwks':
        return { kind, outgoing: { method: 'GET', path: '/.well-known/jwks.json', headers: {} }, check: status200 }
      case 'discovery':
        return { kind, outgoing: { method: 'GET', path: '/.well-known/openid-configuration', headers: {} }, check: status200 }
    }
  }

  // Smooth weighted round robin: the mix holds exactly over every 40 requests.
  const credit = new Map<Kind, number>(KINDS.map((kind) => [kind, 0]))
  function nextKind (): Kind {
    let best: Kind = 'client_credentials'
    let bestCredit = -Infinity
    for (const [kind, weight] of MIX) {
      const value = (credit.get(kind) ?? 0) + weight
      credit.set(kind, value)
      if (value > bestCredit) {
        best = kind
        bestCredit = value
      }
    }
    credit.set(best, bestCredit - MIX_TOTAL)
    return best
  }

  // Figures: per interval, and per endpoint over the whole soak.
  const startedAt = performance.now()
  const elapsed = (): number => (performance.now() - startedAt) / 1000
  let tally = new Tally()
  const totalsByKind = new Map<Kind, { requests: number, errors: number, latency: Histogram }>(KINDS.map((kind) => [kind, { requests: 0, errors: 0, latency: new Histogram() }]))
  const all = new Histogram()
  const errorsByLabel = new Map<string, number>()
  const errorSamples: ErrorSample[] = []
  let sent = 0
  let answered = 0
  let errors = 0
  let inFlight = 0

  function record (kind: Kind, ms: number, label: string | undefined, body: string): void {
    tally.requests++
    tally.all.record(ms)
    if (kind === 'client_credentials') tally.cc.record(ms)
    tally.byKind.set(kind, (tally.byKind.get(kind) ?? 0) + 1)
    const total = totalsByKind.get(kind)
    total!.requests++
    total!.latency.record(ms)
    all.record(ms)
    answered++
    if (label === undefined) return
    const key = `${kind} ${label}`
    tally.errors++
    tally.errorsByLabel.set(key, (tally.errorsByLabel.get(key) ?? 0) + 1)
    total!.errors++
    errorsByLabel.set(key, (errorsByLabel.get(key) ?? 0) + 1)
    errors++
    if (errorSamples.length < ERROR_SAMPLES) errorSamples.push({ at: round(elapsed(), 3), kind, label, body: body.slice(0, 300) })
  }

  function send (planned: Planned): void {
    const { outgoing } = planned
    const started = performance.now()
    inFlight++
    let settled = false
    // The limit counts from the send, time queued for a connection included.
    const timer = setTimeout(() => request.destroy(Object.assign(new Error('no answer within 10 s'), { code: 'timeout' })), REQUEST_TIMEOUT_MS)
    const settle = (status: number, body: string, failure?: string): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      inFlight--
      planned.after?.()
      let label = failure
      if (label === undefined) {
        try {
          label = planned.check(status, body)
        } catch {
          label = `${status} unreadable body`
        }
      }
      record(planned.kind, performance.now() - started, label, body)
    }
    const headers: Record<string, string | number> = { ...outgoing.headers }
    if (outgoing.body !== undefined) headers['content-length'] = Buffer.byteLength(outgoing.body)
    const request = httpRequest({
      agent: agents.get(planned.kind),
      hostname: target.hostname,
      port: target.port,
      method: outgoing.method,
      path: outgoing.path,
      headers
    }, (response) => {
      const chunks: Buffer[] = []
      response.on('data', (chunk: Buffer) => chunks.push(chunk))
      response.on('end', () => settle(response.statusCode ?? 0, Buffer.concat(chunks).toString('utf8')))
      response.on('error', (err: NodeJS.ErrnoException) => settle(response.statusCode ?? 0, '', err.code ?? err.message))
    })
    request.on('error', (err: NodeJS.ErrnoException) => settle(0, '', err.code ?? err.message))
    request.end(outgoing.body)
  }

  function launch (): void {
    const kind = nextKind()
    let planned = plan(kind)
    if (planned === undefined) {
      // No token to use yet (the first moments): a token request instead.
      substituted++
      planned = plan('client_credentials')!
    }
    send(planned)
  }

  const percentiles = (histogram: Histogram): { p50: number | null, p99: number | null } => ({ p50: histogram.percentile(50), p99: histogram.percentile(99) })
  let index = 0
  function report (from: number, to: number, answeredUntil = to): void {
    const { p50, p99 } = percentiles(tally.all)
    const cc = percentiles(tally.cc)
    const message: GeneratorMessage = {
      type: 'interval',
      report: {
        index,
        from: round(from, 3),
        to: round(to, 3),
        sent: tally.sent,
        requests: tally.requests,
        rps: round(tally.requests / Math.max(answeredUntil - from, 0.001)),
        errors: tally.errors,
        errorsByLabel: Object.fromEntries(tally.errorsByLabel),
        p50,
        p99,
        max: tally.all.count === 0 ? null : round(tally.all.max, 2),
        ccRequests: tally.cc.count,
        ccP50: cc.p50,
        ccP99: cc.p99,
        byKind: Object.fromEntries(tally.byKind),
        lagMs: round(tally.lagMs, 1),
        inFlight
      }
    }
    process.send?.(message)
    index++
    tally = new Tally()
  }

  // The paced loop: every millisecond or so, whatever has come due is sent.
  let end = settings.seconds
  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const now = elapsed()
      if (stopping) end = Math.min(end, now)
      const until = Math.min(now, end)
      const due = Math.floor(until * settings.rate)
      if (due > sent) {
        const lateMs = (until - sent / settings.rate) * 1000
        if (lateMs > tally.lagMs) tally.lagMs = lateMs
        while (sent < due) {
          launch()
          sent++
          tally.sent++
        }
      }
      while ((index + 1) * settings.interval <= until && (index + 1) * settings.interval < end) {
        report(index * settings.interval, (index + 1) * settings.interval)
      }
      if (now >= end) resolve()
      else setTimeout(tick, 1)
    }
    tick()
  })

  // The last interval takes the answers still in flight.
  const drainUntil = performance.now() + REQUEST_TIMEOUT_MS + 5000
  const drained = (): boolean => inFlight === 0 || performance.now() >= drainUntil
  while (!drained()) await sleep(10)
  const unfinished = inFlight
  report(index * settings.interval, end, Math.max(end, elapsed()))

  const byKind: Record<string, KindTotals> = {}
  for (const [kind, total] of totalsByKind) {
    byKind[kind] = {
      requests: total.requests,
      errors: total.errors,
      ...percentiles(total.latency),
      max: total.latency.count === 0 ? null : round(total.latency.max, 2)
    }
  }
  const done: GeneratorMessage = {
    type: 'done',
    totals: {
      seconds: round(end, 3),
      sent,
      requests: answered,
      errors: errors + unfinished,
      unfinished,
      errorsByLabel: Object.fromEntries(errorsByLabel),
      errorSamples,
      ...percentiles(all),
      max: all.count === 0 ? null : round(all.max, 2),
      byKind,
      substituted
    }
  }
  for (const agent of agents.values()) agent.destroy()
  process.send?.(done, () => process.disconnect())
}

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
