#!/usr/bin/env node
// session-service: the operator's command line. Manages clients and keys
// against the configured database: the PostgreSQL server of DATABASE_URL, or
// the embedded one in DATA_DIR (through the running service when there is
// one, since the embedded database admits a single process).
import { existsSync, mkdirSync, readFileSync } from 'node:fs'
import { createPublicKey, randomBytes, randomUUID } from 'node:crypto'
import { join, resolve } from 'node:path'
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { setTimeout as sleep } from 'node:timers/promises'
import { parse as parseDotenv } from 'dotenv'
import bcrypt from 'bcryptjs'
import { Redis } from 'ioredis'
import { BCRYPT_COST, CLIENT_CHANGES_CHANNEL, clientCacheKey, insertClientRow, MAX_SECRET_BYTES } from '../plugins/clients.js'
import { applyMigrations } from '../plugins/migrations.js'
import { redisConnectionOptions, withoutRedisPassword } from '../plugins/redis.js'
import { publicJwk } from '../plugins/keys.js'
import { embeddedDatabase, serverDatabase, type Database } from '../storage/database.js'
import { CONTROL_SOCKET, DataDirInUseError, generatePrivateKeyPem, lockDataDir, lockHolder, PGDATA, writeOwnerOnly, type KeyAlgorithm } from '../storage/data-dir.js'
import { connectControl, type ControlClient } from '../storage/control.js'

const PROGRAM = 'session-service'
/** How long to wait for another command that holds the embedded database. */
const LOCK_WAIT_MS = 10_000

/** A failure the operator can act on: one line on stderr, exit 1 (2 for usage). */
class CliError extends Error {
  readonly exitCode: number
  constructor (message: string, exitCode = 1) {
    super(message)
    this.exitCode = exitCode
  }
}
const usage = (message: string, command: string): CliError => new CliError(`${message} (see ${PROGRAM} ${command} --help)`, 2)

interface Settings {
  databaseUrl: string | undefined
  redisUrl: string | undefined
  redisTlsCaFile: string | undefined
  redisKeyPrefix: string
  dataDir: string
  algorithm: KeyAlgorithm
  clientCacheTtl: string
  /** bcrypt cost of the secrets the CLI hashes: the service's BCRYPT_COST */
  bcryptCost: number
}

function settings (env: Record<string, string | undefined>): Settings {
  const fromFile = existsSync('.env') ? parseDotenv(readFileSync('.env')) : {}
  const merged: Record<string, string | undefined> = { ...fromFile, ...env }
  const nonEmpty = (name: string): string | undefined => {
    const value = merged[name]
    return value === undefined || value.trim() === '' ? undefined : value
  }
  const algorithm = nonEmpty('JWT_ALGORITHM') ?? 'RS256'
  if (!isAlgorithm(algorithm)) throw new CliError(`JWT_ALGORITHM: must be one of ${ALGORITHMS.join(', ')}`)
  const cost = nonEmpty('BCRYPT_COST') ?? String(BCRYPT_COST)
  if (!/^\d+$/.test(cost) || Number(cost) < 10 || Number(cost) > 16) throw new CliError('BCRYPT_COST: must be an integer from 10 to 16')
  return {
    databaseUrl: nonEmpty('DATABASE_URL'),
    redisUrl: nonEmpty('REDIS_URL'),
    redisTlsCaFile: nonEmpty('REDIS_TLS_CA_FILE'),
    redisKeyPrefix: merged.REDIS_KEY_PREFIX ?? 'session-service:',
    dataDir: resolve(nonEmpty('DATA_DIR') ?? './data'),
    algorithm,
    clientCacheTtl: nonEmpty('CLIENT_CACHE_TTL') ?? '30s',
    bcryptCost: Number(cost)
  }
}

const ALGORITHMS: readonly KeyAlgorithm[] = ['RS256', 'ES256', 'EdDSA']
const isAlgorithm = (value: string): value is KeyAlgorithm => (ALGORITHMS as readonly string[]).includes(value)

// ---------------------------------------------------------------------------
// The database, wherever it is.

interface Connection {
  db: Database
  /** the running embedded service, when the CLI goes through it */
  service: ControlClient | undefined
  /** how it got there, for messages */
  where: string
  close: () => Promise<void>
}

