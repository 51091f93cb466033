// The operator's command line (cli/index.ts), run as an operator runs it: a
// child process with only the environment given here, in a folder of its own.
// What is checked is what the operator sees (exit codes, stdout and stderr,
// the JSON it prints) and that the service honours each change: against a
// PostgreSQL server (changes announced through Redis), against the embedded
// database with no service running (the CLI opens DATA_DIR itself), and with
// the service running in this process (the CLI goes through its control
// socket). Then usage errors, help, and `keys generate`.
import { createPublicKey } from 'node:crypto'
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import tap, { test, type Test } from 'tap'
import Fastify, { type FastifyInstance, type LightMyRequestResponse } from 'fastify'
import { calculateJwkThumbprint } from 'jose'
import app, { options } from '../app.js'
import { loadConfig } from '../plugins/config.js'
import { publicJwk } from '../plugins/keys.js'
import { backends, basicAuth, build, decodeJwt, freePort, runEntry, sql, TEST_REDIS_URL, tokenRequest, type RunResult } from './helper.js'

const PROGRAM = 'session-service'
const STACK_TRACE = /^\s+at /m
/** A generated secret: 32 random bytes, base64url. */
const GENERATED_SECRET = /^[A-Za-z0-9_-]{43}$/
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const ISO_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/
const BCRYPT_HASH = /\$2[aby]\$\d\d\$/
const CLIENT_CREDENTIALS = { grant_type: 'client_credentials' }
/** The fields of a client as `clients show --json` and `clients list --json` print them. */
const VIEW_FIELDS = ['audiences', 'authentication', 'client_id', 'created_at', 'default_scopes', 'name', 'rate_limit', 'scopes', 'status', 'updated_at']
const COMMANDS = ['clients create', 'clients list', 'clients show', 'clients rotate-secret', 'clients disable', 'clients enable', 'clients delete', 'keys generate', 'migrate']

// Each run of the CLI is a new Node.js process with the TypeScript loader: one
// to a few seconds each, and this file makes some forty of them.
tap.setTimeout(600_000)

const needsServers = !backends.postgres
  ? 'needs a PostgreSQL server (none answers)'
  : !backends.redis ? 'needs a Redis server (none answers): changes reach the app through its pub/sub' : false

interface CliOptions {
  /** exactly the service settings the CLI gets */
  env?: Record<string, string>
  stdin?: string
  /** a folder of the test's own, so that no ./data, ./keys or .env of the project is involved */
  cwd: string
  timeoutMs?: number
}

/** Runs `session-service <args>`; asserts that nothing it printed is a stack trace. */
async function cli (t: Test, args: string[], { env = {}, stdin, cwd, timeoutMs = 60_000 }: CliOptions): Promise<RunResult> {
  const res = await runEntry('cli/index.ts', args, { env, cwd, timeoutMs, ...(stdin === undefined ? {} : { stdin }) })
  t.notMatch(`${res.stdout}\n${res.stderr}`, STACK_TRACE, `${[PROGRAM, ...args].join(' ')}: no stack trace in the output`)
  return res
}

/** Asserts a successful run: exit 0, nothing on stderr. */
function succeeded (t: Test, res: RunResult, what: string): void {
  t.equal(res.code, 0, `${what}: exit code 0`, { stderr: res.stderr, stdout: res.stdout })
  t.equal(res.stderr, '', `${what}: nothing on stderr`)
}

/** Asserts a failed run: the exit code, nothing on stdout, exactly one line on stderr; returns that line. */
function failed (t: Test, res: RunResult, code: number, what: string): string {
  t.equal(res.code, code, `${what}: exit code ${code}`, { stderr: res.stderr, stdout: res.stdout })
  t.equal(res.stdout, '', `${what}: nothing on stdout`)
  t.match(res.stderr, /^session-service: [^\n]+\n$/, `${what}: one line on stderr, naming the program`)
  return res.stderr.trimEnd()
}

function parsed<T = Record<string, unknown>> (t: Test, res: RunResult, what: string): T {
  try {
    return JSON.parse(res.stdout) as T
  } catch {
    t.fail(`${what}: stdout is JSON`, { stdout: res.stdout, stderr: res.stderr })
    return {} as T
  }
}

