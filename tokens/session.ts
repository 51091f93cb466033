// What issuing and inspecting tokens share: how a refresh token is kept,
// and how long a revoked session stays revoked.
import { createHash } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import type { Config } from '../plugins/config.ts'
import type { Keys } from '../plugins/keys.ts'
import type { Store } from '../storage/index.ts'

/** What the token operations count since start, read by the metrics. */
export interface TokenStats {
  /** used refresh tokens presented again (each revoked its session) */
  refreshTokenReuses: number
  /** revocations that took effect, by the kind of token presented (a refresh token revokes its session) */
  revocations: { access_token: number, refresh_token: number }
}

export const newTokenStats = (): TokenStats => ({ refreshTokenReuses: 0, revocations: { access_token: 0, refresh_token: 0 } })

/** What the token operations work with: the instance's decorators they need, and its counts. */
export interface TokenDependencies {
  config: Config
  keys: Keys
  store: Store
  log: FastifyBaseLogger
  stats: TokenStats
}

/** A JSON object claim (act, cnf): not null, not an array. */
export const isClaimSet = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value)

/** Refresh tokens are kept under their hash: a copy of the store holds no usable token. */
export const refreshTokenHash = (token: string): string => createHash('sha256').update(token).digest('base64url')

/** A session's last token expires at most this long after its revocation, seconds. */
export const sessionRevocationTtl = (config: Config): number => Math.max(config.accessTokenTtl, config.refreshTokenTtl)
