import { existsSync, readFileSync } from 'node:fs'
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto'
import fp from 'fastify-plugin'
import { envSchema } from 'env-schema'
import { parse as parseDotenv } from 'dotenv'
import { resolve } from 'node:path'
import { dataDirPermissionProblem, dataDirSigningKey, keyFilePermissionProblem } from '../storage/data-dir.js'

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

export type SigningAlgorithm = 'RS256' | 'ES256' | 'EdDSA'

export const SIGNING_ALGORITHMS: readonly SigningAlgorithm[] = ['RS256', 'ES256', 'EdDSA']

/** A public key that verifies tokens besides the signing key (the next key, or retired ones). */
export interface AdditionalKey {
  publicKey: KeyObject
  algorithm: SigningAlgorithm
}

export interface Config {
  /** PostgreSQL server; undefined: the embedded database in dataDir */
  databaseUrl: string | undefined
  /** Redis server; undefined: kept in the database and in process (one instance only) */
  redisUrl: string | undefined
  /** absolute path of DATA_DIR (the embedded database, a generated key) */
  dataDir: string
  /** where the signing key came from; a file path when it lives in the data directory */
  signingKeySource: { kind: 'environment' } | { kind: 'data-dir', path: string, generated: boolean }
  redisKeyPrefix: string
  privateKey: KeyObject
  publicKey: KeyObject
  algorithm: SigningAlgorithm
  /** published in the JWKS and accepted for verification, never used to sign */
  additionalKeys: AdditionalKey[]
  issuer: string
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
  logLevel: string
  /** Fastify's trustProxy: false, true, addresses and CIDR ranges, or a hop count (as a function) */
  trustProxy: boolean | string[] | ((address: string, hop: number) => boolean)
  /** a client's jwks_uri may be plain http and resolve to private addresses (tests, closed networks) */
  jwksUriAllowPrivate: boolean
  /** how long the service keeps serving after SIGTERM before it stops listening, milliseconds */
  shutdownDelayMs: number
  /** a CA certificate (PEM file) that the Redis server's certificate must chain to, for rediss:// */
  redisTlsCaFile: string | undefined
}

const DURATION = '^\\s*\\d+\\s*(s|m|h|d)?\\s*$'
const DURATION_MS = '^\\s*\\d+\\s*(ms|s|m|h|d)?\\s*$'

const schema = {
  type: 'object',
  properties: {
    DATABASE_URL: { type: 'string' },
    REDIS_URL: { type: 'string' },
    DATA_DIR: { type: 'string', minLength: 1, default: './data' },
    REDIS_KEY_PREFIX: { type: 'string', default: 'session-service:', maxLength: 100 },
    JWT_PRIVATE_KEY: { type: 'string' },
    JWT_PRIVATE_KEY_FILE: { type: 'string' },
    JWT_PUBLIC_KEY: { type: 'string' },
    JWT_PUBLIC_KEY_FILE: { type: 'string' },
    JWT_ADDITIONAL_PUBLIC_KEYS: { type: 'string' },
    JWT_ADDITIONAL_PUBLIC_KEYS_FILE: { type: 'string' },
    JWT_ALGORITHM: { type: 'string', enum: ['RS256', 'ES256', 'EdDSA'], default: 'RS256' },
    JWT_ISSUER: { type: 'string', minLength: 1, default: 'session-service' },
    JWT_AUDIENCE: { type: 'string', minLength: 1, default: 'api' },
    PUBLIC_URL: { type: 'string' },
    SCOPES_SUPPORTED: { type: 'string', default: '', maxLength: 8192 },
    JWT_EXPIRY: { type: 'string', pattern: DURATION, default: '3600s' },
    REFRESH_TOKEN_EXPIRY: { type: 'string', pattern: DURATION, default: '604800s' },
    REFRESH_TOKEN_LENGTH: { type: 'integer', minimum: 16, maximum: 256, default: 32 },
    REFRESH_TOKEN_CLIENT_AUTH: { type: 'string', enum: ['required', 'optional'], default: 'required' },
    CLIENT_CACHE_TTL: { type: 'string', pattern: DURATION, default: '30s' },
    SECRET_CACHE_TTL: { type: 'string', pattern: DURATION, default: '300s' },
    BCRYPT_WORKERS: { type: 'integer', minimum: 0, maximum: 64, default: 1 },
    BCRYPT_QUEUE_LIMIT: { type: 'integer', minimum: 1, maximum: 100000 },
    BCRYPT_COST: { type: 'integer', minimum: 10, maximum: 16, default: 12 },
    RATE_LIMIT_DEFAULT: { type: 'integer', minimum: 1, default: 60 },
    AUTH_FAILURE_LIMIT: { type: 'integer', minimum: 1, default: 10 },
    AUTH_FAILURE_LIMIT_PER_ADDRESS: { type: 'integer', minimum: 1, default: 50 },
    MIGRATE_ON_START: { type: 'boolean', default: true },
    DEPENDENCY_TIMEOUT: { type: 'string', pattern: DURATION_MS, default: '2s' },
    JWKS_MAX_AGE: { type: 'string', pattern: DURATION, default: '300s' },
    BODY_LIMIT: { type: 'integer', minimum: 1024, maximum: 1048576, default: 16384 },
    PG_POOL_MAX: { type: 'integer', minimum: 1, maximum: 1000, default: 10 },
    SERVER_HOST: { type: 'string', minLength: 1, default: '0.0.0.0' },
    SERVER_PORT: { type: 'integer', minimum: 0, maximum: 65535, default: 8080 },
    LOG_LEVEL: { type: 'string', enum: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], default: 'info' },
    TRUST_PROXY: { type: 'string', default: 'false', maxLength: 4096 },
    JWKS_URI_ALLOW_PRIVATE: { type: 'boolean', default: false },
    SHUTDOWN_DELAY: { type: 'string', pattern: DURATION_MS, default: '5s' },
    REDIS_TLS_CA_FILE: { type: 'string' }
  }
} as const

