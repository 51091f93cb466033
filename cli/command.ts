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

/** A whole-number option of at least 1 (a page size, an id), or `fallback` when not given. */
export function wholeNumberOption (text: string | undefined, name: string, fallback: number | undefined, command: string): number | undefined {
  if (text === undefined) return fallback
  if (!/^\d{1,15}$/.test(text) || Number(text) < 1) throw usage(`--${name} must be a whole number, at least 1`, command)
  return Number(text)
}
