// The shape of a CLI command, and the argument checks that commands share.
import type { ParseArgsConfig } from 'node:util'
import { type CliIo, type Output, usage } from './io.ts'
import type { Settings } from '../plugins/config.ts'

export interface CommandContext {
  values: Record<string, unknown>
  positionals: string[]
  config: Settings
  out: Output
  io: CliIo
}

export interface Command {
  summary: string
  usage: string
  help: string
  options: NonNullable<ParseArgsConfig['options']>
  run: (context: CommandContext) => Promise<void>
}

/** A command's words (`clients create`) and what it does. */
export type CommandTable = Record<string, Command>

export const JSON_OPTION = { json: { type: 'boolean' as const } }

export function noPositionals (positionals: string[], command: string): void {
  if (positionals.length > 0) throw usage(`unexpected argument "${positionals[0] ?? ''}"`, command)
}