interface RawEnv {
  DATABASE_URL?: string
  REDIS_URL?: string
  DATA_DIR: string
  REDIS_KEY_PREFIX: string
  JWT_PRIVATE_KEY?: string
  JWT_PRIVATE_KEY_FILE?: string
  JWT_PUBLIC_KEY?: string
  JWT_PUBLIC_KEY_FILE?: string
  JWT_ALGORITHM: SigningAlgorithm
  JWT_ISSUER: string
  JWT_AUDIENCE: string
  PUBLIC_URL?: string
  SCOPES_SUPPORTED: string
  JWT_EXPIRY: string
  REFRESH_TOKEN_EXPIRY: string
  REFRESH_TOKEN_LENGTH: number
  REFRESH_TOKEN_CLIENT_AUTH: 'required' | 'optional'
  CLIENT_CACHE_TTL: string
  SECRET_CACHE_TTL: string
  BCRYPT_WORKERS: number
  BCRYPT_QUEUE_LIMIT?: number
  BCRYPT_COST: number
  RATE_LIMIT_DEFAULT: number
  AUTH_FAILURE_LIMIT: number
  AUTH_FAILURE_LIMIT_PER_ADDRESS: number
  MIGRATE_ON_START: boolean
  DEPENDENCY_TIMEOUT: string
  JWKS_MAX_AGE: string
  BODY_LIMIT: number
  PG_POOL_MAX: number
  SERVER_HOST: string
  SERVER_PORT: number
  LOG_LEVEL: string
  TRUST_PROXY: string
  JWKS_URI_ALLOW_PRIVATE: boolean
  SHUTDOWN_DELAY: string
  REDIS_TLS_CA_FILE?: string
}

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

// PEM text from VAR or from the file named by VAR_FILE, never both. Literal
// "\n" sequences are accepted because many secret stores flatten newlines.
function readPem (env: EnvSource, variable: string): { text: string, from: string } | undefined {
  const inline = env[variable]
  const path = env[`${variable}_FILE`]
  if (inline !== undefined && inline !== '' && path !== undefined && path !== '') {
    throw new ConfigError(variable, `set either ${variable} or ${variable}_FILE, not both`)
  }
  if (path !== undefined && path !== '') {
    try {
      return { text: readFileSync(path, 'utf8'), from: `${variable}_FILE` }
    } catch (err) {
      throw new ConfigError(`${variable}_FILE`, `cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? 'error'})`)
    }
  }
  if (inline !== undefined && inline !== '') return { text: inline.replace(/\\n/g, '\n'), from: variable }
  return undefined
}

// What each algorithm needs of a key: RS256 an RSA key of 2048 bits or more
// (RFC 7518 §3.3), ES256 a P-256 key, EdDSA an Ed25519 key.
function keyTypeProblem (key: KeyObject, algorithm: SigningAlgorithm): string | undefined {
  const type = key.asymmetricKeyType ?? 'unknown'
  switch (algorithm) {
    case 'RS256': {
      if (type !== 'rsa') return `is a ${type} key, but ${algorithm} needs an RSA key`
      const bits = key.asymmetricKeyDetails?.modulusLength ?? 0
      return bits < 2048 ? `is a ${bits}-bit RSA key; at least 2048 bits are required` : undefined
    }
    case 'ES256':
      if (type !== 'ec') return `is a ${type} key, but ${algorithm} needs an EC P-256 key`
      return key.asymmetricKeyDetails?.namedCurve === 'prime256v1' ? undefined : `is an EC key on ${key.asymmetricKeyDetails?.namedCurve ?? 'an unknown curve'}, but ${algorithm} needs P-256`
    case 'EdDSA':
      return type === 'ed25519' ? undefined : `is a ${type} key, but ${algorithm} needs an Ed25519 key`
  }
}

