// The documentation, run as a reader would run it: the shell examples of the
// README, docs/cli.md and docs/api.md, in order, against a service started
// the README's way (`npm start` in a copy of the checkout, embedded mode,
// free ports), each `# →` line checked against what its commands printed;
// and every relative link between the pages, anchors included, resolved.
import { spawn, type ChildProcess } from 'node:child_process'
import { execFileSync } from 'node:child_process'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import { cp, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, dirname, join, relative, resolve } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import tap, { test, type Test } from 'tap'
import { backends, createDatabase, freePort, PROJECT_DIR, waitForHealth } from '../helper.ts'
import { anchors, type CodeBlock, codeBlocks, expectations, matchEnd, relativeLinks, sourcePaths } from './readme/markdown.ts'

// A build (tsc) and a first start of the embedded database come before the
// first example, and each CLI example starts a process: about a minute on a
// quiet machine, over four at a load average of 20, hence twice the default budget.
tap.setTimeout(600_000)

/** The pages whose examples run, in the order a newcomer reads them. */
const WALKED_PAGES = ['README.md', 'docs/cli.md', 'docs/api.md']

function documentationPages (): string[] {
  return ['README.md', ...readdirSync(join(PROJECT_DIR, 'docs')).filter((name) => name.endsWith('.md')).map((name) => `docs/${name}`)]
}

test('every relative link of the documentation leads to a file, and to a heading there when it names one', async (t) => {
  for (const page of documentationPages()) {
    const text = readFileSync(join(PROJECT_DIR, page), 'utf8')
    for (const link of relativeLinks(text)) {
      const [path = '', anchor] = link.split('#')
      const target = path === '' ? join(PROJECT_DIR, page) : resolve(dirname(join(PROJECT_DIR, page)), path)
      const where = `${page} → ${link}`
      if (!existsSync(target)) {
        t.fail(`${where}: no file ${relative(PROJECT_DIR, target)}`)
        continue
      }
      if (anchor === undefined) continue
      t.ok(target.endsWith('.md') && anchors(readFileSync(target, 'utf8')).has(anchor), `${where}: a heading with this anchor`)
    }
  }
})

/** Whether a file of the project matches `path`, where `*` stands for any part of a name. */
function projectFileExists (path: string): boolean {
  if (!path.includes('*')) return existsSync(join(PROJECT_DIR, path))
  const folder = join(PROJECT_DIR, dirname(path))
  const literal = (part: string): string => part.replace(/[.*+?^$()|[\]{}\\]/g, '\\$&')
  const pattern = new RegExp('^' + basename(path).split('*').map(literal).join('.*') + '$')
  return existsSync(folder) && readdirSync(folder).some((name) => pattern.test(name))
}

test('every source file the documentation names exists', async (t) => {
  for (const page of documentationPages()) {
    for (const path of sourcePaths(readFileSync(join(PROJECT_DIR, page), 'utf8'))) {
      t.ok(projectFileExists(path), `${page} names ${path}`)
    }
  }
})

/** What the walk-through runs against: the checkout copy and the service's two URLs. */
interface RunningService {
  dir: string
  base: string
  admin: string
}

// Copied into the temporary checkout: what a fresh clone holds, without what
// a local run leaves behind (git-ignored) or what the copy links to.
const NOT_COPIED = new Set(['.git', 'node_modules', 'dist', 'data', 'keys', 'coverage', '.tap', '.env'])

/** A copy of the checkout in `dir`, node_modules linked. */
async function copyCheckout (dir: string): Promise<void> {
  await cp(PROJECT_DIR, dir, {
    recursive: true,
    filter: (source) => {
      const path = relative(PROJECT_DIR, source)
      // .ci/runtime: the Node.js binary CI installs, a hundred megabytes
      return source === PROJECT_DIR || (!NOT_COPIED.has(path.split('/')[0] ?? '') && path !== join('.ci', 'runtime'))
    }
  })
  await symlink(join(PROJECT_DIR, 'node_modules'), join(dir, 'node_modules'))
}

/** The environment of a reader's shell: nothing of the test runner's, no configuration of the service. */
function readerEnv (extra: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = { ...extra }
  for (const name of ['PATH', 'HOME', 'LANG', 'TMPDIR']) {
    const value = process.env[name]
    if (value !== undefined) env[name] = value
  }
  return env
}

/** Stops a process group we started (npm, its shell, node): SIGTERM, then SIGKILL if it lingers. */
async function stopGroup (child: ChildProcess, exited: Promise<unknown>): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return
  try { process.kill(-child.pid, 'SIGTERM') } catch { return /* already gone */ }
  const gone = await Promise.race([exited.then(() => true), sleep(15_000, false)])
  if (!gone) {
    try { process.kill(-child.pid, 'SIGKILL') } catch { /* already gone */ }
    await exited
  }
}

/** `npm start` in the copy, as the README says, on free ports; stopped at teardown. */
async function startService (t: Test, dir: string): Promise<RunningService | undefined> {
  const [port, adminPort] = [await freePort(), await freePort()]
  const child = spawn('npm', ['start'], {
    cwd: dir,
    detached: true, // its own process group, so that teardown stops npm, the shell and node together
    env: readerEnv({ SERVER_HOST: '127.0.0.1', SERVER_PORT: String(port), ADMIN_PORT: String(adminPort), SHUTDOWN_DELAY: '0' }),
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let output = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { output += chunk })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { output += chunk })
  const exited = new Promise((resolve) => child.on('close', resolve))
  t.teardown(async () => await stopGroup(child, exited))
  const base = `http://127.0.0.1:${port}`
  const status = await waitForHealth(base, () => child.exitCode === null, 240_000)
  t.equal(status, 200, '`npm start` builds and starts the service', { output: output.slice(-4000) })
  return status === 200 ? { dir, base, admin: `http://127.0.0.1:${adminPort}` } : undefined
}

