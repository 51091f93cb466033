import fp from 'fastify-plugin'
import { guard } from './errors.js'

export interface Revocation {
  /** Puts an access token's jti on the deny-list until `expiresAt` (seconds since epoch). */
  denyAccessToken: (jti: string, expiresAt: number) => Promise<void>
  /** Whether the jti is on the deny-list. */
  isDenied: (jti: string) => Promise<boolean>
}

declare module 'fastify' {
  interface FastifyInstance {
    revocation: Revocation
  }
}

export default fp(async (fastify) => {
  const { redis } = fastify
  const denyKey = (jti: string): string => `deny:${jti}`

  fastify.decorate('revocation', {
    async denyAccessToken (jti: string, expiresAt: number) {
      // The entry lives exactly as long as the token could: after that the
      // token fails on its own expiry and the entry is dead weight.
      if (expiresAt * 1000 <= Date.now()) return
      await guard('redis', redis.set(denyKey(jti), '1', 'EXAT', expiresAt))
    },
    async isDenied (jti: string) {
      return (await guard('redis', redis.exists(denyKey(jti)))) === 1
    }
  })
}, { name: 'revocation', dependencies: ['redis'] })
