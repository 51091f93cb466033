// What the revocations held in memory cost (storage/revocation-mirror.ts):
// a database of its own with BENCH_REVOCATIONS rows (default 1,000,000; half
// access tokens by jti, half sessions by sid, ids as the service makes them),
// one copy loaded through the service's own code against the local
// PostgreSQL and Redis, and the heap before and after, each after a full
// garbage collection. Prints one line per figure.
//
//   npm run build && node --expose-gc dist/bench/revocations-memory.js
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { Redis } from 'ioredis'
import { applyMigrations } from '../plugins/migrations.ts'
import { serverDatabase } from '../storage/database.ts'
import { readRecordSecret, recordSeal } from '../storage/record-seal.ts'
import { revocationMirror } from '../storage/revocation-mirror.ts'
import { deleteKeys } from './common.ts'

const COUNT = Number(process.env.BENCH_REVOCATIONS ?? 1_000_000)
const ADMIN_URL = process.env.BENCH_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379'
const quiet = { info: () => {}, warn: (fields: object, message: string) => { console.error(message, fields) } }

const gc = (globalThis as { gc?: () => void }).gc
if (gc === undefined) throw new Error('run with node --expose-gc')

function heapMiB (): number {
  gc?.()
  gc?.()
  return process.memoryUsage().heapUsed / 2 ** 20
}

const name = `ss_bench_revocations_${randomBytes(4).toString('hex')}`
const admin = new pg.Client({ connectionString: ADMIN_URL })
await admin.connect()
await admin.query(`CREATE DATABASE ${name}`)
const url = new URL(ADMIN_URL)
url.pathname = `/${name}`
const db = serverDatabase({ connectionString: url.toString(), max: 2, timeoutMs: 60_000 })
const prefix = `ss-bench-revocations:${randomBytes(4).toString('hex')}:`
const redis = new Redis(REDIS_URL, { keyPrefix: prefix })
try {
  await applyMigrations(db, quiet)
  // Ids as the service makes them: UUIDs for jti and sid.
  await db.query(`INSERT INTO revocations (kind, id, expires_at)
    SELECT CASE WHEN n % 2 = 0 THEN 'access_token' ELSE 'session' END, gen_random_uuid()::text, now() + interval '1 hour'
    FROM generate_series(1, $1) AS n`, [COUNT])
  const seal = recordSeal(async () => await readRecordSecret(db), quiet)
  const before = heapMiB()
  const mirror = revocationMirror({ redis, channel: `${prefix}revocations:notices`, db, seal, maxEntries: COUNT, log: quiet })
  const started = performance.now()
  await mirror.start()
  const loadSeconds = (performance.now() - started) / 1000
  const after = heapMiB()
  // Answering once its first heartbeat has come back through the subscription.
  for (const until = Date.now() + 2000; !mirror.stats().current && Date.now() < until;) await new Promise((resolve) => setTimeout(resolve, 20))
  const { entries, current } = mirror.stats()
  console.log(`revocations loaded: ${entries} (answering: ${String(current)})`)
  console.log(`load time: ${loadSeconds.toFixed(1)} s`)
  console.log(`heap: ${before.toFixed(1)} MiB before, ${after.toFixed(1)} MiB after: ${(after - before).toFixed(1)} MiB, ${Math.round((after - before) * 2 ** 20 / entries)} bytes per revocation`)
  mirror.close()
} finally {
  redis.disconnect()
  await deleteKeys(REDIS_URL, prefix)
  await db.close()
  await admin.query(`DROP DATABASE ${name}`)
  await admin.end()
}
