import fp from 'fastify-plugin'
import { DependencyError, type DependencyName } from './errors.ts'

/** What a probe found: the dependency answered, ran out of time, failed otherwise, or is not configured. */
export type DependencyState = 'up' | 'timeout' | 'unreachable' | 'unused'

export type DependencyStates = Record<DependencyName, DependencyState>

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * Asks PostgreSQL and Redis, concurrently, each within `timeoutMs`. Never
     * throws: a failure is a state, and its cause goes to the log (`purpose`
     * names who asked), never into an answer served beyond the operators.
     */
    probeDependencies: (timeoutMs: number, purpose: string) => Promise<DependencyStates>
  }
}

export default fp(async (fastify) => {
  async function probe (name: DependencyName, ping: ((timeoutMs: number) => Promise<void>) | null, timeoutMs: number, purpose: string): Promise<DependencyState> {
    // Without REDIS_URL there is no Redis to ask.
    if (ping === null) return 'unused'
    try {
      await ping(timeoutMs)
      return 'up'
    } catch (err) {
      const cause = ((err as Error).cause as Error | undefined)?.message ?? (err as Error).message
      fastify.log.warn({ dependency: name, cause }, `${purpose} failed`)
      return err instanceof DependencyError ? err.failure : 'unreachable'
    }
  }

  fastify.decorate('probeDependencies', async (timeoutMs: number, purpose: string): Promise<DependencyStates> => {
    const [postgresql, redis] = await Promise.all([
      probe('postgresql', fastify.pingPostgres, timeoutMs, purpose),
      probe('redis', fastify.pingRedis, timeoutMs, purpose)
    ])
    return { postgresql, redis }
  })
}, { name: 'dependency-probe', dependencies: ['postgres', 'redis'] })
