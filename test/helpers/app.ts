// The app as the server runs it, built against the test databases: every
// build() gets a database of its own (created here, dropped at teardown) and
// a Redis key prefix of its own, so test files run in parallel safely.
import { Writable } from 'node:stream'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import app, { options } from '../../app.ts'
import { loadConfig, type Config } from '../../plugins/config.ts'
import { createDatabase, embeddedDir, trackEmbedded } from './databases.ts'
import { testKeys } from './jwt.ts'
import { createRedisPrefix, serviceRedisEnv } from './redis.ts'
import { backends, type TestContext } from './servers.ts'

export interface BuildOptions {
  /** Environment variables on top of the test defaults. */
  env?: Record<string, string>
  /** Share a database with another instance (created otherwise). */
  databaseUrl?: string
  /** Share a Redis prefix with another instance (created otherwise). */
  redisPrefix?: string
  /** Test defaults to leave out, so that the service's own default applies. */
  unset?: string[]
  /** The app's clock and the stored keys' poll (app.ts AppOptions). */
  clock?: () => number
  keyPollMs?: number
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
    ...(backends.redis ? serviceRedisEnv() : {}),
    REDIS_KEY_PREFIX: redisPrefix,
    JWT_PRIVATE_KEY: testKeys.privateKey,
    JWT_PUBLIC_KEY: testKeys.publicKey,
    LOG_LEVEL: 'silent',
    // The original service's issuer, which deployments migrating from it
    // keep, and which the tests' expected and forged claims name. The default
    // (the public URL) has tests of its own.
    JWT_ISSUER: 'session-service',
    // The cheapest cost the service accepts, and the one the test clients are
    // hashed at: no background rehash after each client's first token. The
    // tests of what the cost is for (timing, bursts, the upgrade) set their own.
    BCRYPT_COST: '10',
    // Test files run in parallel: a spawned server's admin listener takes a
    // port the system picks (build() opens none).
    ADMIN_PORT: '0',
    ...env
  }
}

async function buildWith (t: TestContext, buildOptions: BuildOptions, logger: FastifyServerOptions['logger']): Promise<TestApp> {
  const databaseUrl = buildOptions.databaseUrl ?? await createDatabase(t)
  const redisPrefix = buildOptions.redisPrefix ?? createRedisPrefix(t)
  const env = testEnv(databaseUrl, redisPrefix, buildOptions.env)
  for (const name of buildOptions.unset ?? []) Reflect.deleteProperty(env, name)
  const config = loadConfig(env)
  const instance = Fastify({ ...options, logger })
  await instance.register(app, { config, clock: buildOptions.clock, keyPollMs: buildOptions.keyPollMs })
  t.teardown(async () => await instance.close())
  trackEmbedded(instance, databaseUrl)
  await instance.ready()
  return { app: instance, config, databaseUrl, redisPrefix }
}

/** The app as the server runs it, ready, closed at teardown. */
export async function build (t: TestContext, buildOptions: BuildOptions = {}): Promise<TestApp> {
  return await buildWith(t, buildOptions, false)
}

/** The app with a warn-level logger whose lines are collected in `lines`. */
export async function buildLogged (t: TestContext, env: Record<string, string>, unset: string[] = []): Promise<{ instance: FastifyInstance, lines: Array<Record<string, unknown>> }> {
  const lines: Array<Record<string, unknown>> = []
  const stream = new Writable({
    write (chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n')) {
        if (line.trim() !== '') lines.push(JSON.parse(line))
      }
      callback()
    }
  })
  const { app: instance } = await buildWith(t, { env, unset }, { level: 'warn', stream })
  return { instance, lines }
}
