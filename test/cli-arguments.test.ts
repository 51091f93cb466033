// The operator's command line refusing arguments it cannot use: each refusal
// is one line on stderr that says what is wrong in the operator's terms (the
// option as written, the number it needs, the commands there are), exit 2,
// and nothing done. All are refused before any database is opened, so these
// run with no settings at all, in a working folder that must stay empty.
import { readdirSync } from 'node:fs'
import { test, type Test } from 'tap'
import { cli, failed, succeeded } from './helpers/cli.ts'

const CLIENTS_COMMANDS = 'create, list, show, update, rotate-secret, events, disable, enable, delete'

/** Runs each case in a fresh empty folder; asserts exit 2, the exact line, and no file written. */
async function refusedWith (t: Test, cases: Array<[string[], string]>): Promise<void> {
  const cwd = t.testdir({})
  for (const [args, line] of cases) {
    const res = await cli(t, args, { cwd })
    t.equal(failed(t, res, 2, args.join(' ')), line, args.join(' '))
  }
  t.strictSame(readdirSync(cwd), [], 'nothing written: no database opened, no key directory made')
}

test('a negative number for a numeric option gets the option\'s own rule, written either way', async (t) => {
  const rateLimit = '--rate-limit must be a whole number of requests per minute, at least 1 (or "default")'
  await refusedWith(t, [
    [['clients', 'create', '--name', 'x', '--rate-limit', '-5'], `session-service: ${rateLimit} (see session-service clients create --help)`],
    [['clients', 'create', '--name', 'x', '--rate-limit=-5'], `session-service: ${rateLimit} (see session-service clients create --help)`],
    [['clients', 'update', 'svc', '--rate-limit', '-5'], `session-service: ${rateLimit} (see session-service clients update --help)`],
    [['clients', 'events', 'svc', '--limit', '-3'], 'session-service: --limit must be a whole number, at least 1 (see session-service clients events --help)'],
    [['clients', 'events', 'svc', '--limit=-3'], 'session-service: --limit must be a whole number, at least 1 (see session-service clients events --help)'],
    [['clients', 'events', 'svc', '--before', '-1'], 'session-service: --before must be a whole number, at least 1 (see session-service clients events --help)'],
    [['clients', 'rotate-secret', 'svc', '--grace', '-1h'], 'session-service: --grace must be a duration (24h, 90m, 3600s, 7d, 500ms) or "none" (see session-service clients rotate-secret --help)']
  ])
})

test('an unknown option is named as written, without its value, in one line', async (t) => {
  await refusedWith(t, [
    [['clients', 'create', '--name', 'x', '--foo'], 'session-service: unknown option --foo (see session-service clients create --help)'],
    [['clients', 'create', '--name', 'x', '--secret=hunter2-hunter2-hunter2'], 'session-service: unknown option --secret (see session-service clients create --help)'],
    [['clients', 'list', '-x'], 'session-service: unknown option -x (see session-service clients list --help)'],
    [['keys', 'generate', '--output', 'k'], 'session-service: unknown option --output (see session-service keys generate --help)'],
    [['--foo=bar'], 'session-service: unknown option --foo (see session-service --help)']
  ])
})

test('an option without its value, or a switch with one, is refused in one line', async (t) => {
  await refusedWith(t, [
    [['clients', 'create', '--name'], 'session-service: --name needs a value (see session-service clients create --help)'],
    [['clients', 'create', '--name', '--json'], 'session-service: --name needs a value (one that starts with "-" is written --name=<value>) (see session-service clients create --help)'],
    [['clients', 'list', '--json=yes'], 'session-service: --json takes no value (see session-service clients list --help)']
  ])
})

test('a command group without its command lists the commands of the group', async (t) => {
  await refusedWith(t, [
    [['clients'], `session-service: clients needs a command: ${CLIENTS_COMMANDS} (see session-service clients --help)`],
    [['clients', '--json'], `session-service: clients needs a command: ${CLIENTS_COMMANDS} (see session-service clients --help)`],
    [['keys'], 'session-service: keys needs a command: generate, list, rotate, retire, history (see session-service keys --help)'],
    [['clients', 'frobnicate'], `session-service: unknown command "clients frobnicate"; the clients commands are ${CLIENTS_COMMANDS} (see session-service clients --help)`]
  ])
})

test('clients --help prints the clients commands and exits 0', async (t) => {
  const cwd = t.testdir({})
  const res = await cli(t, ['clients', '--help'], { cwd })
  succeeded(t, res, 'clients --help')
  const lines = res.stdout.trimEnd().split('\n')
  t.equal(lines[0], 'Usage: session-service clients <command> [options]', 'the group\'s usage')
  t.strictSame(lines.slice(2).map((line) => line.trim().split(/\s{2,}/)[0]), CLIENTS_COMMANDS.split(', ').map((name) => `clients ${name}`), 'one line per clients command')
  t.match(res.stdout, /^ {2}clients create {10}register a client/m, 'each with its summary')
})
