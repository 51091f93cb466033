// Builds the real app against the real PostgreSQL and Redis. Every call to
// build() gets a database of its own (created here, dropped at teardown) and
// a Redis key prefix of its own, so test files run in parallel safely.
//
// Where no PostgreSQL server answers (never under CI: see backends.ts), a
// "database" is an embedded one in a folder of its own, named by a URL of the
// form embedded:<folder>; where no Redis answers, the app keeps its state in
// the database. Tests that need a real server skip with `needs.postgres` or
// `needs.redis` as their reason.
import { spawn, type ChildProcess, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { generateKeyPairSync, randomBytes } from 'node:crypto'
import { createConnection, createServer } from 'node:net'
import { cp, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify, { type FastifyInstance, type LightMyRequestResponse } from 'fastify'
import pg from 'pg'
import { Redis } from 'ioredis'
import bcrypt from 'bcryptjs'
import app, { options } from '../app.js'
import { loadConfig, type Config } from '../plugins/config.js'
import { embeddedDatabase, type Database } from '../storage/database.js'
import { lockDataDir, PGDATA } from '../storage/data-dir.js'
import { embeddedTemplate, TEST_DATABASE_URL, TEST_REDIS_URL, testBackends } from './backends.js'

export { TEST_DATABASE_URL, TEST_REDIS_URL }

/** Which real servers this run has (both, under CI). */
export const backends = await testBackends()

/** Skip reasons for tests that need a real server: false when it is there. */
export const needs = {
  postgres: backends.postgres ? false : 'needs a PostgreSQL server (none answers; the suite runs on the embedded database)',
  redis: backends.redis ? false : 'needs a Redis server (none answers; the suite runs on the in-database store)'
} as const

const EMBEDDED_PREFIX = 'embedded:'

/** The folder of an embedded test database, or undefined for a server URL. */
export function embeddedDir (databaseUrl: string): string | undefined {
  return databaseUrl.startsWith(EMBEDDED_PREFIX) ? databaseUrl.slice(EMBEDDED_PREFIX.length) : undefined
}

// The open database of each running embedded app, by folder: the embedded
// database admits one opener, so sql() goes through the app while it runs.
const openEmbedded = new Map<string, Database>()

/** The project folder (entry points are spawned from here). */
export const PROJECT_DIR = join(import.meta.dirname, '..')

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
  return env
}

export interface RunResult {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  ms: number
}

export interface RunOptions {
  /** exactly these variables (plus the loader settings) */
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
    env: { ...runnerEnv(), ...options.env },
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

/** The part of a tap Test that the helpers use. */
export interface TestContext {
  teardown: (fn: () => unknown) => void
}

export interface KeyPair {
  privateKey: string
  publicKey: string
}

export function generateRsaKeyPair (): KeyPair {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 })
  return {
    privateKey: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKey: publicKey.export({ type: 'spki', format: 'pem' }).toString()
  }
}

/** One signing key per test file: generating RSA keys is slow. */
export const testKeys = generateRsaKeyPair()

function databaseUrlFor (name: string): string {
  const url = new URL(TEST_DATABASE_URL)
  url.pathname = `/${name}`
  return url.toString()
}

/** A new empty database, dropped when the test ends. */
export async function createDatabase (t: TestContext): Promise<string> {
  if (!backends.postgres) {
    const dir = await mkdtemp(join(tmpdir(), 'ss-test-'))
    t.teardown(async () => await rm(dir, { recursive: true, force: true }))
    await cp(await embeddedTemplate(), join(dir, PGDATA), { recursive: true })
    return `${EMBEDDED_PREFIX}${dir}`
  }
  const name = `ss_test_${process.pid}_${randomBytes(4).toString('hex')}`
  const admin = new pg.Client({ connectionString: TEST_DATABASE_URL })
  await admin.connect()
  await admin.query(`CREATE DATABASE ${name}`)
  await admin.end()
  t.teardown(async () => {
    const cleanup = new pg.Client({ connectionString: TEST_DATABASE_URL })
    await cleanup.connect()
    await cleanup.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
    await cleanup.end()
  })
  return databaseUrlFor(name)
}