const basic = (clientId: string, secret: string): Record<string, string> => ({ authorization: basicAuth(clientId, secret) })

/**
 * Token requests until one answers `status`, for up to about a second: a
 * change made with the CLI is to reach the running app at once (the
 * announcement travels through Redis, so it may take a few milliseconds).
 */
async function answersWithin (service: FastifyInstance, headers: Record<string, string>, status: number, fields: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  const deadline = Date.now() + 1000
  for (;;) {
    const res = await tokenRequest(service, { ...CLIENT_CREDENTIALS, ...fields }, headers)
    if (res.statusCode === status || Date.now() > deadline) return res
    await sleep(20)
  }
}

function assertTokenError (t: Test, res: LightMyRequestResponse, status: number, error: string, what: string): void {
  t.equal(res.statusCode, status, `${what}: status ${status}`, { body: res.body })
  t.equal(res.json().error, error, `${what}: error ${error}`)
}

/** The app with the embedded database in `dataDir` (its signing key generated there), as the server starts it. */
async function embeddedApp (dataDir: string): Promise<FastifyInstance> {
  const config = loadConfig({ DATA_DIR: dataDir, LOG_LEVEL: 'silent' })
  const instance = Fastify({ ...options, logger: false })
  try {
    await instance.register(app, { config })
    await instance.ready()
  } catch (err) {
    await instance.close()
    throw err
  }
  return instance
}

/**
 * A folder of the test's own (t.testdir) holding `data` (DATA_DIR, not yet
 * created) and `work` (the CLI's working folder), and the app started on it
 * later, closed before the folder is removed: tap removes a testdir after
 * the teardowns registered before it was made.
 */
function embeddedFolders (t: Test): { dataDir: string, cwd: string, start: () => Promise<FastifyInstance> } {
  let service: FastifyInstance | undefined
  t.teardown(async () => await service?.close())
  const root = t.testdir({ work: {} })
  const dataDir = join(root, 'data')
  return {
    dataDir,
    cwd: join(root, 'work'),
    start: async () => {
      service = await embeddedApp(dataDir)
      return service
    }
  }
}

// ---------------------------------------------------------------------------
// PostgreSQL server, changes announced through Redis

