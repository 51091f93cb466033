// npm run bench: the service's throughput against the ceilings of this
// machine, measured in one run so that the ratios cancel the machine's noise.
//
// 1. Ceilings: signatures per second on one thread with node:crypto (RS256
//    with a 2048-bit key, as the service; ES256 and EdDSA too), and a bare
//    Fastify route returning a constant, driven like the service.
// 2. The service, one process (node dist/server.js), on the local PostgreSQL
//    and Redis (BENCH_DATABASE_URL, BENCH_REDIS_URL), with its clients made by
//    the service's own insertClientRow.
// 3. Load from autocannon in a separate process per scenario (bench/load.ts).
// 4. One table on stdout, and the same as JSON in bench/results.json.
//
// Settings: BENCH_SECONDS (per scenario, default 10), BENCH_CONNECTIONS (50),
// BENCH_MEMORY_REQUESTS (200000; the memory check compares the resident size
// after a tenth of it with that after all of it).
import { execFile, fork, spawn, type ChildProcess } from 'node:child_process'
import { generateKeyPairSync, randomBytes, sign as cryptoSign, type KeyObject } from 'node:crypto'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { cpus, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { Redis } from 'ioredis'
import { insertClientRow } from '../plugins/clients.ts'
import type { LoadResult, Scenario } from './load.ts'
import { deleteKeys, freePort, waitFor } from './common.ts'

const here = fileURLToPath(new URL('.', import.meta.url))
const root = join(here, '..', '..')
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10)
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 50)
const MEMORY_REQUESTS = Number(process.env.BENCH_MEMORY_REQUESTS ?? 200_000)
const POOL_SIZE = 10_000
const ADMIN_URL = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379'
const CLIENT_ID = 'bench-client'
const BURST_CLIENT_ID = 'bench-burst-target'
const CLIENT_SECRET = randomBytes(24).toString('base64url')
const work = mkdtempSync(join(tmpdir(), 'session-service-bench-'))

function log (line: string): void {
  process.stderr.write(`${line}\n`)
}

// ---- ceilings --------------------------------------------------------------

function signRate (algorithm: string | null, key: KeyObject, options: { dsaEncoding?: 'ieee-p1363' } = {}): number {
  const data = Buffer.from(`${'a'.repeat(36)}.${'b'.repeat(300)}`)
  const until = performance.now() + 3000
  let count = 0
  while (performance.now() < until) {
    for (let i = 0; i < 20; i++) cryptoSign(algorithm, data, { key, ...options })
    count += 20
  }
  return count / 3
}

function pem (key: KeyObject): string {
  return key.export({ type: 'pkcs8', format: 'pem' }).toString()
}

// ---- processes --------------------------------------------------------------

async function stop (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  await exited
}

interface Service {
  url: string
  child: ChildProcess
}

async function startService (env: Record<string, string>): Promise<Service> {
  const port = await freePort()
  const child = spawn(process.execPath, [join(root, 'dist', 'server.js')], {
    cwd: work, // no .env of the developer's is read
    env: { PATH: process.env.PATH ?? '', SERVER_HOST: '127.0.0.1', SERVER_PORT: String(port), ADMIN_PORT: '0', LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'ignore', 'inherit']
  })
  const url = `http://127.0.0.1:${port}`
  await waitFor(`${url}/health`, child)
  return { url, child }
}

