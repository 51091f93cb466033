import { existsSync, readFileSync } from 'node:fs'
import type { KeyObject } from 'node:crypto'
import { join, resolve } from 'node:path'
import fp from 'fastify-plugin'
import type { FastifyBaseLogger } from 'fastify'
import { envSchema } from 'env-schema'
import { parse as parseDotenv } from 'dotenv'
import { Type, type Static } from 'typebox'
import { DEFAULT_SIGNING_ALGORITHM, SIGNING_ALGORITHMS, type SigningAlgorithm } from '../signing-keys/algorithms.ts'
import { configuredKeys, keyProblem } from '../signing-keys/configured.ts'
import { keyStoreSettings, type KeyStoreSettings } from '../signing-keys/store-settings.ts'
import type { AdditionalKey } from '../signing-keys/pem.ts'
import { BCRYPT_COST } from '../storage/clients.ts'
import { SCOPE_TOKEN } from '../schemas/scope.ts'
import { createDataDirSigningKey, dataDirPermissionProblem } from '../storage/data-dir.ts'

// Named here too for the code that imports them from the config plugin.
export { SIGNING_ALGORITHMS, type SigningAlgorithm } from '../signing-keys/algorithms.ts'
export { algorithmForKey, type AdditionalKey } from '../signing-keys/pem.ts'

// A setting that cannot be used. The message always starts with the variable's
// name, so that the process can stop with one line an operator can act on.
export class ConfigError extends Error {
  readonly variable: string

  constructor (variable: string, problem: string) {
    super(`${variable}: ${problem}`)
    this.name = 'ConfigError'
    this.variable = variable
  }
}

/** A Redis server's address. */
export interface RedisNode {
  host: string
  port: number
}

/** The validated settings of the service, keys aside: what the CLI needs too. */
export interface Settings extends KeyStoreSettings {
  /** PostgreSQL server; undefined: the embedded database in dataDir */
  databaseUrl: string | undefined
  /** Redis server; undefined: kept in the database and in process (one instance only) */
  redisUrl: string | undefined
  /** absolute path of DATA_DIR (the embedded database, a generated key) */
  dataDir: string
  redisKeyPrefix: string
  algorithm: SigningAlgorithm
  /** JWT_ISSUER, else the public URL: discovery needs an issuer that is a URL */
  issuer: string
  /** which setting the issuer comes from: an unconfigured one is only right on the local machine */
  issuerSource: 'JWT_ISSUER' | 'PUBLIC_URL' | 'default'
  /**
   * Base URL of every published endpoint and of the audiences accepted in
   * client assertions: PUBLIC_URL, else the issuer when it is a URL, else
   * http://localhost:<SERVER_PORT>. No request header ever changes it.
   */
  publicUrl: string
  audience: string
  /** scopes listed as scopes_supported in the discovery documents */
  scopesSupported: string[]
  /** access token lifetime, seconds */
  accessTokenTtl: number
  /** refresh token lifetime, seconds */
  refreshTokenTtl: number
  /** random bytes in a refresh token */
  refreshTokenBytes: number
  refreshTokenClientAuth: 'required' | 'optional'
  /** how old a DPoP proof may be (its iat), seconds */
  dpopProofMaxAge: number
  /** DPoP proofs at the token endpoint must carry a server nonce (RFC 9449 §8) */
  dpopNonceRequired: boolean
  /** how long a client record may be served from the Redis cache, seconds */
  clientCacheTtl: number
  /** how long a verified client secret is remembered in process, seconds (0: never) */
  secretCacheTtl: number
  /** worker threads for bcrypt (0: on the main thread) */
  bcryptWorkers: number
  /** bcrypt compares that may wait for a worker; more are refused with 503 */
  bcryptQueueLimit: number
  /** bcrypt cost of the hashes this service writes, and the floor of a failed check's time */
  bcryptCost: number
  /** token requests per minute for a client without its own rate_limit */
  rateLimitDefault: number
  /** failed client authentications per minute for one client id from one address */
  authFailureLimit: number
  /** failed client authentications per minute from one address, all client ids together */
  authFailureLimitPerAddress: number
  migrateOnStart: boolean
  /** bound on any single PostgreSQL or Redis operation, milliseconds */
  dependencyTimeoutMs: number
  /** Cache-Control max-age of the JWKS document, seconds */
  jwksMaxAge: number
  /** largest accepted request body, bytes */
  bodyLimit: number
  pgPoolMax: number
  host: string
  port: number
  /** where the admin listener (metrics, readiness, liveness, docs, admin API) listens */
  adminHost: string
  /** 0: a port the system picks (tests) */
  adminPort: number
  /** the scope an access token must carry to call the admin API */
  adminScope: string
  logLevel: string
  /** Fastify's trustProxy: false, true, addresses and CIDR ranges, or a hop count (as a function) */
  trustProxy: boolean | string[] | ((address: string, hop: number) => boolean)
  /** a client's jwks_uri may be plain http and resolve to private addresses (tests, closed networks) */
  jwksUriAllowPrivate: boolean
  /** how long the service keeps serving after SIGTERM before it stops listening, milliseconds */
  shutdownDelayMs: number
  /** a CA certificate (PEM file) that the Redis server's certificate must chain to, for rediss:// */
  redisTlsCaFile: string | undefined
  /** seed nodes of a Redis Cluster (REDIS_CLUSTER_NODES); undefined: REDIS_URL is one server */
  redisClusterNodes: RedisNode[] | undefined
  /** revocations each instance keeps in memory at most; 0: every check asks Redis */
  revocationsInMemoryMax: number
  /** /metrics counts tokens issued by client id */
  metricsPerClient: boolean
  /** client ids that get a series of their own; the others are counted together */
  metricsClientLimit: number
  /** the request header whose sane value becomes a request's id, echoed in the response (lower case) */
  requestIdHeader: string
}

