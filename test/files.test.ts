// Files and the control socket: what the service and the CLI leave on disk is
// for their own user only, a data directory or key file that others can
// reach stops the start with one line, and the control socket refuses every
// line that is not a well-formed request, without harm to the service.
import { spawn } from 'node:child_process'
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { createConnection, type Socket } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import tap, { test, type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import serviceApp, { options } from '../app.ts'
import { ConfigError, ensureDataDirSigningKey, loadConfig } from '../plugins/config.ts'
import { insertClientRow } from '../plugins/clients.ts'
import { CONTROL_SOCKET, PGDATA, SIGNING_KEY_FILE } from '../storage/data-dir.ts'
import { basicAuth, freePort, PROJECT_DIR, runEntry, runnerEnv, testKeys, tokenRequest } from './helper.ts'

// A first start runs initdb on the embedded PostgreSQL: seconds on a busy machine.
tap.setTimeout(300_000)

const NOBODY = 65534

/** A folder of the test's own, short enough for a Unix socket path, owner-only (as mkdtemp makes it). */
async function folder (t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ss-files-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  return dir
}

/** The embedded app on `dataDir`, as server.ts builds it (no umask of its own: a library user's process). */
async function startEmbedded (t: Test, dataDir: string): Promise<FastifyInstance> {
  const env = { DATA_DIR: dataDir, LOG_LEVEL: 'silent' }
  const config = loadConfig(env, { dataDirKey: ensureDataDirSigningKey(env) })
  const app = Fastify({ ...options, logger: false })
  t.teardown(async () => await app.close())
  await app.register(serviceApp, { config })
  await app.ready()
  return app
}

/** Every file, folder and socket under `root` that group or others may use, with its mode. */
function openToOthers (root: string): string[] {
  const found: string[] = []
  const walk = (path: string): void => {
    const stats = lstatSync(path)
    if (stats.isSymbolicLink()) return
    if ((stats.mode & 0o077) !== 0) found.push(`${path} ${(stats.mode & 0o777).toString(8)}`)
    if (stats.isDirectory()) for (const name of readdirSync(path)) walk(join(path, name))
  }
  walk(root)
  return found
}

function countEntries (root: string): number {
  let count = 0
  const walk = (path: string): void => {
    count++
    if (lstatSync(path).isDirectory()) for (const name of readdirSync(path)) walk(join(path, name))
  }
  walk(root)
  return count
}

const modeOf = (path: string): number => lstatSync(path).mode & 0o777

/** A folder of exactly `mode` (mkdirSync's mode passes through the umask). */
function makeDir (path: string, mode: number): void {
  mkdirSync(path)
  chmodSync(path, mode)
}

/** loadConfig's error for `env`, or a failure of the test when it loads. */
function configError (t: Test, env: Record<string, string>): ConfigError | undefined {
  try {
    loadConfig(env)
  } catch (err) {
    t.type(err, ConfigError, 'a ConfigError')
    return err as ConfigError
  }
  t.fail('the configuration was accepted')
  return undefined
}

test('the embedded database is owner-only while the service runs and after it stops, though the process umask is 022', async (t) => {
  process.umask(0o022)
  const dataDir = join(await folder(t), 'data')
  const app = await startEmbedded(t, dataDir)
  // A client and a token: the WAL now holds a bcrypt hash and a refresh-token hash.
  await insertClientRow(app.db, { id: 'files-client', secret: 'files-client-secret' }, 10)
  const res = await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('files-client', 'files-client-secret') })
  t.equal(res.statusCode, 200, 'a token is issued', { body: res.body })

  t.ok(countEntries(join(dataDir, PGDATA)) > 100, 'the check covers the embedded database (hundreds of files)')
  t.strictSame(openToOthers(dataDir), [], 'while running: nothing under DATA_DIR is open to group or others')
  t.equal(modeOf(join(dataDir, CONTROL_SOCKET)), 0o600, 'the control socket is 0600')
  t.equal(modeOf(join(dataDir, SIGNING_KEY_FILE)), 0o600, 'the generated signing key is 0600')
  t.equal(modeOf(dataDir), 0o700, 'DATA_DIR is 0700')

  await app.close()
  t.strictSame(openToOthers(dataDir), [], 'after closing: nothing under DATA_DIR is open to group or others')
})

