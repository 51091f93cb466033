// A command's options and positionals, checked here rather than by parseArgs'
// strict mode: its messages are advice about parseArgs itself (place the
// argument after '--', ...), several lines long, and it refuses a negative
// number as an option's value (`--rate-limit -5` is "ambiguous"), so the
// operator never learns what is wrong with the number.
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { usage } from './io.ts'

type OptionSpecs = NonNullable<ParseArgsConfig['options']>

export interface CommandArguments {
  values: Record<string, unknown>
  positionals: string[]
}

interface OptionToken {
  name: string
  rawName: string
  value?: string | undefined
  inlineValue?: boolean | undefined
}

/** A number (`-5`, `-1.5`) is a value; any other word starting with a dash is an option. */
const NEGATIVE_NUMBER = /^-\d/

// Each message names the option as written, never the value that came with
// it: a mistyped option may carry a secret.
function checkOption (token: OptionToken, options: OptionSpecs, command: string): void {
  const spec = options[token.name]
  if (spec === undefined) throw usage(`unknown option ${token.rawName}`, command)
  if (spec.type === 'boolean') {
    if (token.value !== undefined) throw usage(`${token.rawName} takes no value`, command)
    return
  }
  if (token.value === undefined) throw usage(`${token.rawName} needs a value`, command)
  // `--name --json`: the value forgotten, the next option taken for it.
  if (token.inlineValue === false && token.value.startsWith('-') && !NEGATIVE_NUMBER.test(token.value)) {
    throw usage(`${token.rawName} needs a value (one that starts with "-" is written ${token.rawName}=<value>)`, command)
  }
}

/** Parses `args` against a command's options; anything wrong is a one-line usage error naming `command`. */
export function commandArguments (args: string[], options: OptionSpecs, command: string): CommandArguments {
  // Not strict: parseArgs takes the word after a string option as its value
  // whatever it starts with, and reports every option; the checks are ours.
  const { values, positionals, tokens } = parseArgs({ args, options, allowPositionals: true, strict: false, tokens: true })
  for (const token of tokens) {
    if (token.kind === 'option') checkOption(token, options, command)
  }
  return { values, positionals }
}
