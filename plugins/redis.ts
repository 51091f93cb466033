import { readFileSync } from 'node:fs'
import fp from 'fastify-plugin'
import fastifyRedis from '@fastify/redis'
import { Cluster, Redis, type RedisOptions } from 'ioredis'
import { ConfigError, type Config, type Settings } from './config.ts'
import { guard, withTimeout } from './errors.ts'
import type { RedisClient } from '../storage/redis-commands.ts'

export type { RedisClient } from '../storage/redis-commands.ts'

declare module 'fastify' {
  interface FastifyInstance {
    /** Resolves when Redis answers PING within the given time; null without REDIS_URL. */
    pingRedis: ((timeoutMs: number) => Promise<void>) | null
  }
}

/** How long the start waits for Redis to answer. */
const REDIS_START_WAIT_MS = 10_000

/**
 * The connection options that every Redis client of the service shares: its
 * own, its subscriber's (a duplicate keeps them) and the CLI's. The ACL user
 * name, the password and TLS come from REDIS_URL itself
 * (`rediss://user:password@host:port`), which ioredis reads; nothing here
 * overrides them. REDIS_TLS_CA_FILE adds the CA that the server's certificate
 * must chain to, in place of the public ones. Certificates are always
 * verified.
 */
export function redisConnectionOptions (settings: Pick<Config, 'redisUrl' | 'redisTlsCaFile'>): RedisOptions {
  const caFile = settings.redisTlsCaFile
  if (caFile === undefined) return {}
  // The URL says whether the connection is encrypted: a CA with redis://
  // would turn TLS on behind its back (ioredis reads rediss:// only).
  if (settings.redisUrl?.startsWith('rediss://') !== true) {
    throw new ConfigError('REDIS_TLS_CA_FILE', 'is set, but REDIS_URL is not a rediss:// (TLS) URL; use rediss:// or unset REDIS_TLS_CA_FILE')
  }
  let ca: string
  try {
    ca = readFileSync(caFile, 'utf8')
  } catch (err) {
    throw new ConfigError('REDIS_TLS_CA_FILE', `cannot read ${caFile} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
  }
  if (!ca.includes('-----BEGIN CERTIFICATE-----')) throw new ConfigError('REDIS_TLS_CA_FILE', `${caFile} holds no PEM certificate`)
  return { tls: { ca } }
}

/** The options of one connection that do not apply to a cluster as a whole. */
type ClientOptions = Pick<RedisOptions, 'keyPrefix' | 'connectionName' | 'connectTimeout' | 'commandTimeout' | 'enableOfflineQueue' |
'enableAutoPipelining' | 'maxRetriesPerRequest' | 'retryStrategy' | 'lazyConnect'>

/** The ACL user, the password and TLS of REDIS_URL, for each node of a cluster. */
function clusterNodeOptions (settings: Pick<Settings, 'redisUrl' | 'redisTlsCaFile'>): RedisOptions {
  const url = new URL(settings.redisUrl ?? '')
  const username = decodeURIComponent(url.username)
  const password = decodeURIComponent(url.password)
  return {
    ...(username === '' ? {} : { username }),
    ...(password === '' ? {} : { password }),
    ...(url.protocol === 'rediss:' ? { tls: redisConnectionOptions(settings).tls ?? {} } : {})
  }
}

/**
 * The service's (and the CLI's) Redis client: one server from REDIS_URL, or,
 * with REDIS_CLUSTER_NODES, ioredis' Cluster client seeded with those nodes,
 * each connection with REDIS_URL's user, password and TLS.
 */
export function createRedisClient (settings: Pick<Settings, 'redisUrl' | 'redisTlsCaFile' | 'redisClusterNodes'>, options: ClientOptions): RedisClient {
  const nodes = settings.redisClusterNodes
  if (nodes === undefined) return new Redis(settings.redisUrl ?? '', { ...redisConnectionOptions(settings), ...options })
  const { keyPrefix, enableOfflineQueue, enableAutoPipelining, lazyConnect, retryStrategy, ...perNode } = options
  return new Cluster(nodes, {
    keyPrefix,
    enableOfflineQueue,
    enableAutoPipelining,
    lazyConnect,
    clusterRetryStrategy: retryStrategy === undefined || retryStrategy === null ? undefined : (attempt) => retryStrategy(attempt) ?? null,
    // Node addresses are used as the cluster gives them: with TLS, a managed
    // cluster's certificates name its hosts, which a lookup here would lose.
    dnsLookup: (address, callback) => { callback(null, address) },
    // A command for a node that is down fails at once (503) rather than
    // waiting in a queue while the cluster fails over.
    redisOptions: { ...perNode, enableOfflineQueue, ...clusterNodeOptions(settings) }
  })
}

/** A message about a Redis connection with the password of REDIS_URL, should it appear, blotted out. */
export function withoutRedisPassword (message: string, redisUrl: string): string {
  let password = ''
  try {
    password = decodeURIComponent(new URL(redisUrl).password)
  } catch {}
  return password === '' ? message : message.split(password).join('***')
}

// Errors that no retry mends, so that the start stops at once with the cause
// instead of after the whole wait: refused credentials (a wrong password, an
// unknown or disabled ACL user, no password where one is required), a user
// without a command the connection needs, and a server certificate that does
// not verify.
function permanentProblem (err: Error): string | undefined {
  if (/\b(WRONGPASS|NOAUTH)\b/.test(err.message)) return 'Redis refused the user name or password at start'
  if (/\bNOPERM\b/.test(err.message)) return 'the Redis user may not run a command the service needs'
  const code = (err as NodeJS.ErrnoException).code ?? ''
  if (/CERT|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER/.test(code)) {
    return 'the TLS certificate of Redis does not verify against REDIS_TLS_CA_FILE (or, without it, the public CAs)'
  }
  return undefined
}

export default fp(async (fastify) => {
  const { config } = fastify
  // Checked with or without REDIS_URL: a CA file without it is a mistake too.
  redisConnectionOptions(config)
  const { redisUrl } = config
  if (redisUrl === undefined) {
    fastify.decorate('pingRedis', null)
    return
  }
  let lastErrorLog = 0
  let lastError: Error | undefined
  // While the start waits: an error that no retry mends ends the wait.
  let refuseStart: ((refusal: Error) => void) | undefined
  let refusal: Error | undefined
  const client = createRedisClient(config, {
    // Every key this service writes, rate-limit counters included, carries the
    // prefix, so several deployments can share one Redis.
    keyPrefix: config.redisKeyPrefix,
    connectionName: 'session-service',
    connectTimeout: config.dependencyTimeoutMs,
    commandTimeout: config.dependencyTimeoutMs,
    // While Redis is unreachable, commands fail at once (and become 503s)
    // instead of queueing until the connection returns.
    enableOfflineQueue: false,
    // Commands issued in the same tick (many concurrent requests) go out in
    // one write and come back in one read.
    enableAutoPipelining: true,
    maxRetriesPerRequest: 1,
    retryStrategy: (attempt: number) => Math.min(attempt * 200, 2000),
    lazyConnect: true
  })
  // ioredis reports every failed reconnect; log at most one line per 10 s.
  const onError = (err: Error): void => {
    lastError = err
    const problem = permanentProblem(err)
    if (problem !== undefined && refuseStart !== undefined) {
      refusal = new Error(`REDIS_URL: ${problem} (${withoutRedisPassword(err.message, redisUrl)})`)
      refuseStart(refusal)
    }
    const now = Date.now()
    if (now - lastErrorLog < 10_000) return
    lastErrorLog = now
    fastify.log.warn({ cause: withoutRedisPassword(err.message, redisUrl) }, 'redis connection error')
  }
  client.on('error', onError)
  // A cluster reports each node's trouble apart from its own.
  client.on('node error', onError)

  // A bounded wait at start: a Redis that does not answer stops the start
  // with one line naming it, instead of waiting for the plugin timeout.
  client.connect().catch(() => {}) // failures arrive as 'error' events; ioredis retries
  // Not events.once: it gives up at the first 'error', and ioredis keeps
  // retrying after one.
  const ready = new Promise<void>((resolve, reject) => {
    client.once('ready', () => resolve())
    refuseStart = reject
  })
  try {
    await withTimeout(ready, REDIS_START_WAIT_MS, 'redis')
  } catch {
    client.disconnect()
    const cause = lastError === undefined ? 'no answer' : withoutRedisPassword(lastError.message, redisUrl)
    throw refusal ?? new Error(`REDIS_URL: Redis did not answer within ${REDIS_START_WAIT_MS / 1000} s at start (${cause})`)
  } finally {
    refuseStart = undefined
  }
  // Ours to close: quit when Redis answers, drop the connection when it does
  // not, so that a shutdown during an outage does not wait for it.
  await fastify.register(fastifyRedis, { client, closeClient: false })
  fastify.addHook('onClose', async () => {
    await withTimeout(client.quit(), 1000, 'redis').catch(() => client.disconnect())
  })

  fastify.decorate('pingRedis', async (timeoutMs: number) => {
    await guard('redis', withTimeout(fastify.redis.ping(), timeoutMs, 'redis'))
  })
}, { name: 'redis', dependencies: ['config'] })