test('the CLI on a new DATA_DIR, with no service running, leaves nothing open to group or others', async (t) => {
  const root = await folder(t)
  const dataDir = join(root, 'data')
  const created = await runEntry('cli/index.ts', ['clients', 'create', '--name', 'cli-files', '--json'], { env: { DATA_DIR: dataDir }, cwd: root })
  t.equal(created.code, 0, 'clients create exits 0', { stderr: created.stderr })
  t.ok(existsSync(join(dataDir, PGDATA)), 'the CLI created the embedded database')
  t.strictSame(openToOthers(dataDir), [], 'nothing under DATA_DIR is open to group or others')
})

test('a DATA_DIR open to group or others, or owned by another user, stops the start with one line', async (t) => {
  const open = join(await folder(t), 'data')
  // mkdtemp's folder is 0700; this one is made wide on purpose.
  makeDir(open, 0o755)
  const err = configError(t, { DATA_DIR: open })
  t.equal(err?.variable, 'DATA_DIR', 'the error names DATA_DIR')
  t.equal(err?.message, `DATA_DIR: ${open} is open to group or others (mode 0755); chmod 700 ${open}`, 'and says what to do')

  const run = await runEntry('server.ts', [], { env: { DATA_DIR: open, SERVER_PORT: String(await freePort()), SERVER_HOST: '127.0.0.1' }, timeoutMs: 30_000 })
  t.equal(run.code, 1, 'server.ts exits 1', { stderr: run.stderr })
  t.equal(run.stderr, `session-service: DATA_DIR: ${open} is open to group or others (mode 0755); chmod 700 ${open}\n`, 'with exactly that line on stderr')
  t.notOk(existsSync(join(open, PGDATA)), 'and nothing was created in it')

  chmodSync(open, 0o700)
  chownSync(open, NOBODY, NOBODY)
  const foreign = configError(t, { DATA_DIR: open })
  t.match(foreign?.message, new RegExp(`^DATA_DIR: ${open} is owned by uid ${NOBODY}, not by this process`), 'a DATA_DIR of another user is refused, naming the owner')

  const keyDir = join(await folder(t), 'data')
  makeDir(keyDir, 0o700)
  writeFileSync(join(keyDir, SIGNING_KEY_FILE), testKeys.privateKey, { mode: 0o644 })
  chmodSync(join(keyDir, SIGNING_KEY_FILE), 0o644)
  const readable = configError(t, { DATA_DIR: keyDir })
  t.match(readable?.message, /^DATA_DIR: .*signing-key\.pem is open to group or others \(mode 0644\); chmod 600 /, 'a signing key in DATA_DIR that others may read is refused')
})