function describeConnectionError (err: unknown): string {
  const error = err as NodeJS.ErrnoException & { errors?: Error[] }
  const detail = error.errors?.[0]?.message ?? error.message ?? error.code ?? 'unknown error'
  return detail
}

async function connect (config: Settings): Promise<Connection> {
  if (config.databaseUrl !== undefined) {
    const db = serverDatabase({ connectionString: config.databaseUrl, max: 1, timeoutMs: 5000 })
    try {
      await db.query('SELECT 1')
    } catch (err) {
      await db.close().catch(() => {})
      throw new CliError(`cannot reach PostgreSQL (DATABASE_URL): ${describeConnectionError(err)}`)
    }
    return { db, service: undefined, where: 'PostgreSQL (DATABASE_URL)', close: async () => await db.close() }
  }
  // Whoever holds the folder has the database open. The service answers on
  // its control socket; another CLI command does not, but ends soon: wait
  // for it a little.
  const deadline = Date.now() + LOCK_WAIT_MS
  for (;;) {
    const holder = lockHolder(config.dataDir)
    if (holder === undefined || holder === process.pid) break
    const socket = join(config.dataDir, CONTROL_SOCKET)
    try {
      const service = await connectControl(socket)
      return { db: service, service, where: `the running service (process ${holder})`, close: async () => await service.close() }
    } catch (err) {
      if (Date.now() > deadline) {
        throw new CliError(`process ${holder} holds ${config.dataDir} and does not answer on ${socket} (${describeConnectionError(err)}); is it a service started without its control socket, or another command still running?`)
      }
      await sleep(200)
    }
  }
  let release: () => void
  try {
    release = lockDataDir(config.dataDir)
  } catch (err) {
    if (err instanceof DataDirInUseError) throw new CliError(err.message)
    throw new CliError(`cannot use the data directory ${config.dataDir}: ${describeConnectionError(err)}`)
  }
  let db: Database
  try {
    db = await embeddedDatabase(join(config.dataDir, PGDATA))
    // A new data directory gets its tables, as the service would on start.
    await applyMigrations(db, { info: () => {} })
  } catch (err) {
    release()
    throw new CliError(`cannot open the embedded database in ${config.dataDir}: ${describeConnectionError(err)}`)
  }
  return {
    db,
    service: undefined,
    where: `the embedded database in ${config.dataDir}`,
    close: async () => {
      try { await db.close() } finally { release() }
    }
  }
}

// What a database error means to an operator.
function databaseProblem (err: unknown): CliError {
  if (err instanceof CliError) return err
  const code = (err as { code?: string }).code
  const message = (err as Error).message
  if (code === '42P01' || /relation "clients" does not exist/.test(message)) {
    return new CliError(`the database has no clients table: run \`${PROGRAM} migrate\` first`)
  }
  return new CliError(`database error: ${message}`)
}

// A changed client reaches running instances at once where this process can
// tell them: the embedded service directly, instances sharing Redis by the
// cache entry and a notice; otherwise within CLIENT_CACHE_TTL.
async function announceChange (config: Settings, connection: Connection, clientId: string, out: Output): Promise<void> {
  if (connection.service !== undefined) {
    await connection.service.forget(clientId)
    return
  }
  if (config.redisUrl === undefined) {
    if (config.databaseUrl !== undefined) out.note(`running instances see the change within CLIENT_CACHE_TTL (${config.clientCacheTtl})`)
    return
  }
  let redis: Redis | undefined
  try {
    // The service's own TLS and ACL options; a bad REDIS_TLS_CA_FILE is
    // reported like an unreachable Redis, since the change itself is made.
    redis = new Redis(config.redisUrl, {
      ...redisConnectionOptions(config),
      keyPrefix: config.redisKeyPrefix,
      lazyConnect: true,
      connectTimeout: 2000,
      commandTimeout: 2000,
      maxRetriesPerRequest: 0,
      enableOfflineQueue: true,
      retryStrategy: () => null
    })
    redis.on('error', () => {})
    await redis.connect()
    await redis.del(clientCacheKey(clientId))
    // keyPrefix does not apply to channels: the prefix is added here.
    await redis.publish(`${config.redisKeyPrefix}${CLIENT_CHANGES_CHANNEL}`, clientId)
  } catch (err) {
    out.note(`Redis did not answer (${withoutRedisPassword(describeConnectionError(err), config.redisUrl)}): running instances see the change within CLIENT_CACHE_TTL (${config.clientCacheTtl})`)
  } finally {
    redis?.disconnect()
  }
}

