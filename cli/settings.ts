// The settings the CLI needs, from the environment and a .env file in the
// working folder (the environment wins).
import { existsSync, readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { parse as parseDotenv } from 'dotenv'
import { BCRYPT_COST } from '../storage/clients.js'
import type { KeyAlgorithm } from '../storage/data-dir.js'
import { CliError } from './io.js'

export interface Settings {
  databaseUrl: string | undefined
  redisUrl: string | undefined
  redisTlsCaFile: string | undefined
  redisKeyPrefix: string
  dataDir: string
  algorithm: KeyAlgorithm
  clientCacheTtl: string
  /** bcrypt cost of the secrets the CLI hashes: the service's BCRYPT_COST */
  bcryptCost: number
}

export const ALGORITHMS: readonly KeyAlgorithm[] = ['RS256', 'ES256', 'EdDSA']
export const isAlgorithm = (value: string): value is KeyAlgorithm => (ALGORITHMS as readonly string[]).includes(value)

export function settings (env: Record<string, string | undefined>, cwd: string): Settings {
  const dotenvPath = join(cwd, '.env')
  const fromFile = existsSync(dotenvPath) ? parseDotenv(readFileSync(dotenvPath)) : {}
  const merged: Record<string, string | undefined> = { ...fromFile, ...env }
  const nonEmpty = (name: string): string | undefined => {
    const value = merged[name]
    return value === undefined || value.trim() === '' ? undefined : value
  }
  const algorithm = nonEmpty('JWT_ALGORITHM') ?? 'RS256'
  if (!isAlgorithm(algorithm)) throw new CliError(`JWT_ALGORITHM: must be one of ${ALGORITHMS.join(', ')}`)
  const cost = nonEmpty('BCRYPT_COST') ?? String(BCRYPT_COST)
  if (!/^\d+$/.test(cost) || Number(cost) < 10 || Number(cost) > 16) throw new CliError('BCRYPT_COST: must be an integer from 10 to 16')
  return {
    databaseUrl: nonEmpty('DATABASE_URL'),
    redisUrl: nonEmpty('REDIS_URL'),
    redisTlsCaFile: nonEmpty('REDIS_TLS_CA_FILE'),
    redisKeyPrefix: merged.REDIS_KEY_PREFIX ?? 'session-service:',
    dataDir: resolve(cwd, nonEmpty('DATA_DIR') ?? './data'),
    algorithm,
    clientCacheTtl: nonEmpty('CLIENT_CACHE_TTL') ?? '30s',
    bcryptCost: Number(cost)
  }
}
