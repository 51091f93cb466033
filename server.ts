// First: tracing must be set up before pg and ioredis are loaded.
import { tracing } from './tracing.ts'
import type { Server as HttpServer } from 'node:http'
import { isIPv6, Server as NetServer, type AddressInfo } from 'node:net'
import { extname, isAbsolute, join, relative } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify from 'fastify'
import closeWithGrace from 'close-with-grace'
import app, { instanceOptions } from './app.ts'
import { ConfigError, ensureDataDirSigningKey, loadConfig, type Config } from './plugins/config.ts'

// Everything this process creates (the embedded database, the control
// socket, keys) is for its own user only.
process.umask(0o077)

function fail (message: string): never {
  process.stderr.write(`session-service: ${message}\n`)
  process.exit(1)
}

let config: Config
try {
  // The embedded mode's signing key is made here, before the configuration reads it.
  const dataDirKey = ensureDataDirSigningKey(process.env, { dotenv: true })
  config = loadConfig(process.env, { dotenv: true, dataDirKey })
} catch (err) {
  fail(err instanceof ConfigError ? err.message : `configuration error: ${(err as Error).message}`)
}

const server = Fastify({
  ...instanceOptions(config),
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

// Shutdown loses no request. On SIGTERM the instance drains: /ready answers
// 503 so that load balancers stop sending here, and every answer asks its
// client to close the connection, while the service keeps serving for
// SHUTDOWN_DELAY. Then it stops listening, answers every request that has
// reached it, closes the connections left idle, closes the pools and exits 0.
// SIGINT (Ctrl-C in a terminal), any other signal and a crash skip the delay.
// After the delay, requests in flight get DRAIN_LIMIT_MS to finish; past
// SHUTDOWN_DELAY + EXIT_LIMIT_MS close-with-grace exits 1 whatever hangs.
const DRAIN_LIMIT_MS = 9_000
const EXIT_LIMIT_MS = 10_000
// How often connections are looked at while draining; also how long one
// that is idle when the listener closes has to deliver a request in transit.
const IDLE_CHECK_MS = 250

server.addHook('onSend', async (request, reply) => {
  if (server.draining) reply.header('connection', 'close')
})

/**
 * Resolves once the event loop has polled its sockets after the call: a
 * setImmediate callback runs after the poll phase of the current loop
 * iteration, the one it schedules after the poll of the next.
 */
async function afterNextPoll (): Promise<void> {
  for (let i = 0; i < 2; i++) await new Promise((resolve) => setImmediate(resolve))
}

/**
 * Stops accepting connections, then resolves once every open one has closed:
 * a connection with a request in progress closes after its answer (which
 * carries Connection: close), an idle one is closed here. At `deadline` the
 * connections still open are cut.
 */
async function stopListening (httpServer: HttpServer, deadline: number): Promise<void> {
  if (!httpServer.listening) return
  // Connections waiting in the kernel's accept queue, requests and all, are
  // taken first: closing the listener would reset them.
  await afterNextPoll()
  // net.Server's close, not http.Server's: the latter also destroys every
  // connection without a request in progress, including one whose request
  // has arrived but is still unread in the socket's buffer.
  const closed = new Promise<true>((resolve) => {
    NetServer.prototype.close.call(httpServer, () => resolve(true))
  })
  while (Date.now() < deadline) {
    if (await Promise.race([closed, sleep(IDLE_CHECK_MS, false)])) return
    // Every request whose bytes have arrived by now is read, and counts as
    // in progress, before its connection could be taken for an idle one.
    await afterNextPoll()
    httpServer.closeIdleConnections()
  }
  server.log.warn({ drainLimitMs: DRAIN_LIMIT_MS }, 'requests still in progress at the drain limit: closing their connections')
  httpServer.closeAllConnections()
  await closed
}

closeWithGrace({ delay: config.shutdownDelayMs + EXIT_LIMIT_MS }, async ({ signal, err }) => {
  const serving = server.server.listening
  server.draining = true
  const delayMs = signal === 'SIGTERM' && serving ? config.shutdownDelayMs : 0
  if (err !== undefined) server.log.error({ err }, 'shutting down after an error')
  else server.log.info({ signal, delayMs }, 'shutting down')
  await sleep(delayMs)
  await stopListening(server.server, Date.now() + DRAIN_LIMIT_MS)
  await server.close()
  await tracing?.shutdown()
})

/** A URL for reaching a listener from this machine: a wildcard address means every interface, loopback included. */
function reachableUrl (host: string, port: number, path: string): string {
  const name = host === '0.0.0.0' || host === '::' ? 'localhost' : host
  return `http://${isIPv6(name) ? `[${name}]` : name}:${port}${path}`
}

/**
 * The command that creates a first client, as this process was started: an
 * npm script means a checkout, where `npm run cli` is the CLI; otherwise
 * (the container image) the CLI file beside this one.
 */
function createClientCommand (): string {
  const args = 'clients create --name demo --scope read'
  if (process.env.npm_lifecycle_event !== undefined) return `npm run -s cli -- ${args}`
  const cli = join(import.meta.dirname, 'cli', `index${extname(import.meta.filename)}`)
  const fromHere = relative(process.cwd(), cli)
  return `node ${fromHere.startsWith('..') || isAbsolute(fromHere) ? cli : fromHere} ${args}`
}

/**
 * One line, at every start (a person reads the latest start's log, and a
 * restart may have moved the admin port), with what a newcomer needs next.
 * URLs and a command only: nothing secret.
 */
function logStartGuide (admin: AddressInfo): void {
  const tokenEndpoint = `${config.publicUrl}/oauth/token`
  const discovery = `${config.publicUrl}/.well-known/openid-configuration`
  const apiDocs = reachableUrl(config.adminHost, admin.port, '/docs')
  const createClient = createClientCommand()
  server.log.info({ tokenEndpoint, discovery, apiDocs, createClient },
    `ready: token endpoint ${tokenEndpoint} | discovery ${discovery} | API docs ${apiDocs} | create a client: ${createClient}`)
}

try {
  await server.listen({ host: config.host, port: config.port })
  // Metrics, readiness, liveness, docs and the admin API; it keeps answering
  // while the public listener drains (/ready then says so), and closes with
  // the instance.
  logStartGuide(await server.listenAdmin({ host: config.adminHost, port: config.adminPort }))
} catch (err) {
  // A dependency unreachable at boot, a port in use: one line, exit 1.
  server.log.fatal({ cause: (err as Error).message }, 'could not start')
  fail((err as Error).message)
}