/** A Redis key prefix of its own; its keys are deleted when the test ends. */
export function createRedisPrefix (t: TestContext): string {
  const prefix = `ss-test:${process.pid}:${randomBytes(4).toString('hex')}:`
  if (!backends.redis) return prefix
  t.teardown(async () => {
    const redis = new Redis(TEST_REDIS_URL)
    let cursor = '0'
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500)
      if (keys.length > 0) await redis.del(...keys)
      cursor = next
    } while (cursor !== '0')
    await redis.quit()
  })
  return prefix
}

export interface BuildOptions {
  /** Environment variables on top of the test defaults. */
  env?: Record<string, string>
  /** Share a database with another instance (created otherwise). */
  databaseUrl?: string
  /** Share a Redis prefix with another instance (created otherwise). */
  redisPrefix?: string
}

export interface TestApp {
  app: FastifyInstance
  config: Config
  databaseUrl: string
  redisPrefix: string
}

export function testEnv (databaseUrl: string, redisPrefix: string, env: Record<string, string> = {}): Record<string, string> {
  const dir = embeddedDir(databaseUrl)
  return {
    ...(dir === undefined ? { DATABASE_URL: databaseUrl } : { DATA_DIR: dir }),
    ...(backends.redis ? { REDIS_URL: TEST_REDIS_URL } : {}),
    REDIS_KEY_PREFIX: redisPrefix,
    JWT_PRIVATE_KEY: testKeys.privateKey,
    JWT_PUBLIC_KEY: testKeys.publicKey,
    LOG_LEVEL: 'silent',
    ...env
  }
}

/** The app as the server runs it, ready, closed at teardown. */
export async function build (t: TestContext, buildOptions: BuildOptions = {}): Promise<TestApp> {
  const databaseUrl = buildOptions.databaseUrl ?? await createDatabase(t)
  const redisPrefix = buildOptions.redisPrefix ?? createRedisPrefix(t)
  const config = loadConfig(testEnv(databaseUrl, redisPrefix, buildOptions.env))
  const instance = Fastify({ ...options, logger: false })
  await instance.register(app, { config })
  t.teardown(async () => await instance.close())
  trackEmbedded(instance, databaseUrl)
  await instance.ready()
  return { app: instance, config, databaseUrl, redisPrefix }
}

export interface ClientSpec {
  id: string
  secret: string
  rateLimit?: number | null
  status?: 'enabled' | 'disabled'
}

/** Inserts a client the way the original service's operators did: plain SQL and a bcrypt hash. */
export async function insertClient (databaseUrl: string, spec: ClientSpec): Promise<void> {
  const hash = await bcrypt.hash(spec.secret, 10)
  await sql(databaseUrl, 'INSERT INTO clients (client_id, client_secret_hash, rate_limit) VALUES ($1, $2, $3)', [spec.id, hash, spec.rateLimit ?? null])
  if (spec.status === 'disabled') await sql(databaseUrl, "UPDATE clients SET status = 'disabled' WHERE client_id = $1", [spec.id])
}

// Called before ready(): once ready, the app's database serves sql() for its
// folder, until the app closes.
function trackEmbedded (instance: FastifyInstance, databaseUrl: string): void {
  const dir = embeddedDir(databaseUrl)
  if (dir === undefined) return
  instance.addHook('onReady', async () => { openEmbedded.set(dir, instance.db) })
  instance.addHook('onClose', async () => { if (openEmbedded.get(dir) === instance.db) openEmbedded.delete(dir) })
}

/** For an app built elsewhere (the Lambda module's): sql() on its embedded database goes through it. */
export function attachEmbedded (instance: FastifyInstance, databaseUrl: string): void {
  const dir = embeddedDir(databaseUrl)
  if (dir !== undefined) openEmbedded.set(dir, instance.db)
}

/**
 * Runs one statement on a database with a connection of its own (an embedded
 * database: through the app that has it open, or opened for the statement).
 */
export async function sql<R extends pg.QueryResultRow = Record<string, unknown>> (databaseUrl: string, text: string, values: unknown[] = []): Promise<R[]> {
  const dir = embeddedDir(databaseUrl)
  if (dir !== undefined) {
    const running = openEmbedded.get(dir)
    if (running !== undefined) return (await running.query<R>(text, values)).rows
    // Nobody has it open: open it for the statement, under the same lock as
    // the service (which refuses a second opener, in this process or another).
    const release = lockDataDir(dir)
    try {
      const db = await embeddedDatabase(join(dir, PGDATA))
      try {
        return (await db.query<R>(text, values)).rows
      } finally {
        await db.close()
      }
    } finally {
      release()
    }
  }
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  try {
    return (await client.query<R>(text, values)).rows
  } finally {
    await client.end()
  }
}

