// npm run bench: each endpoint of the service against a ceiling that does
// the same unavoidable work on a bare Fastify route (bench/bare.ts), both
// measured in one run, round for round, so that the ratio cancels the
// machine's noise.
//
// 1. The service, one process (node dist/server.js) pinned to core 0, on the
//    local PostgreSQL (BENCH_DATABASE_URL) and Redis (BENCH_REDIS_URL, or a
//    Redis Cluster: BENCH_REDIS_CLUSTER_NODES, host:port,...), with its clients
//    made by the service's own insertClientRow.
// 2. The ceilings, pinned to core 0 too: they sign with the service's key,
//    verify its tokens, and serve the JWKS and discovery bytes and headers
//    captured from it.
// 3. Per scenario: a warm-up round each, then BENCH_ROUNDS (3) rounds that
//    alternate ceiling and service, then a fixed-rate run of the service at
//    70 % of its median rate. Load from autocannon in a process pinned to core 1.
// 4. A Markdown table on stdout; bench/results.json keeps the latest run of
//    each Redis mode.
//
// Settings: BENCH_SECONDS (per round, default 10), BENCH_CONNECTIONS (50),
// BENCH_ROUNDS (3), BENCH_MEMORY_REQUESTS (200000; single Redis only),
// BENCH_PROFILE (scenario names, comma-separated, or 'all': each is profiled
// with --cpu-prof for one round at the end), BENCH_SCENARIOS (scenario
// names, comma-separated; default all), BENCH_KEY_STORE (settings, or
// database: the service's key is stored in its database at start, as an
// operator's switch does, and signs from there). A run of some scenarios only skips
// the burst and memory extras and leaves bench/results.json as it is (a run
// there stands for all scenarios, measured together): its table goes to
// stdout only.
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import pg from 'pg'
import { TOKEN_EXCHANGE } from '../grants/token-exchange.ts'
import { insertClientRow } from '../plugins/clients.ts'
import { ACCESS_TOKEN_TYPE_ID } from '../tokens/issuance.ts'
import { deleteClusterKeys, deleteKeys } from './common.ts'
import { burstOfWrongSecrets, memoryGrowth } from './extras.ts'
import { startCeilings, startService, stop, type Server } from './processes.ts'
import { profileScenarios } from './profiles.ts'
import { markdownTable, mergeRun, type BenchRun, type RedisMode } from './report.ts'
import { measureScenario, type RoundSettings, type ScenarioPlan, type ScenarioResult } from './rounds.ts'
import { ceilingSettings, subjectToken, tokenPool, type TokenPool } from './service-data.ts'

const here = fileURLToPath(new URL('.', import.meta.url))
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10)
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 50)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const MEMORY_REQUESTS = Number(process.env.BENCH_MEMORY_REQUESTS ?? 200_000)
const PROFILE = (process.env.BENCH_PROFILE ?? '').split(',').filter((name) => name !== '')
const KEY_STORE = process.env.BENCH_KEY_STORE ?? 'settings'
if (KEY_STORE !== 'settings' && KEY_STORE !== 'database') throw new Error('BENCH_KEY_STORE: settings or database')
const ONLY = (process.env.BENCH_SCENARIOS ?? '').split(',').map((name) => name.trim()).filter((name) => name !== '')
const ADMIN_URL = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const CLUSTER_NODES = (process.env.BENCH_REDIS_CLUSTER_NODES ?? '').split(',').filter((node) => node !== '')
const REDIS: RedisMode = CLUSTER_NODES.length > 0 ? 'cluster' : 'single'
const REDIS_URL = REDIS === 'cluster' ? `redis://${CLUSTER_NODES[0]!}` : process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379'
const CLIENT_ID = 'bench-client'
const BURST_CLIENT_ID = 'bench-burst-target'
const CLIENT_SECRET = randomBytes(24).toString('base64url')
const work = mkdtempSync(join(tmpdir(), 'session-service-bench-'))
const roundSettings: RoundSettings = { seconds: SECONDS, warmUpSeconds: Math.min(3, SECONDS), connections: CONNECTIONS, rounds: ROUNDS, fixedRateShare: 0.7, p99TargetMs: 50 }

function log (line: string): void {
  process.stderr.write(`${line}\n`)
}

const basic = 'Basic ' + Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64')
const auth = { authorization: basic }
const ccBody = 'grant_type=client_credentials'

/** What the DPoP and token exchange scenarios send besides the client's credentials. */
interface BoundAndExchanged {
  /** the token endpoint as the service names it: the htu of the proofs */
  htu: string
  /** an access token of the bench client, the subject of every exchange (not single use) */
  subject: string
}

