// PostgreSQL stops under a running service: clients it has cached keep
// getting tokens, others get 503 temporarily_unavailable, and the service
// recovers by itself when PostgreSQL returns. Runs a PostgreSQL server of its
// own (initdb into a temporary folder, on a free port), never the shared one.
import { execFile } from 'node:child_process'
import { existsSync, readdirSync } from 'node:fs'
import { chown, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { promisify } from 'node:util'
import { test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { basicAuth, build, form, FORM, freePort, insertClient, needs, type TestContext } from './helper.ts'

const run = promisify(execFile)

function postgresBin (): string | undefined {
  const root = '/usr/lib/postgresql'
  if (!existsSync(root)) return undefined
  const version = readdirSync(root).sort((a, b) => Number(b) - Number(a))[0]
  const bin = version === undefined ? undefined : join(root, version, 'bin')
  return bin !== undefined && existsSync(join(bin, 'initdb')) ? bin : undefined
}

const BIN = postgresBin()
// initdb refuses to run as root: as root, the server runs as the postgres user.
const AS_ROOT = process.getuid?.() === 0

/** A PostgreSQL server of this test only, stopped and removed at teardown. */
class PrivatePostgres {
  readonly port: number
  readonly dir: string

  private constructor (port: number, dir: string) {
    this.port = port
    this.dir = dir
  }

  static async create (t: TestContext): Promise<PrivatePostgres> {
    const dir = await mkdtemp(join(tmpdir(), 'ss-pg-'))
    const server = new PrivatePostgres(await freePort(), dir)
    t.teardown(async () => {
      await server.stop().catch(() => {})
      await rm(dir, { recursive: true, force: true })
    })
    if (AS_ROOT) {
      const uid = Number((await run('id', ['-u', 'postgres'])).stdout)
      const gid = Number((await run('id', ['-g', 'postgres'])).stdout)
      await chown(dir, uid, gid)
    }
    await server.tool('initdb', ['-D', join(dir, 'data'), '-U', 'postgres', '-A', 'trust', '--no-sync'])
    return server
  }

  get url (): string {
    return `postgres://postgres@127.0.0.1:${this.port}/postgres`
  }

  private async asPostgres (command: string, args: string[] = []): Promise<void> {
    await run('runuser', ['-u', 'postgres', '--', command, ...args], { timeout: 60_000 })
  }

  private async tool (name: string, args: string[]): Promise<void> {
    const path = join(BIN ?? '', name)
    if (AS_ROOT) await this.asPostgres(path, args)
    else await run(path, args, { timeout: 60_000 })
  }

  async start (): Promise<void> {
    await this.tool('pg_ctl', ['-D', join(this.dir, 'data'), '-w', '-t', '30', '-l', join(this.dir, 'log'),
      '-o', `-p ${this.port} -c listen_addresses=127.0.0.1 -k ${this.dir} -c fsync=off`, 'start'])
  }

  async stop (): Promise<void> {
    await this.tool('pg_ctl', ['-D', join(this.dir, 'data'), '-w', '-t', '30', '-m', 'fast', 'stop'])
  }
}

async function token (app: FastifyInstance, clientId: string, secret: string): Promise<LightMyRequestResponse> {
  return await app.inject({
    method: 'POST',
    url: '/oauth/token',
    headers: { ...FORM, authorization: basicAuth(clientId, secret) },
    payload: form({ grant_type: 'client_credentials' })
  })
}

const skip = needs.redis || (BIN === undefined ? 'needs the PostgreSQL server binaries (initdb, pg_ctl)' : false)

test('PostgreSQL stops and returns: cached clients keep getting tokens, others get 503, then all recover', { skip }, async (t) => {
  const postgres = await PrivatePostgres.create(t)
  await postgres.start()
  const { app } = await build(t, { databaseUrl: postgres.url, env: { DEPENDENCY_TIMEOUT: '1s', CLIENT_CACHE_TTL: '300s' } })
  await insertClient(postgres.url, { id: 'svc-cached', secret: 'cached-secret' })
  await insertClient(postgres.url, { id: 'svc-cold', secret: 'cold-secret' })
  t.equal((await token(app, 'svc-cached', 'cached-secret')).statusCode, 200, 'a first token: the client is now cached')

  await postgres.stop()

  const cached = await token(app, 'svc-cached', 'cached-secret')
  t.equal(cached.statusCode, 200, 'with PostgreSQL down, the cached client still gets tokens')
  const started = Date.now()
  const cold = await token(app, 'svc-cold', 'cold-secret')
  const ms = Date.now() - started
  t.equal(cold.statusCode, 503, 'a client that is not cached gets 503')
  t.strictSame(Object.keys(cold.json()).sort(), ['error', 'error_description'])
  t.equal(cold.json().error, 'temporarily_unavailable')
  t.match(cold.headers['retry-after'], /^[1-9]\d*$/, 'with Retry-After')
  t.notMatch(cold.body, /ECONNREFUSED|\bat \S+ \(/, 'and no low-level cause or stack trace')
  t.ok(ms < 5000, `answered in bounded time (${ms} ms with DEPENDENCY_TIMEOUT=1s)`)
  const health = await app.inject({ method: 'GET', url: '/health' })
  t.equal(health.statusCode, 503, '/health says so')
  t.match(health.json(), { postgresql: { status: 'down' }, redis: { status: 'up' } })

  await postgres.start()

  const deadline = Date.now() + 20_000
  let recovered = await token(app, 'svc-cold', 'cold-secret')
  while (recovered.statusCode !== 200 && Date.now() < deadline) {
    await sleep(250)
    recovered = await token(app, 'svc-cold', 'cold-secret')
  }
  t.equal(recovered.statusCode, 200, 'once PostgreSQL is back, the other client gets tokens too, without a restart')
  t.equal((await app.inject({ method: 'GET', url: '/health' })).statusCode, 200, '/health is 200 again')
})
