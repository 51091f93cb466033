// The embedded mode as the README's quick start runs it: server.ts with only
// DATA_DIR, a client made with the CLI, a token over HTTP, SIGTERM.

import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import tap, { test } from 'tap'
import { CONTROL_SOCKET, LOCK_FILE } from '../storage/data-dir.ts'
import { basicAuth, decodeJwt, form, freePort, runEntry, ServerProcess, waitForHealth } from './helper.ts'
import type { TokenBody } from './embedded/apps.ts'

// Each test opens the embedded PostgreSQL on a new data directory, and its
// first start (initdb, then the migrations) takes several seconds on a busy
// machine: more than the default per-file budget allows for the whole file.
tap.setTimeout(300_000)

test('the README quick start: server.ts with only DATA_DIR, a client from the CLI, a token over HTTP, SIGTERM', async (t) => {
  // Not t.testdir(): the control socket the CLI uses lives in DATA_DIR, and a
  // Unix socket path is limited to about 100 bytes.
  const dir = await mkdtemp(join(tmpdir(), 'ss-embedded-'))
  const port = await freePort()
  const base = `http://127.0.0.1:${port}`

  // Registered before the process's own teardown: tap runs teardowns last
  // first, so the process goes before its folder does.
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const server = new ServerProcess(t, { DATA_DIR: dir, SERVER_PORT: String(port), SERVER_HOST: '127.0.0.1' })

  // A first start creates the database (initdb in WebAssembly): seconds when
  // the machine is quiet, a minute and more when three test files share two cores.
  const healthStatus = await waitForHealth(base, () => server.running, 120_000)
  t.equal(healthStatus, 200, 'the server answers GET /health with 200', { stderr: server.stderr, stdout: server.stdout })
  if (healthStatus !== 200) return
  t.ok(existsSync(join(dir, CONTROL_SOCKET)), 'the running server listens on its control socket in DATA_DIR')

  const created = await runEntry('cli/index.ts', ['clients', 'create', '--name', 'demo', '--json'], { env: { DATA_DIR: dir } })
  t.equal(created.code, 0, 'the CLI creates a client while the server runs', { stderr: created.stderr })
  if (created.code !== 0) return
  const client = JSON.parse(created.stdout) as { client_id: string, client_secret: string, name: string }
  t.equal(client.name, 'demo', 'the CLI prints the client it created')
  t.type(client.client_id, 'string', 'with its client_id')
  t.type(client.client_secret, 'string', 'and its secret')

  const tokenRes = await fetch(`${base}/oauth/token`, {
    method: 'POST',
    headers: { authorization: basicAuth(client.client_id, client.client_secret), 'content-type': 'application/x-www-form-urlencoded' },
    body: form({ grant_type: 'client_credentials' })
  })
  t.equal(tokenRes.status, 200, 'the running server issues a token to the client the CLI created')
  const body = await tokenRes.json() as TokenBody
  t.equal(body.token_type, 'Bearer', 'token_type Bearer')
  t.equal(decodeJwt(body.access_token).payload.sub, client.client_id, 'the access token names the client')

  server.child.kill('SIGTERM')
  const exit = await server.exitWithin(15_000)
  t.strictSame(exit, { code: 0, signal: null }, 'exit code 0 after SIGTERM', { stderr: server.stderr })
  t.equal(server.stderr, '', 'nothing on stderr')
  t.notOk(existsSync(join(dir, LOCK_FILE)), `the server gave back ${LOCK_FILE} on exit`)
})
