// Runs the operator CLI in this process, as main(argv, io) with the io of a
// test: exactly the environment given, a working folder of the test's own,
// standard input as a string, and stdout and stderr collected. What is
// checked is what the operator would see: the exit code and the output.
import type { Test } from 'tap'
import type { LightMyRequestResponse } from 'fastify'
import { basicAuth } from '../helper.ts'
import { main } from '../../cli/index.ts'

export const PROGRAM = 'session-service'
export const STACK_TRACE = /^\s+at /m
/** A generated secret: 32 random bytes, base64url. */
export const GENERATED_SECRET = /^[A-Za-z0-9_-]{43}$/
export const COMMANDS = ['clients create', 'clients list', 'clients show', 'clients update', 'clients rotate-secret', 'clients events', 'clients disable', 'clients enable', 'clients delete', 'keys generate', 'keys list', 'keys rotate', 'keys retire', 'keys history', 'migrate']

export interface CliRun {
  code: number | null
  stdout: string
  stderr: string
  ms: number
}

export interface CliOptions {
  /** exactly the service settings the CLI gets */
  env?: Record<string, string>
  stdin?: string
  /** a folder of the test's own, so that no ./data, ./keys or .env of the project is involved */
  cwd: string
}

/** Runs `session-service <args>` in process; asserts that nothing it printed is a stack trace. */
export async function cli (t: Test, args: string[], { env = {}, stdin = '', cwd }: CliOptions): Promise<CliRun> {
  const started = Date.now()
  let stdout = ''
  let stderr = ''
  const code = await main(args, {
    env,
    stdin,
    stdout: (text) => { stdout += text },
    stderr: (text) => { stderr += text },
    cwd
  })
  const res = { code, stdout, stderr, ms: Date.now() - started }
  t.notMatch(`${res.stdout}\n${res.stderr}`, STACK_TRACE, `${[PROGRAM, ...args].join(' ')}: no stack trace in the output`)
  return res
}

/** Asserts a successful run: exit 0, nothing on stderr. */
export function succeeded (t: Test, res: CliRun, what: string): void {
  t.equal(res.code, 0, `${what}: exit code 0`, { stderr: res.stderr, stdout: res.stdout })
  t.equal(res.stderr, '', `${what}: nothing on stderr`)
}

/** Asserts a failed run: the exit code, nothing on stdout, exactly one line on stderr; returns that line. */
export function failed (t: Test, res: CliRun, code: number, what: string): string {
  t.equal(res.code, code, `${what}: exit code ${code}`, { stderr: res.stderr, stdout: res.stdout })
  t.equal(res.stdout, '', `${what}: nothing on stdout`)
  t.match(res.stderr, /^session-service: [^\n]+\n$/, `${what}: one line on stderr, naming the program`)
  return res.stderr.trimEnd()
}

export function parsed<T = Record<string, unknown>> (t: Test, res: CliRun, what: string): T {
  try {
    return JSON.parse(res.stdout) as T
  } catch {
    t.fail(`${what}: stdout is JSON`, { stdout: res.stdout, stderr: res.stderr })
    return {} as T
  }
}

export const CLIENT_CREDENTIALS = { grant_type: 'client_credentials' }

export const basic = (clientId: string, secret: string): Record<string, string> => ({ authorization: basicAuth(clientId, secret) })

export function assertTokenError (t: Test, res: LightMyRequestResponse, status: number, error: string, what: string): void {
  t.equal(res.statusCode, status, `${what}: status ${status}`, { body: res.body })
  t.equal(res.json().error, error, `${what}: error ${error}`)
}
