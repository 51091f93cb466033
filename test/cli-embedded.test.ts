// The operator's command line against the embedded database, run in this
// process through main(argv, io): with no service running (the CLI opens
// DATA_DIR itself) and with the service running in this process, whose lock
// on DATA_DIR is this process's own (the CLI then goes through its control
// socket, as a separate process would).
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test, type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import app, { options } from '../app.ts'
import { ensureDataDirSigningKey, loadConfig } from '../plugins/config.ts'
import { decodeJwt, tokenRequest } from './helper.ts'
import { assertTokenError, basic, cli, CLIENT_CREDENTIALS, failed, GENERATED_SECRET, parsed, succeeded } from './helpers/cli.ts'

/** The app with the embedded database in `dataDir` (its signing key generated there), as the server starts it. */
async function embeddedApp (dataDir: string): Promise<FastifyInstance> {
  const env = { DATA_DIR: dataDir, LOG_LEVEL: 'silent' }
  const config = loadConfig(env, { dataDirKey: ensureDataDirSigningKey(env) })
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

test('embedded, service running: update, show, rotate-secret --grace and events go through the control socket', async (t) => {
  t.testdirName = join(import.meta.dirname, '..', '.tap', 'fixtures', `cli-rotate-${process.pid}`)
  const { dataDir, cwd, start } = embeddedFolders(t)
  const env = { DATA_DIR: dataDir }
  const service = await start()
  let res = await cli(t, ['clients', 'create', '--name', 'svc', '--id', 'svc-grace', '--scope', 'read', '--json'], { env, cwd })
  succeeded(t, res, 'clients create')
  const secret = String(parsed(t, res, 'clients create --json').client_secret)

  res = await cli(t, ['clients', 'update', 'svc-grace', '--scopes', 'read write', '--default-scopes', 'write', '--claims', '{"tier":"gold"}', '--json'], { env, cwd })
  succeeded(t, res, 'clients update')
  t.match(parsed(t, res, 'clients update --json'), { client_id: 'svc-grace', name: 'svc', scopes: ['read', 'write'], default_scopes: ['write'], claims: { tier: 'gold' } }, 'the changed client')
  let token = await tokenRequest(service, CLIENT_CREDENTIALS, basic('svc-grace', secret))
  t.equal(decodeJwt(token.json().access_token).payload.scope, 'write', 'the very next token has the new default scope')
  t.equal(decodeJwt(token.json().access_token).payload.tier, 'gold', 'and the new claim')

  res = await cli(t, ['clients', 'rotate-secret', 'svc-grace', '--grace', '5s', '--json'], { env, cwd })
  succeeded(t, res, 'clients rotate-secret --grace 5s')
  const rotated = parsed(t, res, 'clients rotate-secret --json')
  const newSecret = String(rotated.client_secret)
  const end = Date.parse(String(rotated.previous_secret_expires_at))
  t.ok(end > Date.now() && end < Date.now() + 5500, 'the grace period ends within 5s', { rotated })
  res = await cli(t, ['clients', 'show', 'svc-grace', '--json'], { env, cwd })
  t.equal(parsed(t, res, 'clients show --json').previous_secret_expires_at, rotated.previous_secret_expires_at, 'show gives the end of the grace period')
  token = await tokenRequest(service, CLIENT_CREDENTIALS, basic('svc-grace', secret))
  t.equal(token.statusCode, 200, 'the old secret during the grace period', { body: token.body })
  token = await tokenRequest(service, CLIENT_CREDENTIALS, basic('svc-grace', newSecret))
  t.equal(token.statusCode, 200, 'the new secret during the grace period', { body: token.body })

  await new Promise((resolve) => setTimeout(resolve, Math.max(0, end - Date.now()) + 100))
  token = await tokenRequest(service, CLIENT_CREDENTIALS, basic('svc-grace', secret))
  assertTokenError(t, token, 401, 'invalid_client', 'the old secret after the grace period')

  res = await cli(t, ['clients', 'events', 'svc-grace', '--json'], { env, cwd })
  succeeded(t, res, 'clients events --json')
  const { events } = parsed<{ events: Array<Record<string, unknown>> }>(t, res, 'clients events --json')
  t.strictSame(events.map((event) => event.action), ['secret_rotated', 'updated', 'created'], 'each change, newest first')
  t.ok(events.every((event) => typeof event.actor === 'string' && event.actor.startsWith('cli:')), 'made by the operator\'s CLI')
  t.notOk(res.stdout.includes(secret) || res.stdout.includes(newSecret), 'no secret in the history')
  t.notMatch(res.stdout, /\$2[aby]\$/, 'no hash in the history')
})