/** The settings with the keys they name: what the service runs on. */
export interface Config extends Settings {
  /** where the signing key came from; a file path when it lives in the data directory */
  signingKeySource: { kind: 'environment' } | { kind: 'data-dir', path: string, generated: boolean } | { kind: 'database' }
  /** KEY_STORE=settings: always; KEY_STORE=database: the key to store on the first start, if one is configured */
  privateKey: KeyObject | undefined
  publicKey: KeyObject | undefined
  /** published in the JWKS and accepted for verification, never used to sign */
  additionalKeys: AdditionalKey[]
}

const DURATION = '^\\s*\\d+\\s*(s|m|h|d)?\\s*$'
const DURATION_MS = '^\\s*\\d+\\s*(ms|s|m|h|d)?\\s*$'

const duration = (fallback: string): ReturnType<typeof Type.String> => Type.String({ pattern: DURATION, default: fallback })
const durationMs = (fallback: string): ReturnType<typeof Type.String> => Type.String({ pattern: DURATION_MS, default: fallback })

/** The environment the service reads: each variable, its type and its default. */
export const EnvSchema = Type.Object({
  DATABASE_URL: Type.Optional(Type.String()),
  REDIS_URL: Type.Optional(Type.String()),
  DATA_DIR: Type.String({ minLength: 1, default: './data' }),
  REDIS_KEY_PREFIX: Type.String({ default: 'session-service:', maxLength: 100 }),
  JWT_PRIVATE_KEY: Type.Optional(Type.String()),
  JWT_PRIVATE_KEY_FILE: Type.Optional(Type.String()),
  JWT_PUBLIC_KEY: Type.Optional(Type.String()),
  JWT_PUBLIC_KEY_FILE: Type.Optional(Type.String()),
  JWT_ADDITIONAL_PUBLIC_KEYS: Type.Optional(Type.String()),
  JWT_ADDITIONAL_PUBLIC_KEYS_FILE: Type.Optional(Type.String()),
  JWT_ALGORITHM: Type.Enum(SIGNING_ALGORITHMS, { default: DEFAULT_SIGNING_ALGORITHM }),
  KEY_STORE: Type.Enum(['settings', 'database'], { default: 'settings' }),
  KEY_ENCRYPTION_KEY: Type.Optional(Type.String({ maxLength: 1024 })),
  KEY_ENCRYPTION_KEY_FILE: Type.Optional(Type.String()),
  KEY_ENCRYPTION_KEY_PREVIOUS: Type.Optional(Type.String({ maxLength: 1024 })),
  KEY_ENCRYPTION_KEY_PREVIOUS_FILE: Type.Optional(Type.String()),
  KEY_PUBLISH_AHEAD: duration('3h'),
  KEY_ROTATION_INTERVAL: duration('30d'),
  JWT_ISSUER: Type.Optional(Type.String({ minLength: 1 })),
  JWT_AUDIENCE: Type.String({ minLength: 1, default: 'api' }),
  PUBLIC_URL: Type.Optional(Type.String()),
  SCOPES_SUPPORTED: Type.String({ default: '', maxLength: 8192 }),
  JWT_EXPIRY: duration('3600s'),
  REFRESH_TOKEN_EXPIRY: duration('604800s'),
  REFRESH_TOKEN_LENGTH: Type.Integer({ minimum: 16, maximum: 256, default: 32 }),
  REFRESH_TOKEN_CLIENT_AUTH: Type.Enum(['required', 'optional'], { default: 'required' }),
  DPOP_PROOF_MAX_AGE: duration('60s'),
  DPOP_NONCE_REQUIRED: Type.Boolean({ default: false }),
  CLIENT_CACHE_TTL: duration('30s'),
  SECRET_CACHE_TTL: duration('300s'),
  BCRYPT_WORKERS: Type.Integer({ minimum: 0, maximum: 64, default: 1 }),
  BCRYPT_QUEUE_LIMIT: Type.Optional(Type.Integer({ minimum: 1, maximum: 100000 })),
  BCRYPT_COST: Type.Integer({ minimum: 10, maximum: 16, default: BCRYPT_COST }),
  RATE_LIMIT_DEFAULT: Type.Integer({ minimum: 1, default: 60 }),
  AUTH_FAILURE_LIMIT: Type.Integer({ minimum: 1, default: 10 }),
  AUTH_FAILURE_LIMIT_PER_ADDRESS: Type.Integer({ minimum: 1, default: 50 }),
  MIGRATE_ON_START: Type.Boolean({ default: true }),
  DEPENDENCY_TIMEOUT: durationMs('2s'),
  JWKS_MAX_AGE: duration('300s'),
  BODY_LIMIT: Type.Integer({ minimum: 1024, maximum: 1048576, default: 16384 }),
  PG_POOL_MAX: Type.Integer({ minimum: 1, maximum: 1000, default: 10 }),
  SERVER_HOST: Type.String({ minLength: 1, default: '0.0.0.0' }),
  SERVER_PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 8080 }),
  ADMIN_HOST: Type.String({ minLength: 1, default: '127.0.0.1' }),
  ADMIN_PORT: Type.Integer({ minimum: 0, maximum: 65535, default: 9090 }),
  ADMIN_SCOPE: Type.String({ minLength: 1, maxLength: 255, default: 'session-service:admin' }),
  LOG_LEVEL: Type.Enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], { default: 'info' }),
  TRUST_PROXY: Type.String({ default: 'false', maxLength: 4096 }),
  JWKS_URI_ALLOW_PRIVATE: Type.Boolean({ default: false }),
  // Default: 0 on the embedded database, else SHUTDOWN_DELAY_DEFAULT (see shutdownDelayMs).
  SHUTDOWN_DELAY: Type.Optional(Type.String({ pattern: DURATION_MS })),
  REDIS_TLS_CA_FILE: Type.Optional(Type.String()),
  REDIS_CLUSTER_NODES: Type.Optional(Type.String({ maxLength: 4096 })),
  REVOCATIONS_IN_MEMORY_MAX: Type.Integer({ minimum: 0, maximum: 100_000_000, default: 1_000_000 }),
  METRICS_PER_CLIENT: Type.Boolean({ default: false }),
  METRICS_CLIENT_LIMIT: Type.Integer({ minimum: 1, maximum: 10000, default: 100 }),
  REQUEST_ID_HEADER: Type.String({ default: 'x-request-id', maxLength: 64 })
})

