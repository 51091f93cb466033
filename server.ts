import Fastify from 'fastify'
import closeWithGrace from 'close-with-grace'
import app, { options } from './app.js'
import { ConfigError, loadConfig, type Config } from './plugins/config.js'
import { LOG_SERIALIZERS, REDACTED_PATHS } from './logging.js'

// Everything this process creates (the embedded database, the control
// socket, keys) is for its own user only.
process.umask(0o077)

function fail (message: string): never {
  process.stderr.write(`session-service: ${message}\n`)
  process.exit(1)
}

let config: Config
try {
  config = loadConfig(process.env, { dotenv: true })
} catch (err) {
  fail(err instanceof ConfigError ? err.message : `configuration error: ${(err as Error).message}`)
}

const server = Fastify({
  ...options,
  logger: {
    level: config.logLevel,
    redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
    serializers: LOG_SERIALIZERS
  },
  trustProxy: config.trustProxy,
  bodyLimit: config.bodyLimit,
  // No request hangs: a client that stalls mid-request is cut off.
  requestTimeout: 30_000,
  connectionTimeout: 30_000
})

try {
  await server.register(app, { config })
} catch (err) {
  // A data directory held by another process, a plugin that cannot start.
  fail((err as Error).message)
}

// Once closing has begun, answers ask the client to close its connection:
// otherwise a keep-alive connection whose request was in flight stays open
// after its answer and holds server.close() until the keep-alive timeout.
let closing = false
server.addHook('preClose', async () => { closing = true })
server.addHook('onSend', async (request, reply) => {
  if (closing) reply.header('connection', 'close')
})

closeWithGrace({ delay: 10_000 }, async ({ signal, err }) => {
  if (err !== undefined) server.log.error({ err }, 'shutting down after an error')
  else server.log.info({ signal }, 'shutting down')
  await server.close()
})

try {
  await server.listen({ host: config.host, port: config.port })
} catch (err) {
  // A dependency unreachable at boot, a port in use: one line, exit 1.
  server.log.fatal({ cause: (err as Error).message }, 'could not start')
  fail((err as Error).message)
}
