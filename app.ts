import { join } from 'node:path'
import autoLoad from '@fastify/autoload'
import fp from 'fastify-plugin'
import type { FastifyPluginAsync, FastifyReply, FastifyServerOptions } from 'fastify'
import type { Config } from './plugins/config.ts'
import { registerAdminRoutes } from './plugins/admin-listener.ts'
import { LOG_SERIALIZERS, REDACTED_PATHS, RequestLogController, requestIdGenerator } from './logging.ts'

export interface AppOptions {
  /** A configuration already loaded; without it the config plugin reads the environment. */
  config?: Config
  /** milliseconds since the epoch (default Date.now): what the signing keys' life cycle runs on; tests give their own */
  clock?: () => number
  /** how often stored signing keys are looked at, milliseconds (default 1000); 0: only when a change is made here */
  keyPollMs?: number
}

/**
 * Server options the app relies on. server.ts, lambda.ts and the tests create
 * the instance with them.
 */
export const options: FastifyServerOptions = {
  ajv: {
    // Refuse what does not match the schema instead of coercing it: a number
    // where a token string is expected is an error, not the string "123".
    // And refuse a field the schema does not list (where it says
    // additionalProperties: false) instead of dropping it: a misspelt field
    // of an admin request is an error, not a silent no-op.
    customOptions: { coerceTypes: false, allErrors: false, removeAdditional: false }
  },
  return503OnClosing: true,
  // plugins/request-log.ts writes one line per request instead of Fastify's two.
  logController: new RequestLogController(),
  // Requests Fastify refuses before any route (a URL with malformed
  // percent-encoding) get the service's error body, and never an echo of the URL.
  frameworkErrors: (error, request, reply) => {
    (reply as FastifyReply).code(400).header('cache-control', 'no-store').send({
      error: 'invalid_request',
      error_description: error.code === 'FST_ERR_BAD_URL' ? 'the URL is not valid' : 'the request is not valid'
    })
  },
  // The first start of the embedded database creates it (initdb in
  // WebAssembly), which can take longer than Fastify's default 10 s on a
  // loaded machine. Unreachable servers fail sooner, on their own timeouts.
  pluginTimeout: 60_000
}

/** The options of an instance serving `config`: the app's, plus its logger and proxy and body settings. */
export function instanceOptions (config: Config): FastifyServerOptions {
  return {
    ...options,
    logger: {
      level: config.logLevel,
      redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
      serializers: LOG_SERIALIZERS
    },
    genReqId: requestIdGenerator(config.requestIdHeader),
    trustProxy: config.trustProxy,
    bodyLimit: config.bodyLimit
  }
}

// The service as a plugin: every concern from plugins/ (ordered by their
// declared dependencies), then the endpoints: routes/public/ answer on the
// public listener, routes/admin/ on the admin listener only.
const serviceApp: FastifyPluginAsync<AppOptions> = async (fastify, opts) => {
  const ignorePattern = /\.d\.ts$|\.map$/
  await fastify.register(autoLoad, { dir: join(import.meta.dirname, 'plugins'), options: opts, ignorePattern })
  // Each route file declares its full path, so that grepping for a URL
  // finds its handler.
  await fastify.register(autoLoad, { dir: join(import.meta.dirname, 'routes', 'public'), dirNameRoutePrefix: false, ignorePattern })
  await registerAdminRoutes(fastify, autoLoad, { dir: join(import.meta.dirname, 'routes', 'admin'), dirNameRoutePrefix: false, ignorePattern })
}

// Wrapped so that its decorators, error handler and hooks apply to the
// instance that registers it (the server, a test, the Lambda handler).
export default fp(serviceApp, { name: 'session-service' })