/** The environment once validated, defaults filled in. */
export type Env = Static<typeof EnvSchema>

const UNIT_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 }

/** `3600s`, `15m`, `1h`, `7d` or bare seconds, to seconds. */
export function parseDuration (variable: string, value: string, options: { allowZero?: boolean } = {}): number {
  const match = /^\s*(\d+)\s*([smhd])?\s*$/.exec(value)
  if (match === null) throw new ConfigError(variable, `"${value}" is not a duration (use 3600s, 15m, 1h, 7d or seconds)`)
  const seconds = Number(match[1]) * (UNIT_SECONDS[match[2] ?? 's'] ?? 1)
  if (!Number.isSafeInteger(seconds) || seconds < (options.allowZero === true ? 0 : 1)) throw new ConfigError(variable, 'must be at least one second')
  return seconds
}

/** Like parseDuration, also accepting milliseconds (`500ms`); returns milliseconds. */
export function parseDurationMs (variable: string, value: string, options: { allowZero?: boolean } = {}): number {
  const match = /^\s*(\d+)\s*ms\s*$/.exec(value)
  if (match === null) return parseDuration(variable, value, options) * 1000
  const ms = Number(match[1])
  if (!Number.isSafeInteger(ms) || ms < (options.allowZero === true ? 0 : 1)) throw new ConfigError(variable, 'must be at least one millisecond')
  return ms
}

