import fp from 'fastify-plugin'
import { recordingGuard, type DependencyCall, type Guard } from './errors.ts'

/** The guard of this instance's calls to PostgreSQL and Redis, and who hears of each call. */
export interface DependencyCalls {
  /** guard() that also tells the listeners of each call (storage, client lookups, rate limits) */
  guard: Guard
  /** Adds a listener told of every guarded call: its dependency, duration and failure. */
  listen: (listener: (call: DependencyCall) => void) => void
}

declare module 'fastify' {
  interface FastifyInstance {
    dependencyCalls: DependencyCalls
  }
}

// Per instance, not a module-level recorder: several apps in one process
// (the tests) would otherwise count each other's calls.
export default fp(async (fastify) => {
  const listeners: Array<(call: DependencyCall) => void> = []
  const guard = recordingGuard((call) => {
    for (const listener of listeners) listener(call)
  }, fastify.config.dependencyTimeoutMs)
  fastify.decorate('dependencyCalls', { guard, listen: (listener) => { listeners.push(listener) } })
}, { name: 'dependency-calls', dependencies: ['config'] })
