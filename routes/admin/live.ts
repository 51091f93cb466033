import type { FastifyPluginAsync } from 'fastify'

const liveResponse = {
  type: 'object',
  required: ['status'],
  properties: { status: { type: 'string', enum: ['live'] } },
  additionalProperties: false
} as const

// Liveness: the process answers, so its event loop turns. It asks nothing of
// PostgreSQL or Redis: an outage of either is no reason to restart every
// instance (that would only add cold starts to the outage), and /ready
// already takes the instance out of the pool meanwhile.
const liveRoute: FastifyPluginAsync = async (fastify) => {
  fastify.get('/live', {
    // Probed every few seconds: not worth a log line.
    logLevel: 'warn',
    schema: {
      operationId: 'getLiveness',
      summary: 'Liveness: whether this process should be restarted (never depends on PostgreSQL or Redis)',
      description: 'For an orchestrator\'s liveness probe: 200 as long as the process answers HTTP (RFC 9110 §15.3.1). ' +
        'An outage of PostgreSQL or Redis does not fail it, since restarting every instance would not help; /ready covers that.',
      response: { 200: { ...liveResponse, description: 'The process answers', examples: [{ status: 'live' }] } }
    }
  }, async (request, reply) => {
    reply.header('cache-control', 'no-store')
    return { status: 'live' }
  })
}

export default liveRoute