type EnvSource = Record<string, string | undefined>

/** A DPoP proof is a short-lived credential: a window of hours would make it a bearer token. */
function parseProofMaxAge (value: string): number {
  const seconds = parseDuration('DPOP_PROOF_MAX_AGE', value)
  if (seconds > 3600) throw new ConfigError('DPOP_PROOF_MAX_AGE', 'must be at most 3600s')
  return seconds
}

function parseScopes (variable: string, value: string): string[] {
  const scopes = value.split(/[\s,]+/).filter((scope) => scope !== '')
  const bad = scopes.find((scope) => !SCOPE_TOKEN.test(scope))
  if (bad !== undefined) throw new ConfigError(variable, `"${bad}" is not a valid scope (RFC 6749 §3.3)`)
  return [...new Set(scopes)]
}

// One port cannot serve both listeners; 0 asks the system for a free one each.
function adminPort (adminPort: number, serverPort: number): number {
  if (adminPort !== 0 && adminPort === serverPort) throw new ConfigError('ADMIN_PORT', `must differ from SERVER_PORT (${serverPort})`)
  return adminPort
}

function parseAdminScope (value: string): string {
  if (!SCOPE_TOKEN.test(value)) throw new ConfigError('ADMIN_SCOPE', `"${value.slice(0, 64)}" is not a valid scope (RFC 6749 §3.3)`)
  return value
}

function isHttpUrl (value: string): boolean {
  try {
    const url = new URL(value)
    return (url.protocol === 'https:' || url.protocol === 'http:') && url.search === '' && url.hash === ''
  } catch {
    return false
  }
}

// Endpoint URLs are built by appending paths: no trailing slash here. The
// request's Host never enters: a header would otherwise decide which URLs a
// cacheable discovery document publishes, and which audience an assertion
// may name.
function resolvePublicUrl (publicUrl: string | undefined, issuer: string | undefined, port: number): string {
  if (publicUrl !== undefined && publicUrl !== '') {
    if (!isHttpUrl(publicUrl)) throw new ConfigError('PUBLIC_URL', 'must be an absolute http(s) URL without query or fragment')
    return publicUrl.replace(/\/+$/, '')
  }
  return issuer !== undefined && isHttpUrl(issuer) ? issuer.replace(/\/+$/, '') : `http://localhost:${port}`
}

