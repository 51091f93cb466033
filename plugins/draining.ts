import fp from 'fastify-plugin'

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * True once the instance has begun to shut down (server.ts sets it on
     * SIGTERM or SIGINT): /ready answers 503 from then on, while the other
     * endpoints keep serving until the listeners close.
     */
    draining: boolean
  }
}

// On the root instance, where server.ts sets it and every route reads it.
export default fp(async (fastify) => {
  fastify.decorate('draining', false)
}, { name: 'draining' })