test('PostgreSQL: a client created, rotated, disabled, enabled and deleted with the CLI; the running app follows each step at once', { skip: needsServers }, async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t)
  const cwd = t.testdir({})
  const env = { DATABASE_URL: databaseUrl, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: redisPrefix }

  // create
  let res = await cli(t, ['clients', 'create', '--name', 'x', '--scope', 'read write', '--default-scope', 'read', '--audience', 'other', '--rate-limit', '5', '--json'], { env, cwd })
  succeeded(t, res, 'clients create --json')
  const created = parsed<Record<string, unknown>>(t, res, 'clients create --json')
  t.strictSame(Object.keys(created).sort(), [...VIEW_FIELDS, 'client_secret'].sort(), 'create prints the client and its secret, nothing else')
  t.match(created.client_id, UUID, 'without --id, the client id is a UUID')
  t.match(created.client_secret, GENERATED_SECRET, 'the secret is 43 base64url characters (32 random bytes)')
  t.match(created, {
    name: 'x',
    status: 'enabled',
    scopes: ['read', 'write'],
    default_scopes: ['read'],
    audiences: ['other'],
    rate_limit: 5,
    authentication: ['client_secret'],
    created_at: ISO_TIME,
    updated_at: ISO_TIME
  }, 'the settings as given')
  t.notMatch(res.stdout, /hash/i, 'no hash field printed')
  t.notMatch(res.stdout, BCRYPT_HASH, 'no bcrypt hash printed')
  const id = String(created.client_id)
  const secret = String(created.client_secret)
  const { client_secret: _shownOnce, ...view } = created

  const [stored] = await sql<{ client_secret_hash: string }>(databaseUrl, 'SELECT client_secret_hash FROM clients WHERE client_id = $1', [id])
  t.match(stored?.client_secret_hash, /^\$2[aby]\$12\$/, 'only a bcrypt hash of the secret is stored')

  // the secret works, with the settings given
  let token = await tokenRequest(app, CLIENT_CREDENTIALS, basic(id, secret))
  t.equal(token.statusCode, 200, 'the printed secret gets a token (Basic)', { body: token.body })
  t.equal(decodeJwt(token.json().access_token).payload.scope, 'read', 'a request naming no scope gets the --default-scope')
  t.equal(token.headers['x-ratelimit-limit'], '5', 'the --rate-limit applies to the client')

  // list, as a table and as JSON; show
  const [table, listed, shown] = await Promise.all([
    cli(t, ['clients', 'list'], { env, cwd }),
    cli(t, ['clients', 'list', '--json'], { env, cwd }),
    cli(t, ['clients', 'show', id], { env, cwd })
  ])
  res = table
  succeeded(t, res, 'clients list')
  const lines = res.stdout.trimEnd().split('\n')
  t.equal(lines.length, 2, 'the table: a header and one client')
  t.match(lines[0], /^CLIENT_ID\s+STATUS\s+NAME\s+SCOPES\s+AUDIENCES$/, 'the table header')
  t.match(lines[1], new RegExp(`^${id}\\s+enabled\\s+x\\s+read write\\s+other$`), 'the client\'s row')
  t.notOk(res.stdout.includes(secret), 'the list shows no secret')

  res = listed
  succeeded(t, res, 'clients list --json')
  t.strictSame(parsed(t, res, 'clients list --json'), [view], 'list --json: the client as created, without its secret')

  res = shown
  succeeded(t, res, 'clients show')
  t.match(res.stdout, new RegExp(`^client_id:\\s+${id}$`, 'm'), 'show: the id')
  t.match(res.stdout, /^name:\s+x$/m, 'show: the name')
  t.match(res.stdout, /^status:\s+enabled$/m, 'show: the status')
  t.match(res.stdout, /^scopes:\s+read write$/m, 'show: the scopes')
  t.match(res.stdout, /^default_scopes:\s+read$/m, 'show: the default scope')
  t.match(res.stdout, /^audiences:\s+other$/m, 'show: the audience')
  t.match(res.stdout, /^rate_limit:\s+5$/m, 'show: the rate limit')
  t.match(res.stdout, /^authentication:\s+client_secret$/m, 'show: how it authenticates')
  t.notOk(res.stdout.includes(secret), 'show prints no secret')
  t.notMatch(res.stdout, /secret:|hash/i, 'show prints no secret or hash field')
  t.notMatch(res.stdout, BCRYPT_HASH, 'show prints no bcrypt hash')

  // rotate-secret: the old secret is refused at once, the new one works
  res = await cli(t, ['clients', 'rotate-secret', id, '--json'], { env, cwd })
  succeeded(t, res, 'clients rotate-secret --json')
  const rotated = parsed<Record<string, unknown>>(t, res, 'clients rotate-secret --json')
  t.strictSame(Object.keys(rotated).sort(), ['client_id', 'client_secret'], 'rotate-secret prints the id and the new secret')
  t.equal(rotated.client_id, id, 'the client rotated')
  t.match(rotated.client_secret, GENERATED_SECRET, 'the new secret is 43 base64url characters')
  t.not(rotated.client_secret, secret, 'the new secret differs from the old one')
  const newSecret = String(rotated.client_secret)
  token = await answersWithin(app, basic(id, secret), 401)
  assertTokenError(t, token, 401, 'invalid_client', 'the old secret, right after rotate-secret')
  token = await tokenRequest(app, CLIENT_CREDENTIALS, basic(id, newSecret))
  t.equal(token.statusCode, 200, 'the new secret gets a token', { body: token.body })

  // disable, enable
  res = await cli(t, ['clients', 'disable', id], { env, cwd })
  succeeded(t, res, 'clients disable')
  t.equal(res.stdout, `client ${id} disabled\n`, 'disable says what it did')
  token = await answersWithin(app, basic(id, newSecret), 400)
  assertTokenError(t, token, 400, 'unauthorized_client', 'a token request right after disable')

  res = await cli(t, ['clients', 'enable', id, '--json'], { env, cwd })
  succeeded(t, res, 'clients enable --json')
  t.strictSame(parsed(t, res, 'clients enable --json'), { client_id: id, status: 'enabled' }, 'enable --json: the id and the new status')
  token = await answersWithin(app, basic(id, newSecret), 200, { audience: 'other' })
  t.equal(token.statusCode, 200, 'a token request right after enable gets a token', { body: token.body })
  t.equal(decodeJwt(token.json().access_token).payload.aud, 'other', 'the --audience given at creation is granted')

  // delete
  res = await cli(t, ['clients', 'delete', id], { env, cwd })
  succeeded(t, res, 'clients delete')
  t.equal(res.stdout, `client ${id} deleted\n`, 'delete says what it did')
  token = await answersWithin(app, basic(id, newSecret), 401)
  assertTokenError(t, token, 401, 'invalid_client', 'a token request right after delete')
  res = await cli(t, ['clients', 'show', id], { env, cwd })
  t.equal(failed(t, res, 1, 'clients show of a deleted client'), `session-service: no client "${id}"`, 'show: no such client')

  t.strictSame(readdirSync(cwd), [], 'nothing written into the working folder')
})