/** The eight scenarios and their targets; each sends its ceiling the same requests. */
function scenarioPlans (pool: TokenPool, extra: BoundAndExchanged): ScenarioPlan[] {
  const exchangeBody = new URLSearchParams({ grant_type: TOKEN_EXCHANGE, subject_token: extra.subject, subject_token_type: ACCESS_TOKEN_TYPE_ID }).toString()
  return [
    { name: 'token (Basic)', target: 0.85, request: { kind: 'form', body: ccBody, headers: auth }, servicePath: '/oauth/token', ceilingPath: '/token' },
    // A fresh ES256 proof per request, made by the load generator.
    { name: 'token (DPoP)', target: 0.80, request: { kind: 'dpop', body: ccBody, headers: auth, htu: extra.htu }, servicePath: '/oauth/token', ceilingPath: '/token-dpop' },
    { name: 'token exchange', target: 0.80, request: { kind: 'form', body: exchangeBody, headers: auth }, servicePath: '/oauth/token', ceilingPath: '/exchange' },
    // The service's rounds write the refresh tokens they did not use back, for the next round.
    { name: 'refresh', target: 0.75, request: { kind: 'refresh', headers: auth, tokensFile: pool.refreshFile }, servicePath: '/oauth/token', ceilingPath: '/token', serviceOnly: { tokensOut: pool.refreshFile } },
    { name: 'verify', target: 0.70, request: { kind: 'verify', tokensFile: pool.accessFile }, servicePath: '/oauth/verify', ceilingPath: '/verify' },
    { name: 'introspect', target: 0.60, request: { kind: 'introspect', headers: auth, tokensFile: pool.accessFile }, servicePath: '/oauth/introspect', ceilingPath: '/introspect' },
    { name: 'JWKS', target: 0.80, request: { kind: 'get' }, servicePath: '/.well-known/jwks.json', ceilingPath: '/jwks' },
    { name: 'discovery', target: 0.80, request: { kind: 'get' }, servicePath: '/.well-known/openid-configuration', ceilingPath: '/discovery' }
  ]
}

/** The service's environment for this run's database, Redis mode, prefix and key. */
function serviceEnvironment (databaseUrl: string, redisPrefix: string, privateKeyPem: string): Record<string, string> {
  return {
    DATABASE_URL: databaseUrl,
    REDIS_URL,
    ...(REDIS === 'cluster' ? { REDIS_CLUSTER_NODES: CLUSTER_NODES.join(',') } : {}),
    REDIS_KEY_PREFIX: redisPrefix,
    JWT_PRIVATE_KEY: privateKeyPem,
    ...(KEY_STORE === 'database' ? { KEY_STORE, KEY_ENCRYPTION_KEY: randomBytes(32).toString('base64') } : {}),
    JWT_ISSUER: 'https://auth.bench.example',
    RATE_LIMIT_DEFAULT: '100000000'
  }
}

async function insertClients (databaseUrl: string): Promise<void> {
  const pool = new pg.Pool({ connectionString: databaseUrl, max: 2 })
  await insertClientRow(pool, {
    id: CLIENT_ID,
    secret: CLIENT_SECRET,
    name: 'benchmark',
    rateLimit: 2_000_000_000,
    scopes: ['bench:read'],
    defaultScopes: ['bench:read'],
    // Exchanging its own tokens needs the grant only, no may_exchange.
    grantTypes: ['client_credentials', 'refresh_token', TOKEN_EXCHANGE]
  }, 10)
  await insertClientRow(pool, { id: BURST_CLIENT_ID, secret: `${CLIENT_SECRET}-burst`, name: 'benchmark burst target' })
  await pool.end()
}

/** The plans BENCH_SCENARIOS names, all without it; an unknown name is an error, not a silent skip. */
function chosenPlans (plans: ScenarioPlan[]): ScenarioPlan[] {
  if (ONLY.length === 0) return plans
  const unknown = ONLY.filter((name) => !plans.some((plan) => plan.name === name))
  if (unknown.length > 0) throw new Error(`BENCH_SCENARIOS: no scenario ${unknown.join(', ')}; the scenarios are ${plans.map((plan) => plan.name).join(', ')}`)
  return plans.filter((plan) => ONLY.includes(plan.name))
}