// Without JWT_ISSUER the issuer is the public URL, so that discovery works
// out of the box: OpenID Connect and RFC 8414 clients refuse an issuer that
// is not a URL (the original service's default was "session-service").
function resolveIssuer (raw: Env, publicUrl: string): Pick<Settings, 'issuer' | 'issuerSource'> {
  if (raw.JWT_ISSUER !== undefined) return { issuer: raw.JWT_ISSUER, issuerSource: 'JWT_ISSUER' }
  return { issuer: publicUrl, issuerSource: nonEmpty(raw.PUBLIC_URL) === undefined ? 'default' : 'PUBLIC_URL' }
}

/** SHUTDOWN_DELAY when not set, with a PostgreSQL server: what a load balancer needs to stop sending here. */
const SHUTDOWN_DELAY_DEFAULT = '5s'

// The embedded database admits one process per data directory, so no other
// instance can take over while this one drains: a delay would only hold up
// the next start (a restart in development, a redeploy).
function shutdownDelayMs (raw: Env): number {
  const fallback = nonEmpty(raw.DATABASE_URL) === undefined ? '0' : SHUTDOWN_DELAY_DEFAULT
  return parseDurationMs('SHUTDOWN_DELAY', raw.SHUTDOWN_DELAY ?? fallback, { allowZero: true })
}

const IPV4_OR_CIDR = /^(\d{1,3}\.){3}\d{1,3}(\/\d{1,2})?$/
const IPV6_OR_CIDR = /^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(\/\d{1,3})?$/

// TRUST_PROXY: false or true, a number of proxy hops to trust (the address
// is then the one that many entries from the right of X-Forwarded-For), or a
// comma-separated list of proxy addresses and CIDR ranges (Fastify's forms).
function parseTrustProxy (value: string): Config['trustProxy'] {
  const text = value.trim()
  if (text === '' || text === 'false') return false
  if (text === 'true') return true
  if (/^\d+$/.test(text)) {
    const hops = Number(text)
    if (hops < 1 || hops > 100) throw new ConfigError('TRUST_PROXY', 'a hop count must be between 1 and 100')
    // proxy-addr's form of a hop count (Fastify's types lack the number form).
    return (_address: string, hop: number) => hop < hops
  }
  const entries = text.split(',').map((entry) => entry.trim()).filter((entry) => entry !== '')
  const bad = entries.find((entry) => !IPV4_OR_CIDR.test(entry) && !IPV6_OR_CIDR.test(entry) &&
    !['loopback', 'linklocal', 'uniquelocal'].includes(entry))
  if (bad !== undefined || entries.length === 0) {
    throw new ConfigError('TRUST_PROXY', `"${(bad ?? text).slice(0, 64)}" is not true, false, a hop count, or a list of addresses and CIDR ranges`)
  }
  return entries
}

/**
 * Compares waiting for a bcrypt worker by default: four per worker, about a
 * second of work at cost 12, so that the last one waiting is answered within
 * a few seconds even on a loaded machine.
 */
export const bcryptQueueDefault = (workers: number): number => 4 * Math.max(1, workers)

/** Whether API Gateway would accept this issuer: an absolute https URL without query or fragment. */
export function isGatewayIssuer (issuer: string): boolean {
  return isHttpUrl(issuer) && issuer.startsWith('https://')
}