test('PostgreSQL: --secret-stdin takes a secret of at most 72 bytes, all of which count', { skip: needsServers }, async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t)
  const cwd = t.testdir({})
  const env = { DATABASE_URL: databaseUrl, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: redisPrefix }
  const secret72 = 'Aa0-'.repeat(18)

  let res = await cli(t, ['clients', 'create', '--name', 'too long', '--id', 'svc-73', '--secret-stdin', '--json'], { env, cwd, stdin: `${secret72}x\n` })
  const refusal = failed(t, res, 2, 'a 73-byte secret on stdin')
  t.match(refusal, /\b73 bytes\b/, 'the message gives the secret\'s length')
  t.match(refusal, /\b72\b/, 'and the limit of 72 bytes')
  t.strictSame(await sql(databaseUrl, 'SELECT client_id FROM clients'), [], 'no client was created')

  res = await cli(t, ['clients', 'create', '--name', 'stdin', '--id', 'svc-72', '--secret-stdin', '--json'], { env, cwd, stdin: `${secret72}\n` })
  succeeded(t, res, 'a 72-byte secret on stdin (and its newline)')
  const created = parsed<Record<string, unknown>>(t, res, 'clients create --secret-stdin --json')
  t.equal(created.client_id, 'svc-72', 'the --id given')
  t.equal(created.client_secret, secret72, 'the secret printed is the one read, without the trailing newline')

  let token = await tokenRequest(app, CLIENT_CREDENTIALS, basic('svc-72', secret72))
  t.equal(token.statusCode, 200, 'the 72-byte secret gets a token', { body: token.body })
  token = await tokenRequest(app, CLIENT_CREDENTIALS, basic('svc-72', `${secret72.slice(0, 71)}!`))
  assertTokenError(t, token, 401, 'invalid_client', 'the secret with its 72nd byte changed')
})

test('PostgreSQL: creating a client with an id that exists fails and leaves the first one alone', { skip: needsServers }, async (t) => {
  const { app, redisPrefix, databaseUrl } = await build(t)
  const cwd = t.testdir({})
  const env = { DATABASE_URL: databaseUrl, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: redisPrefix }

  let res = await cli(t, ['clients', 'create', '--name', 'first', '--id', 'svc-dup', '--json'], { env, cwd })
  succeeded(t, res, 'the first create')
  const secret = String(parsed(t, res, 'clients create --json').client_secret)

  res = await cli(t, ['clients', 'create', '--name', 'second', '--id', 'svc-dup', '--json'], { env, cwd })
  t.equal(failed(t, res, 1, 'the second create with the same --id'), 'session-service: a client "svc-dup" already exists', 'the message: the id is taken')

  t.strictSame(await sql(databaseUrl, 'SELECT name FROM clients'), [{ name: 'first' }], 'the first client is unchanged')
  const token = await tokenRequest(app, CLIENT_CREDENTIALS, basic('svc-dup', secret))
  t.equal(token.statusCode, 200, 'the first client\'s secret still gets a token', { body: token.body })
})

