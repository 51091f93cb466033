import fp from 'fastify-plugin'
import { tokenInspection, type TokenInspection } from '../tokens/inspection.ts'
import { tokenIssuance, type TokenIssuance } from '../tokens/issuance.ts'
import { newTokenStats, type TokenStats } from '../tokens/session.ts'

export type { Introspection } from '../tokens/inspection.ts'
export { customClaims, INVALID_REFRESH_TOKEN, type TokenRequest, type TokenResponse } from '../tokens/issuance.ts'
export type { RefreshTokenRecord } from '../storage/refresh-tokens.ts'

/** Issuing (tokens/issuance.ts) and inspecting (tokens/inspection.ts) tokens. */
export type Tokens = TokenIssuance & TokenInspection & {
  /** refresh-token reuses and revocations since start */
  stats: TokenStats
}

declare module 'fastify' {
  interface FastifyInstance {
    tokens: Tokens
  }
}

export default fp(async (fastify) => {
  const stats = newTokenStats()
  const dependencies = { config: fastify.config, keys: fastify.keys, store: fastify.store, log: fastify.log, stats }
  fastify.decorate('tokens', { ...tokenIssuance(dependencies), ...tokenInspection(dependencies), stats })
}, { name: 'tokens', dependencies: ['config', 'store', 'keys'] })
