// `keys generate --out` where the key directory cannot be made or written:
// exit 1 with one line that names the directory (or file) and the reason.
import { readdirSync, symlinkSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'tap'
import { runEntry } from './helper.ts'
import { cli, failed, STACK_TRACE } from './helpers/cli.ts'

const LINUX = process.platform === 'linux' ? false : 'needs /proc and /sys (Linux)'
const generate = (out: string): string[] => ['keys', 'generate', '--algorithm', 'ES256', '--out', out]

test('a file, a path through a file, a dangling link: exit 1 naming the path and why', async (t) => {
  const root = t.testdir({ work: {}, 'a-file': 'not a directory\n' })
  const cwd = join(root, 'work')
  symlinkSync(join(root, 'nowhere'), join(root, 'dangling'))
  const cases: Array<[string, string]> = [
    ['a-file', `session-service: ${join(root, 'a-file')} exists and is not a directory; choose another --out`],
    ['a-file/keys', `session-service: cannot create the key directory ${join(root, 'a-file', 'keys')}: ENOTDIR: not a directory`],
    ['dangling/keys', `session-service: ${join(root, 'dangling')} exists and is not a directory; choose another --out`]
  ]
  for (const [out, line] of cases) {
    t.equal(failed(t, await cli(t, generate(join(root, out)), { cwd }), 1, `--out ${out}`), line, `--out ${out}`)
  }
  t.strictSame(readdirSync(root).sort(), ['a-file', 'dangling', 'work'], 'nothing created beside them')
  t.strictSame(readdirSync(cwd), [], 'nothing written into the working folder')
})

test('a directory that takes no files, and one that takes no new directory: exit 1 naming it', { skip: LINUX }, async (t) => {
  const cwd = t.testdir({})
  // Root is refused by the file system itself; another user by permissions first.
  t.match(failed(t, await cli(t, generate('/proc'), { cwd }), 1, '--out /proc'),
    /^session-service: cannot write \/proc\/private\.pem: (ENOENT: no such file or directory|EACCES: permission denied)$/, '/proc: the file that cannot be written')
  t.match(failed(t, await cli(t, generate('/sys/nope'), { cwd }), 1, '--out /sys/nope'),
    /^session-service: cannot create the key directory \/sys\/nope: (EPERM: operation not permitted|EACCES: permission denied|EROFS: read-only file system)$/, '/sys/nope: refused by the system')
  t.strictSame(readdirSync(cwd), [], 'nothing written into the working folder')
})

// Under /proc a directory exists yet refuses a new one with ENOENT, and
// Node's recursive mkdir retries that for ever. Each case runs as a process
// of its own, one after the other (a loaded machine starts them slowly), so
// that a hang is killed and fails the test instead of stopping this file.
test('--out under /proc, where a recursive mkdir never returns: exit 1 naming the directory', { skip: LINUX }, async (t) => {
  const cwd = t.testdir({})
  const refusal = /^session-service: cannot create the key directory \/proc\/nope: (\/proc accepts no new directory|EACCES: permission denied)$/
  for (const out of ['/proc/nope', '/proc/nope/deeper']) {
    const res = await runEntry('cli/index.ts', generate(out), { env: {}, cwd, timeoutMs: 150_000 })
    t.equal(res.signal, null, `--out ${out}: the process ends by itself`)
    t.notMatch(res.stderr, STACK_TRACE, `--out ${out}: no stack trace`)
    t.match(failed(t, res, 1, `--out ${out}`), refusal, `--out ${out}: /proc/nope, and why it cannot be made`)
  }
  t.strictSame(readdirSync(cwd), [], 'nothing written into the working folder')
})