// ---------------------------------------------------------------------------
// Embedded database

test('embedded, no service running: the CLI creates and migrates the database in DATA_DIR and releases it', async (t) => {
  const { dataDir, cwd, start } = embeddedFolders(t)
  const env = { DATA_DIR: dataDir }

  let res = await cli(t, ['clients', 'create', '--name', 'before start', '--id', 'svc-early', '--scope', 'read', '--json'], { env, cwd })
  succeeded(t, res, 'clients create --json in a new DATA_DIR')
  const created = parsed<Record<string, unknown>>(t, res, 'clients create --json')
  t.match(created, { client_id: 'svc-early', name: 'before start', scopes: ['read'], status: 'enabled', client_secret: GENERATED_SECRET }, 'the client created')
  t.ok(existsSync(join(dataDir, 'pgdata')), 'the embedded database was created in DATA_DIR/pgdata')
  t.notOk(existsSync(join(dataDir, 'service.lock')), 'the lock on DATA_DIR is released when the command ends')

  res = await cli(t, ['clients', 'list', '--json'], { env, cwd })
  succeeded(t, res, 'a second command on the same DATA_DIR')
  const listed = parsed<Array<Record<string, unknown>>>(t, res, 'clients list --json')
  t.strictSame(listed.map((client) => client.client_id), ['svc-early'], 'list shows the client')
  t.notOk(existsSync(join(dataDir, 'service.lock')), 'released again')
  t.strictSame(readdirSync(cwd), [], 'nothing written into the working folder (no ./data, no ./keys)')

  // The service, started on that data directory, knows the client.
  const service = await start()
  const token = await tokenRequest(service, { ...CLIENT_CREDENTIALS, scope: 'read' }, basic('svc-early', String(created.client_secret)))
  t.equal(token.statusCode, 200, 'the service started afterwards gives the client a token', { body: token.body })
  t.equal(decodeJwt(token.json().access_token).payload.scope, 'read', 'with the scope given to the CLI')
})