const MARKER = '\u001eblock'

/**
 * One bash script for a page: its ```sh blocks in order, one shell state,
 * each announced by a marker line so that its output can be told apart.
 * `psql` blocks get `databaseUrl`, or are skipped without one.
 */
function pageScript (blocks: CodeBlock[], databaseUrl: string | undefined): string {
  const lines = ['set -euo pipefail', 'exec 2>&1']
  let databaseGiven = false
  blocks.forEach((block, index) => {
    lines.push(`printf '\\n${MARKER} ${index}\\n'`)
    const usesPsql = /\bpsql\b/.test(block.text)
    if (usesPsql && databaseUrl === undefined) {
      lines.push(': psql example skipped')
      return
    }
    if (usesPsql && !databaseGiven) {
      // A shell variable, not exported: the examples' own default would be the server's `postgres` database.
      lines.push(`DATABASE_URL='${databaseUrl ?? ''}'`)
      databaseGiven = true
    }
    lines.push(block.text)
  })
  lines.push(`printf '\\n${MARKER} end\\n'`)
  return lines.join('\n') + '\n'
}

/** The output of each block of a run, by block index; `end` present when the script ran to its end. */
function outputsByBlock (output: string): Map<string, string> {
  const parts = new Map<string, string>()
  const pieces = output.split(`\n${MARKER} `)
  for (const piece of pieces.slice(1)) {
    const newline = piece.indexOf('\n')
    parts.set(newline === -1 ? piece : piece.slice(0, newline), newline === -1 ? '' : piece.slice(newline + 1))
  }
  return parts
}

async function runScript (file: string, cwd: string, env: Record<string, string>): Promise<{ code: number | null, output: string }> {
  const child = spawn('bash', [file], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => { output += chunk })
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { output += chunk })
  const timer = setTimeout(() => child.kill('SIGKILL'), 150_000)
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
  clearTimeout(timer)
  return { code, output }
}

/** Checks the `# →` lines of each block against its output, in order. */
function checkBlocks (t: Test, page: string, blocks: CodeBlock[], outputs: Map<string, string>, skipped: (block: CodeBlock) => string | false): void {
  blocks.forEach((block, index) => {
    const where = `${page}:${block.line}`
    const reason = skipped(block)
    if (reason !== false) {
      t.pass(`${where}: its expectations`, { skip: reason })
      return
    }
    const output = outputs.get(String(index))
    if (output === undefined) return // the run stopped before it: reported by the caller
    let cursor = 0
    for (const expected of expectations(block)) {
      const end = matchEnd(output, expected, cursor)
      t.ok(end !== -1, `${where} prints ${expected}`, { block: block.text, output })
      if (end !== -1) cursor = end
    }
  })
}

/** Which of these tools the machine has on its PATH. */
function hasCommand (name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

async function walkPage (t: Test, service: RunningService, page: string, databaseUrl: string | undefined): Promise<void> {
  const blocks = codeBlocks(readFileSync(join(PROJECT_DIR, page), 'utf8')).filter((block) => block.language === 'sh')
  const script = join(service.dir, `walk-${basename(page, '.md')}.sh`)
  await writeFile(script, pageScript(blocks, databaseUrl))
  const { code, output } = await runScript(script, service.dir, readerEnv({ BASE: service.base, ADMIN: service.admin }))
  await rm(script)
  const outputs = outputsByBlock(output)
  // A block's marker is printed before it runs: the last one printed names the block that stopped the run.
  const lastStarted = Math.max(-1, ...[...outputs.keys()].map(Number).filter((index) => !Number.isNaN(index)))
  t.equal(code, 0, `${page}: every example runs (set -euo pipefail)`, {
    failedBlock: code === 0 ? undefined : blocks[lastStarted]?.text,
    output: output.slice(-4000)
  })
  t.ok(outputs.has('end'), `${page}: the run reaches its last example`)
  const noPsql = databaseUrl === undefined ? 'needs a PostgreSQL server and psql' : false
  checkBlocks(t, page, blocks, outputs, (block) => /\bpsql\b/.test(block.text) ? noPsql : false)
}

test('the shell examples of the README and of the CLI and API pages run, in order, and print what they say', async (t) => {
  // A short path: the control socket lives in ./data, and a socket path is limited to about 100 bytes.
  const dir = await mkdtemp(join(tmpdir(), 'ss-readme-'))
  // Registered before the service's own teardown: tap runs teardowns last first, so the service stops before its folder goes.
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  await copyCheckout(dir)
  const service = await startService(t, dir)
  if (service === undefined) return
  const psql = hasCommand('psql')
  // Under CI every example runs: the psql ones too (backends.ts already requires the server there).
  if (process.env.CI === 'true') t.ok(psql, 'psql is on the PATH, for the examples of the clients table')
  const databaseUrl = backends.postgres && psql ? await createDatabase(t) : undefined
  for (const page of WALKED_PAGES) {
    await t.test(page, async (t) => await walkPage(t, service, page, databaseUrl))
  }
})
