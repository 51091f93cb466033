// The operator's command line: help, usage errors, an unreachable database
// and `keys generate`, run in this process through main(argv, io); then a few
// runs as an operator runs it, a child process of the bin entry, where the
// process boundary itself is what is checked (exit codes, output, umask).
import { createPublicKey } from 'node:crypto'
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { test, type Test } from 'tap'
import { calculateJwkThumbprint } from 'jose'
import { loadConfig } from '../plugins/config.ts'
import { publicJwk } from '../plugins/keys.ts'
import { freePort, runEntry, type RunResult } from './helper.ts'
import { cli, COMMANDS, failed, parsed, STACK_TRACE, succeeded } from './helpers/cli.ts'

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
  t.equal(failed(t, bogus, 2, 'clients list --bogus'), 'session-service: unknown option --bogus (see session-service clients list --help)', 'the message names the option and where to look')
  t.equal(failed(t, noId, 2, 'clients show without an id'), 'session-service: give exactly one client id (see session-service clients show --help)', 'the message asks for the id')
})

test('an unreachable PostgreSQL server: exit 1 and one line, soon', async (t) => {
  const cwd = t.testdir({})
  const port = await freePort()
  const res = await cli(t, ['clients', 'list'], { env: { DATABASE_URL: `postgres://postgres@127.0.0.1:${port}/postgres` }, cwd })
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
    t.equal(config?.publicKey === undefined ? undefined : publicJwk(config.publicKey, algorithm).kid, printed.kid, 'and publishes it under the kid printed')

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

// ---------------------------------------------------------------------------
// The bin entry, as a process of its own

/** Runs `node cli/index.ts <args>` as a child process with exactly `env`. */
async function spawned (t: Test, args: string[], cwd: string): Promise<RunResult> {
  const res = await runEntry('cli/index.ts', args, { env: {}, cwd })
  t.notMatch(`${res.stdout}\n${res.stderr}`, STACK_TRACE, `${args.join(' ')}: no stack trace from the process`)
  return res
}

test('the bin entry, run as a process: its exit codes, its output and its owner-only files', async (t) => {
  const root = t.testdir({ work: {} })
  const cwd = join(root, 'work')
  const out = join(root, 'keys')
  const [help, none, unknown, generated] = await Promise.all([
    spawned(t, ['--help'], cwd),
    spawned(t, [], cwd),
    spawned(t, ['frobnicate'], cwd),
    spawned(t, ['keys', 'generate', '--algorithm', 'ES256', '--out', out, '--json'], cwd)
  ])
  succeeded(t, help, 'the process with --help')
  t.match(help.stdout, /^Usage: session-service <command> \[options\]\n/, '--help: the program\'s usage')
  t.equal(none.code, 2, 'no arguments: the process exits 2')
  t.match(none.stdout, /^Usage: session-service <command> \[options\]\n/, 'no arguments: the usage on stdout')
  t.equal(failed(t, unknown, 2, 'the process with an unknown command'), 'session-service: unknown command "frobnicate" (see session-service --help)', 'the message names the command')

  succeeded(t, generated, 'the process with keys generate --json')
  t.match(parsed(t, generated, 'keys generate --json'), { algorithm: 'ES256', private_key: join(out, 'private.pem'), public_key: join(out, 'public.pem') }, 'the algorithm and both paths')
  t.equal(statSync(out).mode & 0o777, 0o700, 'the key folder is its owner\'s only (the process umask)')
  t.equal(statSync(join(out, 'private.pem')).mode & 0o777, 0o600, 'private.pem is readable by its owner only')

  const again = await spawned(t, ['keys', 'generate', '--out', out], cwd)
  t.match(failed(t, again, 1, 'the process refusing to overwrite a key'), /private\.pem exists/, 'exit 1 with the reason')
  t.strictSame(readdirSync(cwd), [], 'nothing written into the working folder')
})