test('embedded, service running: the CLI goes through its control socket and the service follows each change at once', async (t) => {
  // A short folder name: a Unix socket path is limited to about 100 bytes.
  t.testdirName = join(import.meta.dirname, '..', '.tap', 'fixtures', `cli-running-${process.pid}`)
  const { dataDir, cwd, start } = embeddedFolders(t)
  const env = { DATA_DIR: dataDir }
  const service = await start()
  t.ok(existsSync(join(dataDir, 'control.sock')), 'the service listens on control.sock in DATA_DIR')
  t.equal(readFileSync(join(dataDir, 'service.lock'), 'utf8').trim(), String(process.pid), 'the service holds DATA_DIR')

  let res = await cli(t, ['clients', 'create', '--name', 'svc', '--id', 'svc-run', '--scope', 'read'], { env, cwd })
  succeeded(t, res, 'clients create')
  t.equal(res.stdout.split('\n')[0], `client created in the running service (process ${process.pid})`, 'create says it went through the running service')
  t.match(res.stdout, /^client_id:\s+svc-run$/m, 'the id')
  t.match(res.stdout, /^The secret is shown this once; store it now\.$/m, 'the warning that the secret is shown once')
  const secret = /^client_secret:\s+(\S+)$/m.exec(res.stdout)?.[1] ?? ''
  t.match(secret, GENERATED_SECRET, 'the secret')
  let token = await tokenRequest(service, CLIENT_CREDENTIALS, basic('svc-run', secret))
  t.equal(token.statusCode, 200, 'the new client gets a token', { body: token.body })

  res = await cli(t, ['clients', 'disable', 'svc-run'], { env, cwd })
  succeeded(t, res, 'clients disable')
  t.equal(res.stdout, 'client svc-run disabled\n', 'disable says what it did')
  token = await tokenRequest(service, CLIENT_CREDENTIALS, basic('svc-run', secret))
  assertTokenError(t, token, 400, 'unauthorized_client', 'the very next token request after disable')

  res = await cli(t, ['clients', 'enable', 'svc-run'], { env, cwd })
  succeeded(t, res, 'clients enable')
  t.equal(res.stdout, 'client svc-run enabled\n', 'enable says what it did')
  token = await tokenRequest(service, CLIENT_CREDENTIALS, basic('svc-run', secret))
  t.equal(token.statusCode, 200, 'the very next token request after enable gets a token', { body: token.body })

  res = await cli(t, ['clients', 'rotate-secret', 'svc-run', '--json'], { env, cwd })
  succeeded(t, res, 'clients rotate-secret --json')
  const newSecret = String(parsed(t, res, 'clients rotate-secret --json').client_secret)
  t.match(newSecret, GENERATED_SECRET, 'a new secret')
  token = await tokenRequest(service, CLIENT_CREDENTIALS, basic('svc-run', secret))
  assertTokenError(t, token, 401, 'invalid_client', 'the old secret, right after rotate-secret')
  token = await tokenRequest(service, CLIENT_CREDENTIALS, basic('svc-run', newSecret))
  t.equal(token.statusCode, 200, 'the new secret gets a token', { body: token.body })

  res = await cli(t, ['clients', 'delete', 'svc-run', '--json'], { env, cwd })
  succeeded(t, res, 'clients delete --json')
  t.strictSame(parsed(t, res, 'clients delete --json'), { client_id: 'svc-run', deleted: true }, 'delete --json: the id, deleted')
  token = await tokenRequest(service, CLIENT_CREDENTIALS, basic('svc-run', newSecret))
  assertTokenError(t, token, 401, 'invalid_client', 'the very next token request after delete')
  res = await cli(t, ['clients', 'show', 'svc-run'], { env, cwd })
  t.equal(failed(t, res, 1, 'clients show of a deleted client'), 'session-service: no client "svc-run"', 'the message: no such client')

  t.equal(readFileSync(join(dataDir, 'service.lock'), 'utf8').trim(), String(process.pid), 'the service still holds DATA_DIR: the CLI never took it')
  t.strictSame(readdirSync(cwd), [], 'nothing written into the working folder')
})

// ---------------------------------------------------------------------------
// Help and errors

test('--help on the program and on every command prints its usage and exits 0', async (t) => {
  const cwd = t.testdir({})
  const main = await cli(t, ['--help'], { cwd })
  succeeded(t, main, '--help')
  t.match(main.stdout, /^Usage: session-service <command> \[options\]\n/, 'the program\'s usage')
  const listed = (main.stdout.split('Commands:\n')[1] ?? '').split('\n\n')[0]?.split('\n').map((line) => line.trim().split(/\s{2,}/)[0]) ?? []
  t.strictSame(listed, COMMANDS, 'the help lists every command')

  const runs = await Promise.all(COMMANDS.map(async (command) => ({ command, res: await cli(t, [...command.split(' '), '--help'], { cwd }) })))
  for (const { command, res } of runs) {
    succeeded(t, res, `${command} --help`)
    t.ok(res.stdout.startsWith(`Usage: session-service ${command}`), `${command} --help: its usage line`, { stdout: res.stdout })
  }
  t.strictSame(readdirSync(cwd), [], 'help touches no file')
})

test('usage errors exit 2 with one line on stderr', async (t) => {
  const cwd = t.testdir({})
  const [none, unknown, bogus, noId] = await Promise.all([
    cli(t, [], { cwd }),
    cli(t, ['frobnicate'], { cwd }),
    cli(t, ['clients', 'list', '--bogus'], { cwd }),
    cli(t, ['clients', 'show'], { cwd })
  ])

  t.equal(none.code, 2, 'no arguments: exit code 2')
  t.match(none.stdout, /^Usage: session-service <command> \[options\]\n/, 'no arguments: the usage on stdout')
  t.equal(none.stderr, '', 'no arguments: nothing on stderr')

  t.equal(failed(t, unknown, 2, 'an unknown command'), 'session-service: unknown command "frobnicate" (see session-service --help)', 'the message names the command')
  const unknownOption = failed(t, bogus, 2, 'clients list --bogus')
  t.match(unknownOption, /'--bogus'/, 'the message names the option')
  t.match(unknownOption, /\(see session-service clients list --help\)$/, 'and where to look')
  t.equal(failed(t, noId, 2, 'clients show without an id'), 'session-service: give exactly one client id (see session-service clients show --help)', 'the message asks for the id')
})