// ---------------------------------------------------------------------------
// Output

interface Output {
  json: boolean
  print: (text: string) => void
  note: (text: string) => void
  data: (value: unknown) => void
}

function output (json: boolean): Output {
  return {
    json,
    print: (text) => { if (!json) process.stdout.write(`${text}\n`) },
    note: (text) => { process.stderr.write(`${PROGRAM}: ${text}\n`) },
    data: (value) => { process.stdout.write(`${JSON.stringify(value, null, 2)}\n`) }
  }
}

// ---------------------------------------------------------------------------
// Clients

interface ClientRow {
  client_id: string
  name: string
  status: 'enabled' | 'disabled'
  scopes: string[]
  default_scopes: string[]
  audiences: string[]
  rate_limit: number | null
  has_secret: boolean
  has_keys: boolean
  created_at: Date | string
  updated_at: Date | string
}

const CLIENT_COLUMNS = `client_id, name, status, scopes, default_scopes, audiences, rate_limit,
  client_secret_hash IS NOT NULL AS has_secret, (jwks_uri IS NOT NULL OR jwks IS NOT NULL) AS has_keys, created_at, updated_at`

function clientView (row: ClientRow): Record<string, unknown> {
  const iso = (value: Date | string): string => new Date(value).toISOString()
  return {
    client_id: row.client_id,
    name: row.name,
    status: row.status,
    scopes: row.scopes,
    default_scopes: row.default_scopes,
    audiences: row.audiences,
    rate_limit: row.rate_limit,
    authentication: [...(row.has_secret ? ['client_secret'] : []), ...(row.has_keys ? ['private_key_jwt'] : [])],
    created_at: iso(row.created_at),
    updated_at: iso(row.updated_at)
  }
}

const SCOPE_TOKEN = /^[\x21\x23-\x5B\x5D-\x7E]+$/
const CLIENT_ID = /^[\x21-\x7E]{1,255}$/

function listOption (values: string[] | undefined, what: string, command: string, pattern: RegExp): string[] {
  const items = (values ?? []).flatMap((value) => value.split(/[\s,]+/)).filter((item) => item !== '')
  const bad = items.find((item) => !pattern.test(item) || item.length > 255)
  if (bad !== undefined) throw usage(`"${bad}" is not a valid ${what}`, command)
  return [...new Set(items)]
}

function clientIdArgument (positionals: string[], command: string): string {
  if (positionals.length !== 1) throw usage('give exactly one client id', command)
  const id = positionals[0] ?? ''
  if (!CLIENT_ID.test(id)) throw usage(`"${id}" is not a valid client id (1 to 255 visible ASCII characters)`, command)
  return id
}

async function readSecretFromStdin (): Promise<string> {
  const chunks: Buffer[] = []
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer)
  return Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '')
}

async function chooseSecret (fromStdin: boolean, command: string): Promise<string> {
  if (!fromStdin) return randomBytes(32).toString('base64url')
  const secret = await readSecretFromStdin()
  if (secret.length === 0) throw usage('the secret read from stdin is empty', command)
  // bcrypt reads only the first 72 bytes: a longer secret would be truncated silently.
  if (Buffer.byteLength(secret, 'utf8') > MAX_SECRET_BYTES) {
    throw usage(`the secret is ${Buffer.byteLength(secret, 'utf8')} bytes; at most ${MAX_SECRET_BYTES} are allowed (bcrypt ignores the rest)`, command)
  }
  if (Buffer.byteLength(secret, 'utf8') < 16) throw usage('the secret is shorter than 16 bytes', command)
  return secret
}

async function findClient (db: Database, id: string): Promise<ClientRow> {
  const { rows } = await db.query<ClientRow>(`SELECT ${CLIENT_COLUMNS} FROM clients WHERE client_id = $1`, [id])
  const row = rows[0]
  if (row === undefined) throw new CliError(`no client "${id}"`)
  return row
}