const IS_ROOT = process.geteuid?.() === 0
const serverEnv = { DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/unused', LOG_LEVEL: 'silent' }

/** A key file of `owner` and exactly `mode`. */
function keyFile (dir: string, name: string, owner: number, mode: number): string {
  const path = join(dir, name)
  writeFileSync(path, testKeys.privateKey)
  chownSync(path, owner, owner)
  chmodSync(path, mode)
  return path
}

test('JWT_PRIVATE_KEY_FILE: its user\'s own and closed to others; root\'s may be read but not written by others; no other owner', { skip: IS_ROOT ? false : 'needs root to make files of other users' }, async (t) => {
  const dir = await folder(t)
  chmodSync(dir, 0o755) // so that nobody can reach the files below

  const rootReadable = keyFile(dir, 'root-0644.pem', 0, 0o644)
  t.doesNotThrow(() => loadConfig({ ...serverEnv, JWT_PRIVATE_KEY_FILE: rootReadable }), 'a root-owned key readable by others (a mounted secret) is accepted')

  const rootWritable = keyFile(dir, 'root-0666.pem', 0, 0o666)
  const writable = configError(t, { ...serverEnv, JWT_PRIVATE_KEY_FILE: rootWritable })
  t.equal(writable?.variable, 'JWT_PRIVATE_KEY_FILE', 'the error names JWT_PRIVATE_KEY_FILE')
  t.equal(writable?.message, `JWT_PRIVATE_KEY_FILE: ${rootWritable} is writable by group or others (mode 0666); chmod go-w ${rootWritable}`,
    'a root-owned key that others may write is refused')

  const foreign = keyFile(dir, 'nobody-0600.pem', NOBODY, 0o600)
  const foreignErr = configError(t, { ...serverEnv, JWT_PRIVATE_KEY_FILE: foreign })
  t.match(foreignErr?.message, new RegExp(`^JWT_PRIVATE_KEY_FILE: ${foreign} is owned by uid ${NOBODY}, neither this process's user \\(uid 0\\) nor root`),
    'a key of another user is refused, even owner-only')

  // The service as a user other than root: its own key must be closed to group and others.
  const own = keyFile(dir, 'nobody-0640.pem', NOBODY, 0o640)
  const run = await runAs(NOBODY, 'server.ts', { ...serverEnv, JWT_PRIVATE_KEY_FILE: own, SERVER_PORT: String(await freePort()) })
  t.equal(run.code, 1, 'server.ts as nobody with its own key at 0640 exits 1', { stderr: run.stderr })
  t.equal(run.stderr, `session-service: JWT_PRIVATE_KEY_FILE: ${own} is open to group or others (mode 0640); chmod 600 ${own}\n`, 'with one line naming the file and the fix')

  chmodSync(own, 0o600)
  const fine = await runAs(NOBODY, 'server.ts', { ...serverEnv, JWT_PRIVATE_KEY_FILE: own, SERVER_PORT: String(await freePort()), DEPENDENCY_TIMEOUT: '500ms' })
  t.notMatch(fine.stderr, /JWT_PRIVATE_KEY_FILE/, 'at 0600 the key is accepted (the start then fails on the unused database, not on the key)', { stderr: fine.stderr })
})

/** Runs a TypeScript entry point as another user (root only), to its end. */
async function runAs (uid: number, entry: string, env: Record<string, string>): Promise<{ code: number | null, stderr: string }> {
  // Without the test runner's process-info hook (it adds itself through
  // NODE_OPTIONS and writes into the project folder, which is not that user's);
  // only the runner's type-stripping flags are given back.
  const execArgv = process.execArgv.filter((arg) => !arg.includes('processinfo'))
  const spawnEnv: Record<string, string> = { ...runnerEnv(), ...env, HOME: tmpdir() }
  const { NODE_OPTIONS: typeStripping, ...childEnv } = spawnEnv
  const nodeOptions = typeStripping === undefined ? [] : [`NODE_OPTIONS=${typeStripping}`]
  const child = spawn('env', ['-u', 'NODE_OPTIONS', ...nodeOptions, process.execPath, ...execArgv, join(PROJECT_DIR, entry)], {
    cwd: tmpdir(), uid, gid: uid, env: childEnv, stdio: ['ignore', 'ignore', 'pipe']
  })
  let stderr = ''
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000)
  return await new Promise((resolve, reject) => {
    child.on('error', reject)
    child.on('close', (code) => { clearTimeout(timer); resolve({ code, stderr }) })
  })
}

/** A line-at-a-time connection to the control socket. */
async function controlConnection (t: Test, path: string): Promise<{ socket: Socket, exchange: (line: string) => Promise<Record<string, unknown>> }> {
  const socket = createConnection(path)
  t.teardown(() => { socket.destroy() })
  await new Promise<void>((resolve, reject) => { socket.once('connect', resolve); socket.once('error', reject) })
  socket.setEncoding('utf8')
  let buffered = ''
  const waiting: Array<(line: string) => void> = []
  const lines: string[] = []
  socket.on('data', (chunk: string) => {
    buffered += chunk
    let newline: number
    while ((newline = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, newline)
      buffered = buffered.slice(newline + 1)
      const waiter = waiting.shift()
      if (waiter !== undefined) waiter(line)
      else lines.push(line)
    }
  })
  const closed = new Promise<string>((resolve) => socket.once('close', () => resolve('(the service closed the connection)')))
  const exchange = async (line: string): Promise<Record<string, unknown>> => {
    socket.write(`${line}\n`)
    const next = lines.shift()
    const answer = next ?? await Promise.race([new Promise<string>((resolve) => waiting.push(resolve)), closed])
    try {
      return JSON.parse(answer) as Record<string, unknown>
    } catch {
      return { unparsable: answer }
    }
  }
  return { socket, exchange }
}