function describeSchemaError (err: unknown): ConfigError {
  const errors = (err as { errors?: Array<{ instancePath: string, message?: string, params?: Record<string, unknown> }> }).errors
  const first = errors?.[0]
  if (first === undefined) return new ConfigError('environment', (err as Error).message)
  if (typeof first.params?.missingProperty === 'string') return new ConfigError(first.params.missingProperty, 'is required')
  const variable = first.instancePath.replace(/^\//, '') || 'environment'
  if (typeof first.params?.pattern === 'string') return new ConfigError(variable, 'is not a duration (use 3600s, 15m, 1h, 7d or seconds)')
  if (Array.isArray(first.params?.allowedValues)) return new ConfigError(variable, `must be one of ${first.params.allowedValues.join(', ')}`)
  return new ConfigError(variable, first.message ?? 'is invalid')
}

// RFC 9110 §5.1 allows more, but a name that needs more than these is a mistake.
function parseHeaderName (variable: string, value: string): string {
  const name = value.trim().toLowerCase()
  if (!/^[a-z0-9][a-z0-9-]{0,63}$/.test(name)) throw new ConfigError(variable, 'must be a header name (letters, digits and dashes)')
  return name
}

/** `host:port` or `[ipv6]:port`, as REDIS_CLUSTER_NODES lists them. */
function parseRedisNode (entry: string): RedisNode {
  const match = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(entry)
  const port = Number(match?.[3])
  if (match === null || port < 1 || port > 65535) {
    throw new ConfigError('REDIS_CLUSTER_NODES', `"${entry}" is not host:port (e.g. 10.0.1.5:6379, [::1]:7000)`)
  }
  return { host: match[1] ?? match[2] ?? '', port }
}

/**
 * The seed nodes of cluster mode: REDIS_URL's own host and port first (a
 * managed cluster's configuration endpoint), then REDIS_CLUSTER_NODES.
 * REDIS_URL stays required, as it carries the scheme (rediss:// for TLS), the
 * ACL user and the password that every node connection uses.
 */
function parseClusterNodes (raw: Env): RedisNode[] | undefined {
  const listed = nonEmpty(raw.REDIS_CLUSTER_NODES)
  if (listed === undefined) return undefined
  const redisUrl = nonEmpty(raw.REDIS_URL)
  if (redisUrl === undefined) {
    throw new ConfigError('REDIS_CLUSTER_NODES', 'needs REDIS_URL too (redis:// or rediss://, with the user and password of every node; its host is a seed node as well)')
  }
  // Hash tags ({...}) put the keys that one command touches into one slot; a
  // brace in the prefix would move every key into the prefix's slot.
  if (/[{}]/.test(raw.REDIS_KEY_PREFIX)) throw new ConfigError('REDIS_KEY_PREFIX', 'may not contain { or } with REDIS_CLUSTER_NODES (they would decide every key\'s slot)')
  const nodes = listed.split(',').map((entry) => entry.trim()).filter((entry) => entry !== '').map(parseRedisNode)
  let url: URL
  try {
    url = new URL(redisUrl)
  } catch {
    throw new ConfigError('REDIS_URL', 'is not a URL (redis://[user:password@]host:port or rediss://...)')
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') throw new ConfigError('REDIS_URL', 'must start with redis:// or rediss:// with REDIS_CLUSTER_NODES')
  if (url.hostname !== '') nodes.unshift({ host: url.hostname.replace(/^\[(.*)\]$/, '$1'), port: url.port === '' ? 6379 : Number(url.port) })
  const seen = new Set<string>()
  return nodes.filter((node) => {
    const id = `${node.host}:${node.port}`
    if (seen.has(id)) return false
    seen.add(id)
    return true
  })
}

function nonEmpty (value: string | undefined): string | undefined {
  return value === undefined || value.trim() === '' ? undefined : value
}

function readDotenv (cwd: string): EnvSource {
  const path = join(cwd, '.env')
  if (!existsSync(path)) return {}
  try {
    return parseDotenv(readFileSync(path))
  } catch (err) {
    throw new ConfigError('.env', `cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
  }
}

export interface LoadOptions {
  /** read a `.env` file from the working folder first (the given environment wins) */
  dotenv?: boolean
  /** the working folder: where `.env` is and relative paths start (default: the process's) */
  cwd?: string
}

/** The signing key file of the embedded mode, and whether it was generated just now. */
export interface DataDirKey {
  path: string
  generated: boolean
}

/** The environment (and .env) checked against the schema; a ConfigError names the first bad variable. */
function readEnv (env: EnvSource, options: LoadOptions): Env {
  const source: EnvSource = options.dotenv === true ? { ...readDotenv(options.cwd ?? process.cwd()), ...env } : { ...env }
  try {
    return envSchema<Env>({ schema: EnvSchema, data: source, env: false, dotenv: false })
  } catch (err) {
    throw describeSchemaError(err)
  }
}

function settingsFromEnv (raw: Env, cwd: string, keyEncryptionKeyRequired = true): Settings {
  const publicUrl = resolvePublicUrl(raw.PUBLIC_URL, raw.JWT_ISSUER, raw.SERVER_PORT)
  return {
    databaseUrl: nonEmpty(raw.DATABASE_URL),
    redisUrl: nonEmpty(raw.REDIS_URL),
    dataDir: resolve(cwd, raw.DATA_DIR),
    redisKeyPrefix: raw.REDIS_KEY_PREFIX,
    algorithm: raw.JWT_ALGORITHM,
    ...keyStoreSettings(raw, { keyEncryptionKeyRequired }),
    ...resolveIssuer(raw, publicUrl),
    publicUrl,
    audience: raw.JWT_AUDIENCE,
    scopesSupported: parseScopes('SCOPES_SUPPORTED', raw.SCOPES_SUPPORTED),
    accessTokenTtl: parseDuration('JWT_EXPIRY', raw.JWT_EXPIRY),
    refreshTokenTtl: parseDuration('REFRESH_TOKEN_EXPIRY', raw.REFRESH_TOKEN_EXPIRY),
    refreshTokenBytes: raw.REFRESH_TOKEN_LENGTH,
    refreshTokenClientAuth: raw.REFRESH_TOKEN_CLIENT_AUTH,
    dpopProofMaxAge: parseProofMaxAge(raw.DPOP_PROOF_MAX_AGE),
    dpopNonceRequired: raw.DPOP_NONCE_REQUIRED,
    clientCacheTtl: parseDuration('CLIENT_CACHE_TTL', raw.CLIENT_CACHE_TTL),
    secretCacheTtl: parseDuration('SECRET_CACHE_TTL', raw.SECRET_CACHE_TTL, { allowZero: true }),
    bcryptWorkers: raw.BCRYPT_WORKERS,
    bcryptQueueLimit: raw.BCRYPT_QUEUE_LIMIT ?? bcryptQueueDefault(raw.BCRYPT_WORKERS),
    bcryptCost: raw.BCRYPT_COST,
    rateLimitDefault: raw.RATE_LIMIT_DEFAULT,
    authFailureLimit: raw.AUTH_FAILURE_LIMIT,
    authFailureLimitPerAddress: raw.AUTH_FAILURE_LIMIT_PER_ADDRESS,
    migrateOnStart: raw.MIGRATE_ON_START,
    dependencyTimeoutMs: parseDurationMs('DEPENDENCY_TIMEOUT', raw.DEPENDENCY_TIMEOUT),
    jwksMaxAge: parseDuration('JWKS_MAX_AGE', raw.JWKS_MAX_AGE),
    bodyLimit: raw.BODY_LIMIT,
    pgPoolMax: raw.PG_POOL_MAX,
    host: raw.SERVER_HOST,
    port: raw.SERVER_PORT,
    adminHost: raw.ADMIN_HOST,
    adminPort: adminPort(raw.ADMIN_PORT, raw.SERVER_PORT),
    adminScope: parseAdminScope(raw.ADMIN_SCOPE),
    logLevel: raw.LOG_LEVEL,
    trustProxy: parseTrustProxy(raw.TRUST_PROXY),
    jwksUriAllowPrivate: raw.JWKS_URI_ALLOW_PRIVATE,
    shutdownDelayMs: shutdownDelayMs(raw),
    redisTlsCaFile: nonEmpty(raw.REDIS_TLS_CA_FILE),
    redisClusterNodes: parseClusterNodes(raw),
    revocationsInMemoryMax: raw.REVOCATIONS_IN_MEMORY_MAX,
    metricsPerClient: raw.METRICS_PER_CLIENT,
    metricsClientLimit: raw.METRICS_CLIENT_LIMIT,
    requestIdHeader: parseHeaderName('REQUEST_ID_HEADER', raw.REQUEST_ID_HEADER)
  }
}

/**
 * Validates the settings once, keys aside (the CLI's need): KEY_ENCRYPTION_KEY
 * may be missing, for the commands that read no private key. Throws a
 * ConfigError naming the first bad variable.
 */
export function loadSettings (env: EnvSource = process.env, options: LoadOptions = {}): Settings {
  return settingsFromEnv(readEnv(env, options), options.cwd ?? process.cwd(), false)
}

/**
 * Validates the environment once, keys included. Throws a ConfigError naming
 * the first bad variable. `dotenv` reads a `.env` file from the working
 * directory first.
 */
export function loadConfig (env: EnvSource = process.env, options: LoadOptions & { dataDirKey?: DataDirKey } = {}): Config {
  const raw = readEnv(env, options)
  const settings = settingsFromEnv(raw, options.cwd ?? process.cwd())
  return { ...settings, ...configuredKeys(raw, settings, options.dataDirKey) }
}

/**
 * The step of the service's start that makes the embedded mode's signing
 * key: with neither DATABASE_URL nor JWT_PRIVATE_KEY(_FILE), creates DATA_DIR
 * (owner-only) and a key in it unless there is one. Undefined when no key is
 * needed there. Pass the result to loadConfig as `dataDirKey`, which then
 * reads the key (loadConfig itself never writes).
 */
export function ensureDataDirSigningKey (env: EnvSource = process.env, options: LoadOptions = {}): DataDirKey | undefined {
  const raw = readEnv(env, options)
  const { databaseUrl, dataDir, algorithm, keyStore } = settingsFromEnv(raw, options.cwd ?? process.cwd())
  const keyConfigured = (raw.JWT_PRIVATE_KEY ?? '') !== '' || (raw.JWT_PRIVATE_KEY_FILE ?? '') !== ''
  // Stored keys are made in the database; a key saved earlier is still read (and stored).
  if (databaseUrl !== undefined || keyConfigured || keyStore === 'database') return undefined
  // Refused before anything is created in it.
  const unsafe = dataDirPermissionProblem(dataDir)
  if (unsafe !== undefined) throw new ConfigError('DATA_DIR', unsafe)
  try {
    return createDataDirSigningKey(dataDir, algorithm)
  } catch (err) {
    throw keyProblem(dataDir, err)
  }
}

export interface ConfigPluginOptions {
  /** A configuration already loaded (server.ts, tests). */
  config?: Config
}

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
  }
}

export default fp<ConfigPluginOptions>(async (fastify, opts) => {
  // Registered without a loaded configuration: the start's two steps here.
  fastify.decorate('config', opts.config ?? loadConfig(process.env, { dotenv: true, dataDirKey: ensureDataDirSigningKey(process.env, { dotenv: true }) }))
  const source = fastify.config.signingKeySource
  if (source.kind === 'data-dir') {
    fastify.log.info({ path: source.path, algorithm: fastify.config.algorithm },
      source.generated ? 'no signing key configured: generated one and saved it in the data directory' : 'signing with the key saved in the data directory')
  }
  logIssuer(fastify.log, fastify.config)
}, { name: 'config' })

// A warning at every start is for a choice the operator made; the default
// (http://localhost:<port>) is right for a service tried on one machine, and
// only needs saying once it would reach others.
function logIssuer (log: FastifyBaseLogger, { issuer, issuerSource }: Settings): void {
  if (issuerSource === 'default') {
    log.info({ issuer }, 'the issuer is http://localhost:<SERVER_PORT> since neither JWT_ISSUER nor PUBLIC_URL is set: set PUBLIC_URL to the https URL clients reach')
  } else if (!isGatewayIssuer(issuer)) {
    log.warn({ issuer, from: issuerSource },
      `${issuerSource} is not an https URL: AWS API Gateway JWT authorizers will refuse this issuer`)
  }
}