function printClient (out: Output, view: Record<string, unknown>): void {
  for (const [name, value] of Object.entries(view)) {
    const text = Array.isArray(value) ? (value.length === 0 ? '-' : value.join(' ')) : value === null ? '-' : String(value)
    out.print(`${`${name}:`.padEnd(16)}${text}`)
  }
}

interface Command {
  summary: string
  usage: string
  help: string
  options: NonNullable<ParseArgsConfig['options']>
  run: (args: { values: Record<string, unknown>, positionals: string[], config: Settings, out: Output }) => Promise<void>
}

const JSON_OPTION = { json: { type: 'boolean' as const } }

async function withDatabase<T> (config: Settings, work: (connection: Connection) => Promise<T>): Promise<T> {
  const connection = await connect(config)
  try {
    return await work(connection)
  } catch (err) {
    throw databaseProblem(err)
  } finally {
    await connection.close().catch(() => {})
  }
}

async function setStatus (id: string, status: 'enabled' | 'disabled', config: Settings, out: Output): Promise<void> {
  await withDatabase(config, async (connection) => {
    const { rows } = await connection.db.query<{ client_id: string }>('UPDATE clients SET status = $2 WHERE client_id = $1 RETURNING client_id', [id, status])
    if (rows.length === 0) throw new CliError(`no client "${id}"`)
    await announceChange(config, connection, id, out)
    if (out.json) out.data({ client_id: id, status })
    else out.print(`client ${id} ${status}`)
  })
}