test('an unreachable PostgreSQL server: exit 1 and one line, soon', async (t) => {
  const cwd = t.testdir({})
  const port = await freePort()
  const res = await cli(t, ['clients', 'list'], { env: { DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/postgres` }, cwd, timeoutMs: 30_000 })
  const line = failed(t, res, 1, 'clients list with nothing listening at DATABASE_URL')
  t.ok(line.startsWith('session-service: cannot reach PostgreSQL'), 'the message says PostgreSQL cannot be reached', { line })
  t.ok(res.ms < 15_000, `within 15 s (took ${res.ms} ms)`)
})

// ---------------------------------------------------------------------------
// keys generate

for (const algorithm of ['RS256', 'ES256', 'EdDSA'] as const) {
  test(`keys generate --algorithm ${algorithm}: a key pair the service loads, named by its thumbprint`, async (t) => {
    const root = t.testdir({ work: {} })
    const cwd = join(root, 'work')
    const out = join(root, 'keys')
    let res = await cli(t, ['keys', 'generate', '--algorithm', algorithm, '--out', out, '--json'], { cwd })
    succeeded(t, res, 'keys generate --json')
    const printed = parsed<Record<string, unknown>>(t, res, 'keys generate --json')
    const privatePath = join(out, 'private.pem')
    const publicPath = join(out, 'public.pem')
    t.strictSame(printed, { algorithm, kid: printed.kid, private_key: privatePath, public_key: publicPath }, 'the algorithm, the kid and both paths')
    t.equal(statSync(privatePath).mode & 0o777, 0o600, 'private.pem is readable by its owner only')
    t.ok(statSync(publicPath).isFile(), 'public.pem is written')

    const publicKey = createPublicKey(readFileSync(publicPath))
    t.equal(printed.kid, publicJwk(publicKey, algorithm).kid, 'the kid is the RFC 7638 thumbprint of public.pem')
    t.equal(printed.kid, await calculateJwkThumbprint(publicKey.export({ format: 'jwk' }) as Parameters<typeof calculateJwkThumbprint>[0], 'sha256'), 'as jose computes it')

    const privatePem = readFileSync(privatePath, 'utf8')
    let config: ReturnType<typeof loadConfig> | undefined
    t.doesNotThrow(() => { config = loadConfig({ DATABASE_URL: 'postgres://x@127.0.0.1/x', JWT_PRIVATE_KEY_FILE: privatePath, JWT_ALGORITHM: algorithm }) }, 'the service accepts private.pem as its signing key')
    t.equal(config === undefined ? undefined : publicJwk(config.publicKey, algorithm).kid, printed.kid, 'and publishes it under the kid printed')

    res = await cli(t, ['keys', 'generate', '--algorithm', algorithm, '--out', out], { cwd })
    t.match(failed(t, res, 1, 'a second keys generate into the same folder'), /private\.pem exists/, 'it refuses to overwrite')
    t.equal(readFileSync(privatePath, 'utf8'), privatePem, 'private.pem is unchanged')
    t.strictSame(readdirSync(cwd), [], 'nothing written into the working folder')
  })
}

test('keys generate --algorithm HS256 is refused', async (t) => {
  const root = t.testdir({ work: {} })
  const res = await cli(t, ['keys', 'generate', '--algorithm', 'HS256', '--out', join(root, 'keys')], { cwd: join(root, 'work') })
  t.equal(failed(t, res, 2, 'keys generate --algorithm HS256'), 'session-service: --algorithm must be one of RS256, ES256, EdDSA (see session-service keys generate --help)', 'the message lists the algorithms')
  t.notOk(existsSync(join(root, 'keys')), 'no key folder created')
})
