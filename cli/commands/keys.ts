// `keys generate`: a signing key pair written as PEM files.
import { existsSync, mkdirSync } from 'node:fs'
import { createPublicKey } from 'node:crypto'
import { join, resolve } from 'node:path'
import { publicJwk } from '../../plugins/keys.js'
import { isSigningAlgorithm, SIGNING_ALGORITHMS } from '../../signing-keys/algorithms.js'
import { generatePrivateKeyPem } from '../../signing-keys/generate.js'
import { writeOwnerOnly } from '../../storage/data-dir.js'
import { JSON_OPTION, noPositionals, type CommandTable } from '../command.js'
import { CliError, describeFailure, usage } from '../io.js'

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
      try {
        mkdirSync(dir, { recursive: true, mode: 0o700 })
      } catch (err) {
        throw new CliError(`cannot create ${dir}: ${describeFailure(err)}`)
      }
      const pair = generatePrivateKeyPem(algorithm)
      writeOwnerOnly(privatePath, pair.privateKey)
      writeOwnerOnly(publicPath, pair.publicKey)
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