const COMMANDS: Record<string, Command> = {
  'clients create': {
    summary: 'register a client and print its secret (shown once)',
    usage: 'clients create --name <name> [--id <client_id>] [--scope <scope>]... [--default-scope <scope>]... [--audience <aud>]... [--rate-limit <n>] [--secret-stdin] [--json]',
    help: `Registers a client that authenticates with a secret. Without --id, the id is a
random UUID. The secret is generated (32 random bytes, base64url) and printed
once; only its bcrypt hash is stored. --secret-stdin reads the secret from
standard input instead (16 to ${MAX_SECRET_BYTES} bytes).
Scopes and audiences may be repeated or given as one space- or comma-separated
list. --default-scope: granted when a token request names no scope (must be
among --scope). --rate-limit: token requests per minute (default: RATE_LIMIT_DEFAULT).`,
    options: {
      name: { type: 'string' },
      id: { type: 'string' },
      scope: { type: 'string', multiple: true },
      'default-scope': { type: 'string', multiple: true },
      audience: { type: 'string', multiple: true },
      'rate-limit': { type: 'string' },
      'secret-stdin': { type: 'boolean' },
      ...JSON_OPTION
    },
    async run ({ values, positionals, config, out }) {
      const command = 'clients create'
      if (positionals.length > 0) throw usage(`unexpected argument "${positionals[0] ?? ''}"`, command)
      const name = values.name as string | undefined
      if (name === undefined || name.trim() === '') throw usage('--name is required', command)
      if (name.length > 200) throw usage('--name is longer than 200 characters', command)
      const id = (values.id as string | undefined) ?? randomUUID()
      if (!CLIENT_ID.test(id)) throw usage(`"${id}" is not a valid client id (1 to 255 visible ASCII characters)`, command)
      const scopes = listOption(values.scope as string[] | undefined, 'scope', command, SCOPE_TOKEN)
      const defaultScopes = listOption(values['default-scope'] as string[] | undefined, 'scope', command, SCOPE_TOKEN)
      const notAllowed = defaultScopes.find((scope) => !scopes.includes(scope))
      if (notAllowed !== undefined) throw usage(`default scope "${notAllowed}" is not among --scope`, command)
      const audiences = listOption(values.audience as string[] | undefined, 'audience', command, /^[\x21-\x7E]+$/)
      let rateLimit: number | null = null
      if (values['rate-limit'] !== undefined) {
        const text = values['rate-limit'] as string
        rateLimit = /^\d{1,9}$/.test(text) ? Number(text) : Number.NaN
        if (!(rateLimit >= 1)) throw usage('--rate-limit must be a whole number of requests per minute, at least 1', command)
      }
      const secret = await chooseSecret(values['secret-stdin'] === true, command)
      await withDatabase(config, async (connection) => {
        try {
          await insertClientRow(connection.db, { id, secret, name, scopes, defaultScopes, audiences, rateLimit }, config.bcryptCost)
        } catch (err) {
          if ((err as { code?: string }).code === '23505') throw new CliError(`a client "${id}" already exists`)
          throw err
        }
        await announceChange(config, connection, id, out)
        const view = clientView(await findClient(connection.db, id))
        if (out.json) {
          out.data({ ...view, client_secret: secret })
          return
        }
        out.print(`client created in ${connection.where}`)
        printClient(out, view)
        out.print(`${'client_secret:'.padEnd(16)}${secret}`)
        out.print('The secret is shown this once; store it now.')
      })
    }
  },
  'clients list': {
    summary: 'list the clients',
    usage: 'clients list [--json]',
    help: 'Lists every client: id, status, name, scopes and audiences. Secrets are never shown.',
    options: JSON_OPTION,
    async run ({ positionals, config, out }) {
      if (positionals.length > 0) throw usage(`unexpected argument "${positionals[0] ?? ''}"`, 'clients list')
      await withDatabase(config, async ({ db }) => {
        const { rows } = await db.query<ClientRow>(`SELECT ${CLIENT_COLUMNS} FROM clients ORDER BY created_at, client_id`)
        const views = rows.map(clientView)
        if (out.json) {
          out.data(views)
          return
        }
        if (views.length === 0) {
          out.print('no clients')
          return
        }
        const table = [['CLIENT_ID', 'STATUS', 'NAME', 'SCOPES', 'AUDIENCES'],
          ...rows.map((row) => [row.client_id, row.status, row.name === '' ? '-' : row.name,
            row.scopes.length === 0 ? '-' : row.scopes.join(' '), row.audiences.length === 0 ? '-' : row.audiences.join(' ')])]
        const widths = table[0]?.map((_, column) => Math.max(...table.map((line) => (line[column] ?? '').length))) ?? []
        for (const line of table) out.print(line.map((cell, column) => cell.padEnd(widths[column] ?? 0)).join('  ').trimEnd())
      })
    }
  },
  'clients show': {
    summary: 'show one client',
    usage: 'clients show <client_id> [--json]',
    help: 'Shows a client\'s settings. The secret is never shown (only its hash is stored).',
    options: JSON_OPTION,
    async run ({ positionals, config, out }) {
      const id = clientIdArgument(positionals, 'clients show')
      await withDatabase(config, async ({ db }) => {
        const view = clientView(await findClient(db, id))
        if (out.json) out.data(view)
        else printClient(out, view)
      })
    }
  },
  'clients rotate-secret': {
    summary: 'give a client a new secret (shown once); the old one stops working',
    usage: 'clients rotate-secret <client_id> [--secret-stdin] [--json]',
    help: `Replaces the client's secret with a new one, printed once (or read from
standard input with --secret-stdin, 16 to ${MAX_SECRET_BYTES} bytes). The old secret is refused
from then on: at once where this command can tell the running instances, else
within CLIENT_CACHE_TTL. Tokens already issued stay valid until they expire.`,
    options: { 'secret-stdin': { type: 'boolean' }, ...JSON_OPTION },
    async run ({ values, positionals, config, out }) {
      const command = 'clients rotate-secret'
      const id = clientIdArgument(positionals, command)
      const secret = await chooseSecret(values['secret-stdin'] === true, command)
      const hash = await bcrypt.hash(secret, config.bcryptCost)
      await withDatabase(config, async (connection) => {
        const { rows } = await connection.db.query('UPDATE clients SET client_secret_hash = $2 WHERE client_id = $1 RETURNING client_id', [id, hash])
        if (rows.length === 0) throw new CliError(`no client "${id}"`)
        await announceChange(config, connection, id, out)
        if (out.json) {
          out.data({ client_id: id, client_secret: secret })
          return
        }
        out.print(`${'client_id:'.padEnd(16)}${id}`)
        out.print(`${'client_secret:'.padEnd(16)}${secret}`)
        out.print('The secret is shown this once; store it now.')
      })
    }
  },
  'clients disable': {
    summary: 'refuse a client\'s token requests (kept, can be enabled again)',
    usage: 'clients disable <client_id> [--json]',
    help: 'Disables a client: its token requests are refused with unauthorized_client. Tokens already issued stay valid until they expire (revoke them to end them sooner).',
    options: JSON_OPTION,
    async run ({ positionals, config, out }) {
      await setStatus(clientIdArgument(positionals, 'clients disable'), 'disabled', config, out)
    }
  },
  'clients enable': {
    summary: 'accept a disabled client again',
    usage: 'clients enable <client_id> [--json]',
    help: 'Enables a client that was disabled.',
    options: JSON_OPTION,
    async run ({ positionals, config, out }) {
      await setStatus(clientIdArgument(positionals, 'clients enable'), 'enabled', config, out)
    }
  },
  'clients delete': {
    summary: 'remove a client for good',
    usage: 'clients delete <client_id> [--json]',
    help: 'Deletes a client. Its token requests fail as for an unknown client; tokens already issued stay valid until they expire.',
    options: JSON_OPTION,
    async run ({ positionals, config, out }) {
      const id = clientIdArgument(positionals, 'clients delete')
      await withDatabase(config, async (connection) => {
        const { rows } = await connection.db.query('DELETE FROM clients WHERE client_id = $1 RETURNING client_id', [id])
        if (rows.length === 0) throw new CliError(`no client "${id}"`)
        await announceChange(config, connection, id, out)
        if (out.json) out.data({ client_id: id, deleted: true })
        else out.print(`client ${id} deleted`)
      })
    }
  },
  'keys generate': {
    summary: 'write a new signing key pair (PEM)',
    usage: 'keys generate [--algorithm RS256|ES256|EdDSA] [--out <dir>] [--json]',
    help: `Writes private.pem (owner-only) and public.pem into --out (default ./keys),
for the algorithm given or JWT_ALGORITHM (default RS256: a 2048-bit RSA key).
Refuses to overwrite existing files. Point JWT_PRIVATE_KEY_FILE at private.pem;
to rotate, publish public.pem through JWT_ADDITIONAL_PUBLIC_KEYS_FILE first.`,
    options: { algorithm: { type: 'string' }, out: { type: 'string' }, ...JSON_OPTION },
    async run ({ values, positionals, config, out }) {
      const command = 'keys generate'
      if (positionals.length > 0) throw usage(`unexpected argument "${positionals[0] ?? ''}"`, command)
      const algorithm = (values.algorithm as string | undefined) ?? config.algorithm
      if (!isAlgorithm(algorithm)) throw usage(`--algorithm must be one of ${ALGORITHMS.join(', ')}`, command)
      const dir = resolve((values.out as string | undefined) ?? 'keys')
      const privatePath = join(dir, 'private.pem')
      const publicPath = join(dir, 'public.pem')
      for (const path of [privatePath, publicPath]) {
        if (existsSync(path)) throw new CliError(`${path} exists; choose another --out or move it away first`)
      }
      try {
        mkdirSync(dir, { recursive: true, mode: 0o700 })
      } catch (err) {
        throw new CliError(`cannot create ${dir}: ${describeConnectionError(err)}`)
      }
      const pair = generatePrivateKeyPem(algorithm)
      writeOwnerOnly(privatePath, pair.privateKey)
      writeOwnerOnly(publicPath, pair.publicKey)
      const kid = publicJwk(createPublicKey(pair.publicKey), algorithm).kid
      if (out.json) {
        out.data({ algorithm, kid, private_key: privatePath, public_key: publicPath })
        return
      }
      out.print(`${algorithm} key pair written (kid ${kid}):`)
      out.print(`  ${privatePath}  (owner-only; keep it secret)`)
      out.print(`  ${publicPath}`)
      out.print(`Configure: JWT_ALGORITHM=${algorithm} JWT_PRIVATE_KEY_FILE=${privatePath}`)
    }
  },
  migrate: {
    summary: 'apply pending database migrations',
    usage: 'migrate [--json]',
    help: 'Applies the migrations not yet applied to the configured database (each in its own transaction; safe to run while instances start).',
    options: JSON_OPTION,
    async run ({ positionals, config, out }) {
      if (positionals.length > 0) throw usage(`unexpected argument "${positionals[0] ?? ''}"`, 'migrate')
      const applied = await migrate(config, (name) => out.print(`migration applied: ${name}`))
      if (out.json) out.data({ applied })
      else out.print(applied.length === 0 ? 'migrate: nothing to apply' : `migrate: applied ${applied.length}`)
    }
  }
}