async function startBare (keyFile: string): Promise<Service> {
  const port = await freePort()
  const child = fork(join(here, 'bare.js'), [], { env: { BENCH_PORT: String(port), BENCH_KEY_FILE: keyFile }, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
  const url = `http://127.0.0.1:${port}`
  await waitFor(`${url}/constant`, child)
  return { url, child }
}

async function load (scenario: Omit<Scenario, 'connections' | 'duration'> & { connections?: number, duration?: number }): Promise<LoadResult> {
  const full: Scenario = { connections: CONNECTIONS, duration: SECONDS, ...scenario }
  return await new Promise((resolve, reject) => {
    execFile(process.execPath, [join(here, 'load.js')], { env: { ...process.env, BENCH_SCENARIO: JSON.stringify(full) }, maxBuffer: 1 << 20 }, (err, stdout) => {
      if (err !== null) reject(err)
      else resolve(JSON.parse(stdout) as LoadResult)
    })
  })
}

/** Resident set size of a process, in MiB (Linux). */
function rssMiB (pid: number | undefined): number {
  const status = readFileSync(`/proc/${pid ?? 0}/status`, 'utf8')
  const kib = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0)
  return Math.round(kib / 1024 * 10) / 10
}

// ---- the service's data -------------------------------------------------------

const basic = 'Basic ' + Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64')
const ccBody = 'grant_type=client_credentials'
const postBody = `grant_type=client_credentials&client_id=${CLIENT_ID}&client_secret=${encodeURIComponent(CLIENT_SECRET)}`

/** POOL_SIZE client_credentials grants, 50 at a time: distinct access and refresh tokens. */
async function tokenPool (url: string): Promise<{ access: string[], refresh: string[] }> {
  const access: string[] = []
  const refresh: string[] = []
  for (let done = 0; done < POOL_SIZE; done += 50) {
    const batch = await Promise.all(Array.from({ length: 50 }, async () => {
      const res = await fetch(`${url}/oauth/token`, { method: 'POST', headers: { authorization: basic, 'content-type': 'application/x-www-form-urlencoded' }, body: ccBody })
      if (!res.ok) throw new Error(`token pool: ${res.status} ${await res.text()}`)
      return await res.json() as { access_token: string, refresh_token: string }
    }))
    for (const tokens of batch) {
      access.push(tokens.access_token)
      refresh.push(tokens.refresh_token)
    }
  }
  return { access, refresh }
}

// ---- the run -----------------------------------------------------------------

interface Row extends LoadResult {
  name: string
  /** what the ratio compares with */
  base?: string
  ratio?: number
  target?: string
}

const rows: Row[] = []
function record (name: string, result: LoadResult, base?: { name: string, rate: number }, target?: string): Row {
  const row: Row = { name, ...result }
  if (base !== undefined) {
    row.base = base.name
    row.ratio = Math.round(result.rps / base.rate * 100) / 100
  }
  if (target !== undefined) row.target = target
  rows.push(row)
  log(`${name}: ${Math.round(result.rps)} req/s, p50 ${result.p50} ms, p99 ${result.p99} ms, errors ${result.errors}, non-2xx ${result.non2xx}${row.ratio === undefined ? '' : `, ratio ${row.ratio}`}`)
  return row
}

const database = `ss_bench_${process.pid}`
const admin = new pg.Client({ connectionString: ADMIN_URL })
await admin.connect()
await admin.query(`CREATE DATABASE ${database}`)
const databaseUrl = Object.assign(new URL(ADMIN_URL), { pathname: `/${database}` }).toString()
const redisPrefix = `ss-bench:${process.pid}:`
const children: ChildProcess[] = []

try {
  log(`session-service benchmark: ${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${Math.round(totalmem() / 2 ** 30)} GiB, Node.js ${process.version}, ${SECONDS} s per scenario, ${CONNECTIONS} connections`)

  // 1. Ceilings.
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const ed = generateKeyPairSync('ed25519')
  const signRates = {
    RS256: signRate('sha256', rsa.privateKey),
    ES256: signRate('sha256', ec.privateKey, { dsaEncoding: 'ieee-p1363' }),
    EdDSA: signRate(null, ed.privateKey)
  }
  log(`single-thread signatures per second: RS256 ${Math.round(signRates.RS256)}, ES256 ${Math.round(signRates.ES256)}, EdDSA ${Math.round(signRates.EdDSA)}`)
  const rsaFile = join(work, 'rsa.pem')
  writeFileSync(rsaFile, pem(rsa.privateKey), { mode: 0o600 })

  const bare = await startBare(rsaFile)
  children.push(bare.child)
  await load({ url: bare.url, kind: 'get', path: '/constant', duration: 2 })
  const bareConstant = record('bare route (constant)', await load({ url: bare.url, kind: 'get', path: '/constant' }))
  record('bare route signing once (RS256)', await load({ url: bare.url, kind: 'get', path: '/sign' }), { name: 'RS256 signs/s', rate: signRates.RS256 })
  await stop(bare.child)
  const bareBase = { name: 'bare route', rate: bareConstant.rps }
  const signBase = { name: 'RS256 signs/s', rate: signRates.RS256 }

  // 2. The service with its clients.
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 2 })
  const serviceEnv = {
    DATABASE_URL: databaseUrl,
    REDIS_URL,
    REDIS_KEY_PREFIX: redisPrefix,
    JWT_PRIVATE_KEY: pem(rsa.privateKey),
    JWT_ISSUER: 'https://auth.bench.example',
    RATE_LIMIT_DEFAULT: '100000000'
  }
  const service = await startService(serviceEnv)
  children.push(service.child)
  await insertClientRow(pool, { id: CLIENT_ID, secret: CLIENT_SECRET, name: 'benchmark', rateLimit: 2_000_000_000, scopes: ['bench:read'], defaultScopes: ['bench:read'] }, 10)
  await insertClientRow(pool, { id: BURST_CLIENT_ID, secret: `${CLIENT_SECRET}-burst`, name: 'benchmark burst target' })
  await pool.end()

  log(`building a pool of ${POOL_SIZE} tokens`)
  const tokens = await tokenPool(service.url)
  const accessFile = join(work, 'access.json')
  const refreshFile = join(work, 'refresh.json')
  writeFileSync(accessFile, JSON.stringify(tokens.access))
  writeFileSync(refreshFile, JSON.stringify(tokens.refresh))

  // 3. Each endpoint: a short warm-up, then the measured run.
  const url = service.url
  const auth = { authorization: basic }
  await load({ url, kind: 'form', path: '/oauth/token', body: ccBody, headers: auth, duration: 2 })
  record('client_credentials (Basic)', await load({ url, kind: 'form', path: '/oauth/token', body: ccBody, headers: auth }), signBase, '≥ 0.70')
  record('client_credentials (post)', await load({ url, kind: 'form', path: '/oauth/token', body: postBody }), signBase, '≥ 0.70')
  record('refresh_token', await load({ url, kind: 'refresh', path: '/oauth/token', headers: auth, tokensFile: refreshFile }), signBase, '≥ 0.60')
  record('verify', await load({ url, kind: 'verify', path: '/oauth/verify', tokensFile: accessFile }), bareBase, '≥ 0.35')
  record('introspect', await load({ url, kind: 'introspect', path: '/oauth/introspect', headers: auth, tokensFile: accessFile }), bareBase)
  record('jwks', await load({ url, kind: 'get', path: '/.well-known/jwks.json' }), bareBase, '≥ 0.80')
  record('discovery', await load({ url, kind: 'get', path: '/.well-known/openid-configuration' }), bareBase, '≥ 0.80')

  // A burst of wrong secrets must not stall the service: 300 requests at
  // once, each on its own connection with a different wrong secret for one
  // client (hashed at the service's cost), while verify is measured for the
  // seconds the burst takes to be answered; verify alone over the same
  // window is the reference.
  const burstWindow = { duration: 3 }
  const verifyAlone = await load({ url, kind: 'verify', path: '/oauth/verify', tokensFile: accessFile, ...burstWindow })
  const [attack, verifyUnderAttack] = await Promise.all([
    load({ url, kind: 'wrong-secrets', path: '/oauth/token', body: ccBody, clientId: BURST_CLIENT_ID, connections: 300, amount: 300 }),
    load({ url, kind: 'verify', path: '/oauth/verify', tokensFile: accessFile, ...burstWindow })
  ])
  record('verify, 3 s (reference for the next rows)', verifyAlone, bareBase)
  record('a burst: 300 wrong secrets at once on 300 connections', { ...attack, non2xx: 0 })
  rows[rows.length - 1]!.target = `${attack.non2xx} answered 401, 429 or 503; ${attack.errors} errors, ${attack.timeouts} timeouts`
  record('verify, 3 s, during the burst', verifyUnderAttack, bareBase, 'p99 < 50 ms')
  // The burst leaves this address throttled for a minute; the rows below
  // measure other things, from the same address.
  const counters = new Redis(REDIS_URL)
  const throttled = await counters.keys(`${redisPrefix}auth-failures:*`)
  if (throttled.length > 0) await counters.del(...throttled)
  await counters.quit()

  // Memory: resident size after a tenth of the token requests, then after all.
  const tenth = Math.round(MEMORY_REQUESTS / 10)
  await load({ url, kind: 'form', path: '/oauth/token', body: ccBody, headers: auth, amount: tenth })
  const rssAfterTenth = rssMiB(service.child.pid)
  await load({ url, kind: 'form', path: '/oauth/token', body: ccBody, headers: auth, amount: MEMORY_REQUESTS - tenth })
  const rssAfterAll = rssMiB(service.child.pid)
  log(`resident size: ${rssAfterTenth} MiB after ${tenth} token requests, ${rssAfterAll} MiB after ${MEMORY_REQUESTS}`)
  await stop(service.child)

  // Other algorithms: the ceiling they lift.
  const algorithmRows: Record<string, Row> = {}
  for (const [algorithm, key] of [['ES256', ec.privateKey], ['EdDSA', ed.privateKey]] as const) {
    const other = await startService({ ...serviceEnv, JWT_ALGORITHM: algorithm, JWT_PRIVATE_KEY: pem(key) })
    children.push(other.child)
    await load({ url: other.url, kind: 'form', path: '/oauth/token', body: ccBody, headers: auth, duration: 2 })
    algorithmRows[algorithm] = record(`client_credentials (Basic), ${algorithm}`, await load({ url: other.url, kind: 'form', path: '/oauth/token', body: ccBody, headers: auth }), { name: `${algorithm} signs/s`, rate: signRates[algorithm] })
    await stop(other.child)
  }

  // Both cores: two service processes, each driven by its own load generator
  // with half the connections; the figure is their sum.
  const one = await startService(serviceEnv)
  const two = await startService(serviceEnv)
  children.push(one.child, two.child)
  const half = Math.max(1, Math.round(CONNECTIONS / 2))
  await Promise.all([one, two].map(async (instance) => await load({ url: instance.url, kind: 'form', path: '/oauth/token', body: ccBody, headers: auth, duration: 2, connections: half })))
  const pair = await Promise.all([one, two].map(async (instance) => await load({ url: instance.url, kind: 'form', path: '/oauth/token', body: ccBody, headers: auth, connections: half })))
  const combined: LoadResult = {
    requests: pair.reduce((sum, result) => sum + result.requests, 0),
    rps: pair.reduce((sum, result) => sum + result.rps, 0),
    p50: Math.max(...pair.map((result) => result.p50)),
    p99: Math.max(...pair.map((result) => result.p99)),
    errors: pair.reduce((sum, result) => sum + result.errors, 0),
    timeouts: pair.reduce((sum, result) => sum + result.timeouts, 0),
    non2xx: pair.reduce((sum, result) => sum + result.non2xx, 0)
  }
  record('client_credentials (Basic), two processes', combined, signBase)
  await Promise.all([stop(one.child), stop(two.child)])

  // 4. The table.
  const table = [
    ['scenario', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'non-2xx', 'ratio', 'of', 'target'],
    ...rows.map((row) => [row.name, String(Math.round(row.rps)), String(row.p50), String(row.p99), String(row.errors + row.timeouts), String(row.non2xx), row.ratio?.toFixed(2) ?? '', row.base ?? '', row.target ?? ''])
  ]
  const widths = table[0]!.map((_, column) => Math.max(...table.map((line) => line[column]!.length)))
  for (const [index, line] of table.entries()) {
    process.stdout.write(line.map((cell, column) => column === 0 || column >= 7 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!)).join('  ') + '\n')
    if (index === 0) process.stdout.write(widths.map((width) => '-'.repeat(width)).join('  ') + '\n')
  }
  const memory = { afterRequests: tenth, rssMiB: rssAfterTenth, afterAllRequests: MEMORY_REQUESTS, rssAfterAllMiB: rssAfterAll, growth: Math.round((rssAfterAll / rssAfterTenth - 1) * 1000) / 1000 }
  process.stdout.write(`\nsingle-thread signs/s: RS256 ${Math.round(signRates.RS256)}, ES256 ${Math.round(signRates.ES256)}, EdDSA ${Math.round(signRates.EdDSA)}; bare route ${Math.round(bareConstant.rps)} req/s\n`)
  process.stdout.write(`resident size: ${memory.rssMiB} MiB after ${tenth} token requests, ${memory.rssAfterAllMiB} MiB after ${MEMORY_REQUESTS} (${(memory.growth * 100).toFixed(1)}%, target within 20%)\n`)

  const results = {
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, model: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version },
    settings: { seconds: SECONDS, connections: CONNECTIONS, tokenPool: POOL_SIZE, memoryRequests: MEMORY_REQUESTS },
    ceilings: { signsPerSecond: signRates, bareRoute: bareConstant.rps },
    rows,
    memory
  }
  const file = join(root, 'bench', 'results.json')
  writeFileSync(file, JSON.stringify(results, null, 2) + '\n')
  process.stdout.write(`\nwritten to ${file}\n`)
} finally {
  await Promise.all(children.map(stop))
  await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`)
  await admin.end()
  await deleteKeys(REDIS_URL, redisPrefix)
}