// RFC 6749 §2.3.1 / appendix B: form-urlencode, where a space is '+'.
function formEncode (value: string): string {
  return encodeURIComponent(value).replace(/%20/g, '+')
}

/** An HTTP Basic header value as RFC 6749 §2.3.1 requires. */
export function basicAuth (clientId: string, clientSecret: string): string {
  return 'Basic ' + Buffer.from(`${formEncode(clientId)}:${formEncode(clientSecret)}`).toString('base64')
}

export function form (fields: Record<string, string>): string {
  return new URLSearchParams(fields).toString()
}

export const FORM = { 'content-type': 'application/x-www-form-urlencoded' }

/** POST /oauth/token with a form body and optional extra headers. */
export async function tokenRequest (app: FastifyInstance, fields: Record<string, string>, headers: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/oauth/token', headers: { ...FORM, ...headers }, payload: form(fields) })
}

export interface IssuedTokens {
  access_token: string
  refresh_token: string
  token_type: string
  expires_in: number
}

/** client_credentials with client_secret_post; fails the caller if not 200. */
export async function issueTokens (app: FastifyInstance, clientId: string, clientSecret: string): Promise<IssuedTokens> {
  const res = await tokenRequest(app, { grant_type: 'client_credentials', client_id: clientId, client_secret: clientSecret })
  if (res.statusCode !== 200) throw new Error(`token request failed: ${res.statusCode} ${res.body}`)
  return res.json()
}

export async function verify (app: FastifyInstance, token: unknown): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/oauth/verify', payload: { token } })
}

/** The claims of a JWT, read without verification (for assertions only). */
export function decodeJwt (token: string): { header: Record<string, unknown>, payload: Record<string, unknown> } {
  const [header, payload] = token.split('.')
  return {
    header: JSON.parse(Buffer.from(header ?? '', 'base64url').toString()),
    payload: JSON.parse(Buffer.from(payload ?? '', 'base64url').toString())
  }
}

/** A TCP port that was free a moment ago (nothing listens on it). */
export async function freePort (): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = createServer()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      const port = typeof address === 'object' && address !== null ? address.port : 0
      server.close(() => resolve(port))
    })
  })
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

/** The app with a warn-level logger whose lines are collected in `lines`. */
export async function buildLogged (t: TestContext, env: Record<string, string>): Promise<{ instance: FastifyInstance, lines: Array<Record<string, unknown>> }> {
  const lines: Array<Record<string, unknown>> = []
  const stream = new Writable({
    write (chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n')) {
        if (line.trim() !== '') lines.push(JSON.parse(line))
      }
      callback()
    }
  })
  const databaseUrl = await createDatabase(t)
  const config = loadConfig(testEnv(databaseUrl, createRedisPrefix(t), env))
  const instance = Fastify({ ...options, logger: { level: 'warn', stream } })
  await instance.register(app, { config })
  t.teardown(async () => await instance.close())
  trackEmbedded(instance, databaseUrl)
  await instance.ready()
  return { instance, lines }
}

export interface Exit {
  code: number | null
  signal: NodeJS.Signals | null
}

/** server.ts as a process of its own, with exactly `env`; killed at teardown if still running. */
export class ServerProcess {
  readonly child: ChildProcessWithoutNullStreams
  readonly exited: Promise<Exit>
  stdout = ''
  stderr = ''

  constructor (t: TestContext, env: Record<string, string>) {
    this.child = spawn(process.execPath, [...process.execArgv, 'server.ts'], { cwd: PROJECT_DIR, env: { ...runnerEnv(), ...env } })
    this.child.stdout.setEncoding('utf8').on('data', (chunk: string) => { this.stdout += chunk })
    this.child.stderr.setEncoding('utf8').on('data', (chunk: string) => { this.stderr += chunk })
    this.exited = new Promise((resolve) => {
      this.child.on('close', (code, signal) => resolve({ code, signal }))
    })
    t.teardown(async () => {
      if (this.child.exitCode === null && this.child.signalCode === null) {
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
    return await Promise.race([this.exited, sleep(ms).then(() => undefined)])
  }
}