/** Applies pending migrations to the configured database; returns the names applied. */
async function migrate (config: Settings, onApplied: (name: string) => void): Promise<string[]> {
  return await withDatabase(config, async (connection) => {
    if (connection.service !== undefined) {
      const applied = await connection.service.migrate()
      applied.forEach(onApplied)
      return applied
    }
    return await applyMigrations(connection.db, { info: (fields) => onApplied((fields as { migration?: string }).migration ?? '') })
  })
}

function mainHelp (): string {
  const width = Math.max(...Object.keys(COMMANDS).map((name) => name.length))
  return [
    `Usage: ${PROGRAM} <command> [options]`,
    '',
    'Commands:',
    ...Object.entries(COMMANDS).map(([name, command]) => `  ${name.padEnd(width)}  ${command.summary}`),
    '',
    `Run \`${PROGRAM} <command> --help\` for a command's options.`,
    '',
    'Database: DATABASE_URL when set, else the embedded database in DATA_DIR',
    '(default ./data; through the running service when one holds it).',
    'REDIS_URL and REDIS_KEY_PREFIX: changes reach running instances at once.',
    'Settings are read from the environment, then from a .env file.'
  ].join('\n')
}

/** Runs the command line; returns the exit code. */
export async function main (argv: string[], env: Record<string, string | undefined> = process.env): Promise<number> {
  const words = argv.filter((arg) => !arg.startsWith('-'))
  const wantsHelp = argv.includes('--help') || argv.includes('-h')
  const name = [`${words[0] ?? ''} ${words[1] ?? ''}`, words[0] ?? ''].find((candidate) => COMMANDS[candidate] !== undefined)
  if (name === undefined) {
    if (argv.length === 0 || (wantsHelp && words.length === 0)) {
      process.stdout.write(`${mainHelp()}\n`)
      return argv.length === 0 ? 2 : 0
    }
    // `clients --help`: the commands of the group.
    const group = Object.keys(COMMANDS).filter((command) => command.startsWith(`${words[0] ?? ''} `))
    if (wantsHelp && words.length === 1 && group.length > 0) {
      process.stdout.write(`Usage: ${PROGRAM} ${words[0] ?? ''} <command> [options]\n\n${group.map((command) => `  ${command.padEnd(22)}  ${COMMANDS[command]?.summary ?? ''}`).join('\n')}\n`)
      return 0
    }
    const asked = group.length > 0 ? `${words[0] ?? ''} ${words[1] ?? ''}`.trim() : (words[0] ?? argv[0] ?? '')
    process.stderr.write(`${PROGRAM}: unknown command "${asked}" (see ${PROGRAM} --help)\n`)
    return 2
  }
  const command = COMMANDS[name] as Command
  if (wantsHelp) {
    process.stdout.write(`Usage: ${PROGRAM} ${command.usage}\n\n${command.help}\n`)
    return 0
  }
  // Options may come before or after the command's words: drop the words
  // (their first occurrence) and parse the rest.
  const rest = [...argv]
  for (const word of name.split(' ')) rest.splice(rest.indexOf(word), 1)
  try {
    let parsed: { values: Record<string, unknown>, positionals: string[] }
    try {
      parsed = parseArgs({ args: rest, options: command.options, allowPositionals: true, strict: true })
    } catch (err) {
      throw usage((err as Error).message.split('\n')[0] ?? 'bad arguments', name)
    }
    const out = output(parsed.values.json === true)
    await command.run({ ...parsed, config: settings(env), out })
    return 0
  } catch (err) {
    const error = err instanceof CliError ? err : new CliError(`${(err as Error).message}`)
    process.stderr.write(`${PROGRAM}: ${error.message.split('\n')[0] ?? ''}\n`)
    return error.exitCode
  }
}

// Run when executed (the bin entry, `node dist/cli/index.js`), not when imported.
if (process.argv[1] !== undefined && resolve(process.argv[1]).replace(/\.ts$/, '.js') === resolve(import.meta.filename).replace(/\.ts$/, '.js')) {
  // Keys, the embedded database and the lock are for this user only.
  process.umask(0o077)
  process.exitCode = await main(process.argv.slice(2))
}
