// `npm run dev` as a person runs it on a fresh clone: no configuration but
// the ports (embedded database in ./data), the TypeScript compiler and the
// service in watch mode. The project is copied to a folder of its own (its
// node_modules linked), so that the test's edit of a source file and the data
// the service writes never touch the repository.
import { spawn, type ChildProcess } from 'node:child_process'
import { cpSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import { basicAuth, freePort, PROJECT_DIR, pollUntil, waitForHealth } from '../helper.ts'

// What a clone has, and what the build makes or the service writes, which it has not.
const NOT_IN_A_CLONE = new Set(['node_modules', '.git', 'dist', 'data', 'coverage', '.tap', '.env', 'keys', 'test'])

function copyOfTheProject (): string {
  const dir = mkdtempSync(join(tmpdir(), 'session-service-dev-'))
  cpSync(PROJECT_DIR, dir, {
    recursive: true,
    filter: (source) => source === PROJECT_DIR || !NOT_IN_A_CLONE.has(source.slice(PROJECT_DIR.length + 1).split('/')[0] ?? '')
  })
  symlinkSync(join(PROJECT_DIR, 'node_modules'), join(dir, 'node_modules'))
  return dir
}

/** `npm run dev` and everything it starts: one process group, killed whole at teardown if still there. */
class DevRun {
  readonly child: ChildProcess
  output = ''

  constructor (t: Test, cwd: string, env: Record<string, string>) {
    this.child = spawn('npm', ['run', 'dev'], { cwd, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] })
    this.child.stdout?.setEncoding('utf8').on('data', (chunk: string) => { this.output += chunk })
    this.child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { this.output += chunk })
    // Before the folder it runs in is removed.
    t.teardown(async () => {
      if (this.groupAlive()) this.signalGroup('SIGKILL')
      await pollUntil(async () => this.groupAlive(), (alive) => !alive, 10_000)
      rmSync(cwd, { recursive: true, force: true })
    })
  }

  get running (): boolean {
    return this.child.exitCode === null && this.child.signalCode === null
  }

  signalGroup (signal: NodeJS.Signals): void {
    process.kill(-(this.child.pid ?? 0), signal)
  }

  groupAlive (): boolean {
    try {
      process.kill(-(this.child.pid ?? 0), 0)
      return true
    } catch {
      return false
    }
  }

  /** The service's log lines (pino JSON, prefixed by concurrently with the command's name). */
  serviceLines (): Array<Record<string, unknown>> {
    return this.output.split('\n').filter((line) => line.startsWith('[app] {'))
      .map((line) => JSON.parse(line.slice('[app] '.length)) as Record<string, unknown>)
  }

  /** The pid of each process that opened the public listener, in order. */
  servingPids (): number[] {
    return this.serviceLines().filter((line) => String(line.msg).startsWith('Server listening at http://127.0.0.1')).map((line) => Number(line.pid))
  }
}

function processAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

async function tokenStatus (base: string, clientId: string, secret: string): Promise<number> {
  const res = await fetch(`${base}/oauth/token`, {
    method: 'POST',
    headers: { authorization: basicAuth(clientId, secret), 'content-type': 'application/x-www-form-urlencoded' },
    body: 'grant_type=client_credentials'
  })
  await res.body?.cancel()
  return res.status
}

/** The CLI command the start guide prints, run beside the service. */
async function createClientWithTheCli (t: Test, cwd: string, env: Record<string, string>, command: string): Promise<{ client_id: string, client_secret: string }> {
  const [program = '', ...args] = command.split(' ')
  const cli = spawn(program, [...args, '--json'], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  cli.stdout.setEncoding('utf8').on('data', (chunk: string) => { stdout += chunk })
  cli.stderr.setEncoding('utf8').on('data', (chunk: string) => { stderr += chunk })
  const code = await new Promise((resolve) => cli.on('close', resolve))
  t.equal(code, 0, `the CLI created a client (${stderr})`)
  return JSON.parse(stdout) as { client_id: string, client_secret: string }
}

test('npm run dev on a fresh clone: serves, keeps its process while it writes its data, serves a source change, stops whole', async (t) => {
  const dir = copyOfTheProject()
  const port = await freePort()
  const adminPort = await freePort()
  const base = `http://127.0.0.1:${port}`
  // SERVER_PORT from .env (the service reads it), the rest from the environment.
  writeFileSync(join(dir, '.env'), `SERVER_PORT=${port}\n`)
  const env = {
    // npm and the service on the node that runs this test
    PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ''}`,
    HOME: process.env.HOME ?? dir,
    SERVER_HOST: '127.0.0.1',
    ADMIN_PORT: String(adminPort)
  }
  const dev = new DevRun(t, dir, env)

  // A build from nothing and the embedded database's first start: a minute
  // on an idle machine, more when the tests share it.
  const started = Date.now()
  const status = await waitForHealth(base, () => dev.running, 240_000)
  t.equal(status, 200, `GET /health answers 200 after ${Date.now() - started} ms`, status === 200 ? {} : { output: dev.output.slice(-4000) })
  const [firstPid = 0] = dev.servingPids()

  const guide = dev.serviceLines().find((line) => typeof line.tokenEndpoint === 'string')
  t.match(guide, {
    tokenEndpoint: `http://localhost:${port}/oauth/token`,
    apiDocs: `http://127.0.0.1:${adminPort}/docs`,
    createClient: 'npm run -s cli -- clients create --name demo --scope read'
  }, 'the start guide names the ports in use and the npm form of the CLI')
  const docs = await fetch(`http://127.0.0.1:${adminPort}/docs`)
  t.equal(docs.status, 200, 'the admin listener is open: the API docs answer')
  await docs.body?.cancel()

  // The service writes its database in ./data (here through the CLI's call
  // to it): none of that restarts it.
  const client = await createClientWithTheCli(t, dir, env, String(guide?.createClient))
  t.equal(await tokenStatus(base, client.client_id, client.client_secret), 200, 'a token for the client the CLI created')
  await sleep(3000)
  t.strictSame(dev.servingPids(), [firstPid], 'one process has served all along')
  t.ok(processAlive(firstPid), 'and it still runs')

  // A source change: the compiler writes dist/, the watcher restarts the service.
  const health = join(dir, 'routes', 'public', 'health.ts')
  const source = readFileSync(health, 'utf8')
  const anchor = "reply.header('cache-control', 'no-store')"
  t.ok(source.includes(anchor), 'the edited line is in routes/public/health.ts')
  writeFileSync(health, source.replace(anchor, `${anchor}.header('x-edited', 'yes')`))
  const edited = Date.now()
  const changed = await pollUntil(async () => await fetch(`${base}/health`).then((res) => res.headers.get('x-edited'), () => null), (value) => value === 'yes', 120_000, 250)
  t.equal(changed, 'yes', `the change is served ${Date.now() - edited} ms after the edit`)
  const pids = dev.servingPids()
  t.equal(pids.length, 2, 'one restart for one edit')
  t.notOk(processAlive(firstPid), 'the previous process has exited')
  t.equal(await tokenStatus(base, client.client_id, client.client_secret), 200, 'the new process holds the database: the same client gets a token')

  dev.signalGroup('SIGTERM')
  const gone = await pollUntil(async () => dev.groupAlive(), (alive) => !alive, 30_000, 100)
  t.notOk(gone, 'SIGTERM to the group: nothing of it is left running')
})