/** The burst of wrong secrets and the memory check, on single Redis only: they have no ceiling to compare. */
async function runExtras (service: Server, pool: TokenPool, redisPrefix: string): Promise<Pick<BenchRun, 'burst' | 'memory'>> {
  const verify = { kind: 'verify' as const, path: '/oauth/verify', tokensFile: pool.accessFile }
  const wrongSecrets = { kind: 'wrong-secrets' as const, path: '/oauth/token', body: ccBody, clientId: BURST_CLIENT_ID }
  const burst = await burstOfWrongSecrets(service.url, verify, wrongSecrets, CONNECTIONS)
  log(`burst: ${burst.burst.non2xx} of 300 answered 401, 429 or 503; verify p99 ${burst.verifyDuringBurst.p99} ms during it, ${burst.verifyAlone.p99} ms alone`)
  await deleteKeys(REDIS_URL, `${redisPrefix}auth-failures:`)
  const token = { kind: 'form' as const, path: '/oauth/token', body: ccBody, headers: auth }
  const memory = await memoryGrowth(service.url, service.child.pid, token, MEMORY_REQUESTS, CONNECTIONS)
  log(`resident size: ${memory.rssMiB} MiB after ${memory.afterRequests} token requests, ${memory.rssAfterAllMiB} MiB after ${memory.afterAllRequests}`)
  return { burst, memory }
}

const database = `ss_bench_${process.pid}`
const admin = new pg.Client({ connectionString: ADMIN_URL })
await admin.connect()
await admin.query(`CREATE DATABASE ${database}`)
const databaseUrl = Object.assign(new URL(ADMIN_URL), { pathname: `/${database}` }).toString()
const redisPrefix = `ss-bench:${process.pid}:`
const servers: Server[] = []

try {
  const machine = { cpus: cpus().length, model: cpus()[0]?.model ?? 'cpu', memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version }
  const loadAtStart = loadavg()[0] ?? 0
  log(`session-service benchmark, ${REDIS} Redis: ${machine.cpus} × ${machine.model}, Node.js ${machine.node}, ${ROUNDS} rounds of ${SECONDS} s, ${CONNECTIONS} connections, load average ${loadAtStart.toFixed(2)}`)
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 })
  const privateKeyPem = rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()
  const serviceEnv = serviceEnvironment(databaseUrl, redisPrefix, privateKeyPem)
  const service = await startService(serviceEnv, work)
  servers.push(service)
  await insertClients(databaseUrl)
  const pool = await tokenPool(service.url, basic, work)
  const ceilingsFile = join(work, 'ceilings.json')
  const ceilingConfig = await ceilingSettings(service.url, rsa, pool)
  writeFileSync(ceilingsFile, JSON.stringify(ceilingConfig), { mode: 0o600 })
  const ceilings = await startCeilings(ceilingsFile)
  servers.push(ceilings)
  rmSync(ceilingsFile) // it holds the private key, and was read at start

  // Issued now, it outlives the run (JWT_EXPIRY, an hour by default).
  const plans = chosenPlans(scenarioPlans(pool, { htu: ceilingConfig.dpopUrl, subject: await subjectToken(service.url, basic) }))
  const scenarios: ScenarioResult[] = []
  for (const plan of plans) {
    log(plan.name)
    scenarios.push(await measureScenario(plan, { service, ceiling: ceilings }, roundSettings, log))
  }
  const extras = REDIS === 'single' && ONLY.length === 0 ? await runExtras(service, pool, redisPrefix) : {}
  await stop(service.child)

  const settings = { seconds: SECONDS, rounds: ROUNDS, connections: CONNECTIONS, tokenPool: pool.size, memoryRequests: MEMORY_REQUESTS, pinning: 'service and ceilings on core 0, load generator on core 1' }
  const loadAverage = { start: loadAtStart, end: loadavg()[0] ?? 0 }
  const run: BenchRun = { redis: REDIS, date: new Date().toISOString(), machine, loadAverage, settings, scenarios, ...extras }
  const file = join(here, '..', '..', 'bench', 'results.json')
  if (ONLY.length > 0) {
    process.stdout.write(markdownTable({ runs: [run] }))
    process.stdout.write(`\nsome scenarios only: ${file} left as it was\n`)
  } else {
    process.stdout.write(markdownTable(mergeRun(file, run)))
    process.stdout.write(`\nwritten to ${file}\n`)
  }
  await profileScenarios(plans.filter((plan) => PROFILE.includes('all') || PROFILE.includes(plan.name)), { env: serviceEnv, cwd: work, settings: roundSettings, log })
} finally {
  await Promise.all(servers.map(async (server) => await stop(server.child)))
  await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`)
  await admin.end()
  if (REDIS === 'cluster') await deleteClusterKeys(CLUSTER_NODES, redisPrefix)
  else await deleteKeys(REDIS_URL, redisPrefix)
}
