// What a CLI command reads and writes, passed in rather than taken from the
// process: the bin entry gives it the process's streams and environment,
// tests give it strings and buffers, and both run the same code.
import type { Readable } from 'node:stream'

export const PROGRAM = 'session-service'

export interface CliIo {
  /** the service settings (the process environment, for the bin entry) */
  env: Record<string, string | undefined>
  /** standard input: a stream, or its whole content */
  stdin: Readable | string
  stdout: (text: string) => void
  stderr: (text: string) => void
  /** where relative paths (DATA_DIR, --out, .env) are resolved */
  cwd: string
}

/** The io of the running process. */
export const processIo: CliIo = {
  env: process.env,
  stdin: process.stdin,
  stdout: (text) => { process.stdout.write(text) },
  stderr: (text) => { process.stderr.write(text) },
  cwd: process.cwd()
}

/** A failure the operator can act on: one line on stderr, exit 1 (2 for usage). */
export class CliError extends Error {
  readonly exitCode: number
  constructor (message: string, exitCode = 1) {
    super(message)
    this.exitCode = exitCode
  }
}

export const usage = (message: string, command: string): CliError => new CliError(`${message} (see ${PROGRAM} ${command} --help)`, 2)

/** Standard input to its end, as text. */
export async function readInput (io: CliIo): Promise<string> {
  if (typeof io.stdin === 'string') return io.stdin
  const chunks: Buffer[] = []
  for await (const chunk of io.stdin) chunks.push(typeof chunk === 'string' ? Buffer.from(chunk) : chunk as Buffer)
  return Buffer.concat(chunks).toString('utf8')
}

/** How a command speaks: text for people, or one JSON document with --json. */
export interface Output {
  json: boolean
  print: (text: string) => void
  note: (text: string) => void
  data: (value: unknown) => void
}

export function output (json: boolean, io: CliIo): Output {
  return {
    json,
    print: (text) => { if (!json) io.stdout(`${text}\n`) },
    note: (text) => { io.stderr(`${PROGRAM}: ${text}\n`) },
    data: (value) => { io.stdout(`${JSON.stringify(value, null, 2)}\n`) }
  }
}

/** Rows of cells in aligned columns, two spaces apart; the first row is the header. */
export function printTable (out: Output, rows: string[][]): void {
  const widths = rows[0]?.map((_, column) => Math.max(...rows.map((line) => (line[column] ?? '').length))) ?? []
  for (const line of rows) out.print(line.map((cell, column) => cell.padEnd(widths[column] ?? 0)).join('  ').trimEnd())
}

/** The detail of a failed connection or file operation, for a one-line message. */
export function describeFailure (err: unknown): string {
  const error = err as NodeJS.ErrnoException & { errors?: Error[] }
  return error.errors?.[0]?.message ?? error.message ?? error.code ?? 'unknown error'
}