test('the control socket answers every malformed line with an error, changes nothing, and keeps serving', async (t) => {
  const dataDir = join(await folder(t), 'data')
  const app = await startEmbedded(t, dataDir)
  await insertClientRow(app.db, { id: 'control-client', secret: 'control-client-secret' }, 10)
  const path = join(dataDir, CONTROL_SOCKET)
  t.equal(modeOf(path), 0o600, 'control.sock is 0600')
  const { exchange } = await controlConnection(t, path)

  const malformed: Array<[string, string]> = [
    ['null', 'null'],
    ['[]', 'an array'],
    ['{}', 'an empty object'],
    ['{"id":1,"op":"query"}', 'a query without text'],
    ['{"id":"x","op":"forget","clientId":5}', 'a string id and a numeric clientId'],
    ['{"id":1.5,"op":"migrate"}', 'a fractional id'],
    ['{"id":2,"op":"drop"}', 'an unknown op'],
    ['{"id":3,"op":"query","text":"SELECT 1","values":"x"}', 'values that are not an array'],
    ['{"id":"x","op":"exec","script":"DELETE FROM clients"}', 'a destructive script with a string id'],
    ['{"id":4,"op":"exec","script":"DELETE FROM clients","extra":true}', 'a destructive script with an unknown field'],
    [`{"id":5,"op":"query","text":"SELECT '${'a'.repeat(2 * 1024 * 1024)}'"}`, 'a 2 MiB line'],
    ['this is not JSON', 'non-JSON']
  ]
  for (const [line, what] of malformed) {
    const answer = await exchange(line)
    t.type(answer.error, 'string', `${what}: an error answer`, { answer: JSON.stringify(answer).slice(0, 200) })
    t.notOk('rows' in answer || 'done' in answer || 'applied' in answer, `${what}: nothing done`)
  }
  t.match(await exchange('{"id":6,"op":"forget","clientId":"control-client"}'), { id: 6, done: true }, 'a valid request on the same connection is served')
  t.strictSame(await exchange('{"id":7,"op":"query","text":"SELECT count(*)::int AS n FROM clients"}'), { id: 7, rows: [{ n: 1 }] },
    'the refused lines changed nothing: the client is still there')

  const res = await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('control-client', 'control-client-secret') })
  t.equal(res.statusCode, 200, 'the service still issues tokens over HTTP', { body: res.body })
  t.equal(modeOf(path), 0o600, 'control.sock is still 0600')
})

test('docker-compose.yml, the CLI and the documentation use one key file name, and the documentation never opens a key to everyone', async (t) => {
  const compose = readFileSync(join(PROJECT_DIR, 'docker-compose.yml'), 'utf8')
  const mounted = /^\s+file: \.\/keys\/(\S+)$/m.exec(compose)?.[1]
  t.equal(mounted, 'private.pem', 'compose mounts keys/private.pem')

  const root = await folder(t)
  const keys = await runEntry('cli/index.ts', ['keys', 'generate', '--out', join(root, 'keys')], { cwd: root })
  t.equal(keys.code, 0, 'keys generate exits 0', { stderr: keys.stderr })
  t.ok(existsSync(join(root, 'keys', mounted ?? '')), `keys generate writes ${String(mounted)}, the file compose mounts`)
  t.strictSame(openToOthers(join(root, 'keys')), [], 'the key folder and both keys are owner-only')

  // The README and the pages it leads to (docs/*.md)
  const pages = ['README.md', ...readdirSync(join(PROJECT_DIR, 'docs')).filter((name) => name.endsWith('.md')).map((name) => join('docs', name))]
  const docs = pages.map((page) => readFileSync(join(PROJECT_DIR, page), 'utf8')).join('\n')
  t.notMatch(docs, /chmod [0-7]?[0-7][0-7][4-7]\b|chmod (a|o)\+r/, 'the documentation never makes a file readable by others')
  t.notMatch(docs + compose, /jwt-private\.pem/, 'no other private key file name')
  t.match(docs, /keys generate --out keys +# keys\/private\.pem/, 'the documentation makes the key with keys generate, as keys/private.pem')
})
