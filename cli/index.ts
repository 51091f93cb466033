#!/usr/bin/env node
// session-service: the operator's command line. Manages clients and keys
// against the configured database: the PostgreSQL server of DATABASE_URL, or
// the embedded one in DATA_DIR (through the running service when there is
// one, since the embedded database admits a single process).
import { resolve } from 'node:path'
import { loadSettings } from '../plugins/config.ts'
import { commandArguments } from './arguments.ts'
import type { Command, CommandTable } from './command.ts'
import { clientsCommands } from './commands/clients.ts'
import { keysCommands } from './commands/keys.ts'
import { migrateCommands } from './commands/migrate.ts'
import { CliError, output, PROGRAM, processIo, type CliIo } from './io.ts'

const COMMANDS: CommandTable = { ...clientsCommands, ...keysCommands, ...migrateCommands }

function mainHelp (): string {
  const width = Math.max(...Object.keys(COMMANDS).map((name) => name.length))
  return [
    `Usage: ${PROGRAM} <command> [options]`,
    '',
    'Commands:',
    ...Object.entries(COMMANDS).map(([name, command]) => `  ${name.padEnd(width)}  ${command.summary}`),
    '',
    `Run \`${PROGRAM} <command> --help\` for a command's options.`,
    '',
    'Database: DATABASE_URL when set, else the embedded database in DATA_DIR',
    '(default ./data; through the running service when one holds it).',
    'REDIS_URL and REDIS_KEY_PREFIX: changes reach running instances at once.',
    'Settings are read from the environment, then from a .env file.'
  ].join('\n')
}

/** The commands of a group (`clients`): their second words. */
function groupCommands (group: string): string[] {
  return Object.keys(COMMANDS).filter((command) => command.startsWith(`${group} `)).map((command) => command.slice(group.length + 1))
}

function groupHelp (group: string, members: string[]): string {
  const lines = members.map((member) => `  ${`${group} ${member}`.padEnd(22)}  ${COMMANDS[`${group} ${member}`]?.summary ?? ''}`)
  return `Usage: ${PROGRAM} ${group} <command> [options]\n\n${lines.join('\n')}\n`
}

// No command matched: the program's help, a group's commands, or an unknown
// command or option. An option is named without its value (it may be a secret).
function withoutCommand (argv: string[], words: string[], wantsHelp: boolean, io: CliIo): number {
  if (argv.length === 0 || (wantsHelp && words.length === 0)) {
    io.stdout(`${mainHelp()}\n`)
    return argv.length === 0 ? 2 : 0
  }
  const group = words[0]
  const members = groupCommands(group ?? '')
  if (group === undefined || members.length === 0) {
    const asked = group === undefined ? `option ${(argv[0] ?? '').split('=')[0] ?? ''}` : `command "${group}"`
    io.stderr(`${PROGRAM}: unknown ${asked} (see ${PROGRAM} --help)\n`)
    return 2
  }
  if (wantsHelp && words.length === 1) {
    io.stdout(groupHelp(group, members))
    return 0
  }
  // `clients` alone, or `clients frobnicate`: say which commands there are.
  const problem = words.length === 1 ? `${group} needs a command:` : `unknown command "${group} ${words[1] ?? ''}"; the ${group} commands are`
  io.stderr(`${PROGRAM}: ${problem} ${members.join(', ')} (see ${PROGRAM} ${group} --help)\n`)
  return 2
}

async function runCommand (name: string, command: Command, argv: string[], io: CliIo): Promise<number> {
  // Options may come before or after the command's words: drop the words
  // (their first occurrence) and parse the rest.
  const rest = [...argv]
  for (const word of name.split(' ')) rest.splice(rest.indexOf(word), 1)
  try {
    const parsed = commandArguments(rest, command.options, name)
    const out = output(parsed.values.json === true, io)
    await command.run({ ...parsed, config: loadSettings(io.env, { dotenv: true, cwd: io.cwd }), out, io })
    return 0
  } catch (err) {
    const error = err instanceof CliError ? err : new CliError(`${(err as Error).message}`)
    io.stderr(`${PROGRAM}: ${error.message.split('\n')[0] ?? ''}\n`)
    return error.exitCode
  }
}

/** Runs the command line; returns the exit code. */
export async function main (argv: string[], io: CliIo): Promise<number> {
  const words = argv.filter((arg) => !arg.startsWith('-'))
  const wantsHelp = argv.includes('--help') || argv.includes('-h')
  const name = [`${words[0] ?? ''} ${words[1] ?? ''}`, words[0] ?? ''].find((candidate) => COMMANDS[candidate] !== undefined)
  if (name === undefined) return withoutCommand(argv, words, wantsHelp, io)
  const command = COMMANDS[name] as Command
  if (wantsHelp) {
    io.stdout(`Usage: ${PROGRAM} ${command.usage}\n\n${command.help}\n`)
    return 0
  }
  return await runCommand(name, command, argv, io)
}

// Run when executed (the bin entry, `node dist/cli/index.js`), not when imported.
if (process.argv[1] !== undefined && resolve(process.argv[1]).replace(/\.ts$/, '.js') === resolve(import.meta.filename).replace(/\.ts$/, '.js')) {
  // Keys, the embedded database and the lock are for this user only.
  process.umask(0o077)
  process.exitCode = await main(process.argv.slice(2), processIo)
}
