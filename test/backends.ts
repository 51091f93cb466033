// Which backends the tests run against. With PostgreSQL and Redis answering
// (TEST_DATABASE_URL, TEST_REDIS_URL; in the cluster run, TEST_REDIS=cluster,
// the Redis Cluster at TEST_REDIS_CLUSTER_NODES), the real servers; where one does not
// answer, the embedded database or the in-database store takes its place, so
// that the suite runs on a machine with Node.js only. Under CI (CI=true) the
// real servers are required: that path is the one CI proves.
//
// Run by tap before the test files (.taprc `before`), it prints which
// backends the run uses at the top of the output, and fails the run under CI
// when a server does not answer. Each test file asks again through the helper
// (the answer does not change during a run).
import { createHash, randomBytes } from 'node:crypto'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { rename, rm } from 'node:fs/promises'
import { createConnection } from 'node:net'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { embeddedDatabase } from '../storage/database.ts'
import { applyMigrations, MIGRATIONS_DIR } from '../plugins/migrations.ts'
import { clusterAnswers, clusterRun, TEST_REDIS_CLUSTER_NODES } from './helpers/redis-cluster.ts'

export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'

export interface Backends {
  /** a PostgreSQL server answers at TEST_DATABASE_URL */
  postgres: boolean
  /** a Redis server answers at TEST_REDIS_URL (the cluster run: the Redis Cluster answers) */
  redis: boolean
}

// One TCP connection and a greeting: PostgreSQL answers an SSLRequest with
// one byte (S or N); Redis answers PING with +PONG.
async function answers (url: string, greeting: Buffer, check: (reply: Buffer) => boolean): Promise<boolean> {
  const { hostname, port } = new URL(url)
  return await new Promise((resolve) => {
    const socket = createConnection({ host: hostname.replace(/^\[|\]$/g, ''), port: Number(port) })
    const done = (answer: boolean): void => { socket.destroy(); resolve(answer) }
    socket.setTimeout(1000, () => done(false))
    socket.on('error', () => done(false))
    socket.on('connect', () => socket.write(greeting))
    socket.on('data', (data) => done(check(data)))
  })
}

const SSL_REQUEST = Buffer.from([0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])

export async function probeBackends (): Promise<Backends> {
  const [postgres, redis] = await Promise.all([
    answers(TEST_DATABASE_URL.replace(/^postgres(ql)?:/, 'http:'), SSL_REQUEST, (reply) => reply[0] === 0x53 || reply[0] === 0x4e),
    clusterRun
      ? clusterAnswers(TEST_REDIS_CLUSTER_NODES)
      : answers(TEST_REDIS_URL.replace(/^rediss?:/, 'http:'), Buffer.from('PING\r\n'), (reply) => reply.toString().startsWith('+PONG'))
  ])
  return { postgres, redis }
}

export const requireRealBackends = process.env.CI === 'true'

/** The backends of this run: the real servers under CI (or an error), else what answers. */
export async function testBackends (): Promise<Backends> {
  const found = await probeBackends()
  if (requireRealBackends && !(found.postgres && found.redis)) {
    const redis = clusterRun
      ? `the Redis Cluster (${TEST_REDIS_CLUSTER_NODES}: each node must say cluster_state:ok; .ci/redis-cluster starts one)`
      : `Redis (${TEST_REDIS_URL})`
    const missing = [found.postgres ? undefined : `PostgreSQL (${TEST_DATABASE_URL})`, found.redis ? undefined : redis].filter(Boolean)
    throw new Error(`CI=true requires the real servers, and ${missing.join(' and ')} did not answer`)
  }
  return found
}

/**
 * A migrated embedded database that test databases are copied from: creating
 * one from nothing (initdb in WebAssembly) takes seconds, a copy a fraction of
 * that. One per set of migrations, shared by every test process; created
 * under a temporary name and renamed, so concurrent creators do not collide.
 */
export async function embeddedTemplate (): Promise<string> {
  const hash = createHash('sha256')
  for (const name of readdirSync(MIGRATIONS_DIR).sort()) hash.update(name).update(readFileSync(join(MIGRATIONS_DIR, name)))
  const dir = join(tmpdir(), `ss-test-template-${hash.digest('hex').slice(0, 16)}`)
  if (existsSync(dir)) return dir
  const building = `${dir}.${process.pid}.${randomBytes(4).toString('hex')}`
  const db = await embeddedDatabase(building)
  try {
    await applyMigrations(db, { info: () => {} })
  } finally {
    await db.close()
  }
  try {
    await rename(building, dir)
  } catch {
    await rm(building, { recursive: true, force: true }) // another process was first
  }
  return dir
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === import.meta.filename) {
  try {
    const { postgres, redis } = await testBackends()
    if (!postgres) await embeddedTemplate()
    const line = (name: string, real: boolean, where: string, instead: string): string =>
      `#   ${name}: ${real ? `the real server at ${where}` : `none answers at ${where}; ${instead}`}`
    process.stdout.write([
      `# Node.js ${process.version}`,
      postgres && redis ? `# backends: real PostgreSQL and ${clusterRun ? 'Redis Cluster' : 'Redis'}` : '# backends: EMBEDDED (a server did not answer; CI=true requires both)',
      line('PostgreSQL', postgres, TEST_DATABASE_URL, 'the embedded PostgreSQL (PGlite) is used'),
      clusterRun
        ? line('Redis Cluster', redis, TEST_REDIS_CLUSTER_NODES, 'the in-database store and in-process rate limits are used')
        : line('Redis', redis, TEST_REDIS_URL, 'the in-database store and in-process rate limits are used'),
      ''
    ].join('\n'))
  } catch (err) {
    process.stderr.write(`# backends: ${(err as Error).message}\n`)
    process.exitCode = 1
  }
}
