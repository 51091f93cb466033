// `keys generate`: a signing key pair written as PEM files.
import { existsSync, mkdirSync, rmSync, statSync } from 'node:fs'
import { createPublicKey } from 'node:crypto'
import { dirname, join, resolve } from 'node:path'
import { publicJwk } from '../../plugins/keys.ts'
import { isSigningAlgorithm, SIGNING_ALGORITHMS } from '../../signing-keys/algorithms.ts'
import { generatePrivateKeyPem } from '../../signing-keys/generate.ts'
import { writeOwnerOnly } from '../../storage/data-dir.ts'
import { JSON_OPTION, noPositionals, type CommandTable } from '../command.ts'
import { CliError, describeFailure, usage } from '../io.ts'

/** Why a file operation failed, without the path that the message names already. */
const reasonOf = (err: unknown): string => describeFailure(err).replace(/, \w+ '[^']*'$/, '')

const cannotCreate = (dir: string, err: unknown): CliError => new CliError(`cannot create the key directory ${dir}: ${reasonOf(err)}`)

function mkdirOwnerOnly (dir: string): 'made' | 'exists' | 'no parent' {
  try {
    mkdirSync(dir, { mode: 0o700 })
    return 'made'
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'EEXIST') return 'exists'
    if (code === 'ENOENT') return 'no parent'
    throw cannotCreate(dir, err)
  }
}

/**
 * Makes the key folder and its missing parents. Not mkdirSync's recursive
 * option: where a folder exists yet refuses a new entry with ENOENT (under
 * /proc), Node's walk steps back to the parent, finds it, steps forward and
 * retries for ever. Here each folder is tried at most twice.
 */
function makeKeyFolder (dir: string): void {
  let made = mkdirOwnerOnly(dir)
  if (made === 'no parent' && dirname(dir) !== dir) {
    makeKeyFolder(dirname(dir))
    made = mkdirOwnerOnly(dir)
  }
  if (made === 'no parent') throw new CliError(`cannot create the key directory ${dir}: ${dirname(dir)} accepts no new directory`)
  if (made === 'exists' && !isFolder(dir)) throw new CliError(`${dir} exists and is not a directory; choose another --out`)
}

function isFolder (path: string): boolean {
  try {
    return statSync(path).isDirectory()
  } catch {
    return false
  }
}

/** Both PEM files, or neither: a private key without its public half is of no use and must not linger. */
function writeKeyPair (privatePath: string, publicPath: string, pair: { privateKey: string, publicKey: string }): void {
  let written: string | undefined
  try {
    writeOwnerOnly(privatePath, pair.privateKey)
    written = privatePath
    writeOwnerOnly(publicPath, pair.publicKey)
  } catch (err) {
    if (written !== undefined) rmSync(written, { force: true })
    throw new CliError(`cannot write ${written === undefined ? privatePath : publicPath}: ${reasonOf(err)}`)
  }
}

export const keysCommands: CommandTable = {
  'keys generate': {
    summary: 'write a new signing key pair (PEM)',
    usage: `keys generate [--algorithm ${SIGNING_ALGORITHMS.join('|')}] [--out <dir>] [--json]`,
    help: `Writes private.pem (owner-only) and public.pem into --out (default ./keys),
for the algorithm given or JWT_ALGORITHM (default RS256: a 2048-bit RSA key).
Refuses to overwrite existing files. Point JWT_PRIVATE_KEY_FILE at private.pem;
to rotate, publish public.pem through JWT_ADDITIONAL_PUBLIC_KEYS_FILE first.`,
    options: { algorithm: { type: 'string' }, out: { type: 'string' }, ...JSON_OPTION },
    async run ({ values, positionals, config, out, io }) {
      const command = 'keys generate'
      noPositionals(positionals, command)
      const algorithm = (values.algorithm as string | undefined) ?? config.algorithm
      if (!isSigningAlgorithm(algorithm)) throw usage(`--algorithm must be one of ${SIGNING_ALGORITHMS.join(', ')}`, command)
      const dir = resolve(io.cwd, (values.out as string | undefined) ?? 'keys')
      const privatePath = join(dir, 'private.pem')
      const publicPath = join(dir, 'public.pem')
      for (const path of [privatePath, publicPath]) {
        if (existsSync(path)) throw new CliError(`${path} exists; choose another --out or move it away first`)
      }
      makeKeyFolder(dir)
      const pair = generatePrivateKeyPem(algorithm)
      writeKeyPair(privatePath, publicPath, pair)
      const kid = publicJwk(createPublicKey(pair.publicKey), algorithm).kid
      if (out.json) {
        out.data({ algorithm, kid, private_key: privatePath, public_key: publicPath })
        return
      }
      out.print(`${algorithm} key pair written (kid ${kid}):`)
      out.print(`  ${privatePath}  (owner-only; keep it secret)`)
      out.print(`  ${publicPath}`)
      out.print(`Configure: JWT_ALGORITHM=${algorithm} JWT_PRIVATE_KEY_FILE=${privatePath}`)
    }
  }
}