/** The algorithm a public key signs with, from its type; undefined if none of ours. */
export function algorithmForKey (key: KeyObject): SigningAlgorithm | undefined {
  return SIGNING_ALGORITHMS.find((algorithm) => keyTypeProblem(key, algorithm) === undefined)
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----[\s\S]*?-----END \1-----/g

// Zero or more PEM public keys, concatenated. A private key here is refused:
// this setting is published, and a private key must never be.
function loadAdditionalKeys (env: EnvSource): AdditionalKey[] {
  const pem = readPem(env, 'JWT_ADDITIONAL_PUBLIC_KEYS')
  if (pem === undefined) return []
  const blocks = [...pem.text.matchAll(PEM_BLOCK)]
  if (blocks.length === 0) throw new ConfigError(pem.from, 'holds no PEM block (expected one or more -----BEGIN PUBLIC KEY----- blocks)')
  return blocks.map((block, index) => {
    if (/PRIVATE/.test(block[1] ?? '')) throw new ConfigError(pem.from, `key ${index + 1} is a private key; give public keys only`)
    let publicKey: KeyObject
    try {
      publicKey = createPublicKey(block[0])
    } catch {
      throw new ConfigError(pem.from, `key ${index + 1} is not a PEM public key`)
    }
    const algorithm = algorithmForKey(publicKey)
    if (algorithm === undefined) {
      throw new ConfigError(pem.from, `key ${index + 1} is not an RSA (2048 bits or more), EC P-256 or Ed25519 key`)
    }
    return { publicKey, algorithm }
  })
}

const SCOPE_TOKEN = /^[\x21\x23-\x5B\x5D-\x7E]+$/

function parseScopes (variable: string, value: string): string[] {
  const scopes = value.split(/[\s,]+/).filter((scope) => scope !== '')
  const bad = scopes.find((scope) => !SCOPE_TOKEN.test(scope))
  if (bad !== undefined) throw new ConfigError(variable, `"${bad}" is not a valid scope (RFC 6749 §3.3)`)
  return [...new Set(scopes)]
}

function loadKeys (env: EnvSource, algorithm: SigningAlgorithm, privatePem: { text: string, from: string }): { privateKey: KeyObject, publicKey: KeyObject } {
  let privateKey: KeyObject
  try {
    privateKey = createPrivateKey(privatePem.text)
  } catch {
    throw new ConfigError(privatePem.from, 'is not a PEM private key')
  }
  const problem = keyTypeProblem(privateKey, algorithm)
  if (problem !== undefined) throw new ConfigError(privatePem.from, problem)
  const derived = createPublicKey(privateKey)

  const publicPem = readPem(env, 'JWT_PUBLIC_KEY')
  if (publicPem === undefined) return { privateKey, publicKey: derived }
  let publicKey: KeyObject
  try {
    publicKey = createPublicKey(publicPem.text)
  } catch {
    throw new ConfigError(publicPem.from, 'is not a PEM public key')
  }
  const given = publicKey.export({ type: 'spki', format: 'der' })
  const expected = derived.export({ type: 'spki', format: 'der' })
  if (!given.equals(expected)) throw new ConfigError(publicPem.from, 'does not match JWT_PRIVATE_KEY')
  return { privateKey, publicKey }
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
function resolvePublicUrl (publicUrl: string | undefined, issuer: string, port: number): string {
  if (publicUrl !== undefined && publicUrl !== '') {
    if (!isHttpUrl(publicUrl)) throw new ConfigError('PUBLIC_URL', 'must be an absolute http(s) URL without query or fragment')
    return publicUrl.replace(/\/+$/, '')
  }
  return isHttpUrl(issuer) ? issuer.replace(/\/+$/, '') : `http://localhost:${port}`
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

function nonEmpty (value: string | undefined): string | undefined {
  return value === undefined || value.trim() === '' ? undefined : value
}

function readDotenv (): EnvSource {
  if (!existsSync('.env')) return {}
  try {
    return parseDotenv(readFileSync('.env'))
  } catch (err) {
    throw new ConfigError('.env', `cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
  }
}

/**
 * Validates the environment once. Throws a ConfigError naming the first bad
 * variable. `dotenv` reads a `.env` file from the working directory first.
 */
export function loadConfig (env: EnvSource = process.env, options: { dotenv?: boolean } = {}): Config {
  // The given environment wins over the file, as with dotenv itself. Both the
  // schema and the key loader read this one merged source.
  const source: EnvSource = options.dotenv === true ? { ...readDotenv(), ...env } : { ...env }
  let raw: RawEnv
  try {
    raw = envSchema<RawEnv>({ schema, data: { ...source }, env: false, dotenv: false })
  } catch (err) {
    throw describeSchemaError(err)
  }
  const databaseUrl = nonEmpty(raw.DATABASE_URL)
  const dataDir = resolve(raw.DATA_DIR)
  let privatePem = readPem(source, 'JWT_PRIVATE_KEY')
  // Both hold secrets: refuse what another user may read or change.
  const unsafeDataDir = databaseUrl === undefined ? dataDirPermissionProblem(dataDir) : undefined
  if (unsafeDataDir !== undefined) throw new ConfigError('DATA_DIR', unsafeDataDir)
  const unsafeKeyFile = privatePem?.from === 'JWT_PRIVATE_KEY_FILE' ? keyFilePermissionProblem(source.JWT_PRIVATE_KEY_FILE ?? '') : undefined
  if (unsafeKeyFile !== undefined) throw new ConfigError('JWT_PRIVATE_KEY_FILE', unsafeKeyFile)
  let signingKeySource: Config['signingKeySource'] = { kind: 'environment' }
  if (privatePem === undefined) {
    // Instances sharing a PostgreSQL server must sign with one key, which a
    // key generated by each of them would not be: only the embedded mode
    // (one process, one data directory) makes its own.
    if (databaseUrl !== undefined) {
      throw new ConfigError('JWT_PRIVATE_KEY', 'is required with DATABASE_URL (PEM text, or a path in JWT_PRIVATE_KEY_FILE); `npm run cli -- keys generate` writes a key pair')
    }
    let key: ReturnType<typeof dataDirSigningKey>
    try {
      key = dataDirSigningKey(dataDir, raw.JWT_ALGORITHM)
    } catch (err) {
      throw new ConfigError('DATA_DIR', `cannot keep a signing key in ${dataDir} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
    }
    privatePem = { text: key.pem, from: key.path }
    signingKeySource = { kind: 'data-dir', path: key.path, generated: key.generated }
  }
  const { privateKey, publicKey } = loadKeys(source, raw.JWT_ALGORITHM, privatePem)
  return {
    databaseUrl,
    redisUrl: nonEmpty(raw.REDIS_URL),
    dataDir,
    signingKeySource,
    redisKeyPrefix: raw.REDIS_KEY_PREFIX,
    privateKey,
    publicKey,
    algorithm: raw.JWT_ALGORITHM,
    additionalKeys: loadAdditionalKeys(source),
    issuer: raw.JWT_ISSUER,
    publicUrl: resolvePublicUrl(raw.PUBLIC_URL, raw.JWT_ISSUER, raw.SERVER_PORT),
    audience: raw.JWT_AUDIENCE,
    scopesSupported: parseScopes('SCOPES_SUPPORTED', raw.SCOPES_SUPPORTED),
    accessTokenTtl: parseDuration('JWT_EXPIRY', raw.JWT_EXPIRY),
    refreshTokenTtl: parseDuration('REFRESH_TOKEN_EXPIRY', raw.REFRESH_TOKEN_EXPIRY),
    refreshTokenBytes: raw.REFRESH_TOKEN_LENGTH,
    refreshTokenClientAuth: raw.REFRESH_TOKEN_CLIENT_AUTH,
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
    logLevel: raw.LOG_LEVEL,
    trustProxy: parseTrustProxy(raw.TRUST_PROXY),
    jwksUriAllowPrivate: raw.JWKS_URI_ALLOW_PRIVATE,
    shutdownDelayMs: parseDurationMs('SHUTDOWN_DELAY', raw.SHUTDOWN_DELAY, { allowZero: true }),
    redisTlsCaFile: nonEmpty(raw.REDIS_TLS_CA_FILE)
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
  fastify.decorate('config', opts.config ?? loadConfig(process.env, { dotenv: true }))
  const source = fastify.config.signingKeySource
  if (source.kind === 'data-dir') {
    fastify.log.info({ path: source.path, algorithm: fastify.config.algorithm },
      source.generated ? 'no signing key configured: generated one and saved it in the data directory' : 'signing with the key saved in the data directory')
  }
  if (!isGatewayIssuer(fastify.config.issuer)) {
    fastify.log.warn({ issuer: fastify.config.issuer },
      'JWT_ISSUER is not an https URL: AWS API Gateway JWT authorizers will refuse this issuer')
  }
}, { name: 'config' })
