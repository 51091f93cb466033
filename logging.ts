// Shared by every entry point that builds a logger (server.ts, lambda.ts). It
// lives outside plugins/ because everything there is autoloaded as a plugin.
import { randomUUID } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import { LogController, type FastifyReply, type FastifyRequest } from 'fastify'

// Pino paths that must never reach a log line, whatever a serializer adds.
export const REDACTED_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.body',
  'body.client_secret',
  'body.refresh_token',
  'body.token',
  'body.subject_token',
  'body.actor_token',
  'client_secret',
  'refresh_token',
  'access_token'
]

/** Longest client id a log line carries, in characters. */
export const MAX_LOGGED_CLIENT_ID = 128

/**
 * A request as its log lines show it: the path without the query string
 * (clients put `client_secret` and tokens there despite RFC 6749 §2.3.1),
 * and no header, since a client may put a credential in any of them.
 */
function requestWithoutQuery (request: FastifyRequest): Record<string, unknown> {
  const url = request.url ?? ''
  const query = url.indexOf('?')
  return {
    method: request.method,
    url: query < 0 ? url : url.slice(0, query),
    remoteAddress: request.ip,
    remotePort: request.socket?.remotePort
  }
}

/** A client id cut to MAX_LOGGED_CLIENT_ID characters: any caller chooses it, up to the body limit. */
function shortClientId (value: unknown): unknown {
  if (typeof value !== 'string' || value.length <= MAX_LOGGED_CLIENT_ID) return value
  return `${value.slice(0, MAX_LOGGED_CLIENT_ID - 1)}…`
}

/** Pino serializers of the logger options (Fastify keeps its own for `res` and `err`). */
export const LOG_SERIALIZERS = {
  req: requestWithoutQuery,
  clientId: shortClientId,
  client_id: shortClientId
}

/** Longest request id taken from a request, in characters. */
export const MAX_REQUEST_ID_LENGTH = 128

// What a UUID, a ULID or a proxy's id is made of, and nothing that could
// break a log line or a response header. Two headers of the name arrive
// joined by ", ", and are refused too.
const SANE_REQUEST_ID = new RegExp(`^[A-Za-z0-9._:-]{1,${MAX_REQUEST_ID_LENGTH}}$`)

/**
 * Fastify's genReqId: the id a request brings in `header` (lower case) when
 * it is sane, else a random UUID. Never an error: a caller's id is a
 * convenience, not an input the request depends on.
 */
export function requestIdGenerator (header: string): (request: IncomingMessage) => string {
  return (request) => {
    const incoming = request.headers[header]
    return typeof incoming === 'string' && SANE_REQUEST_ID.test(incoming) ? incoming : randomUUID()
  }
}

/**
 * Fastify's request lines, less its two per request: plugins/request-log.ts
 * writes one line when a request is answered. "incoming request" remains at
 * debug, for finding a request that never ends; a response that failed still
 * gets Fastify's error line, and its other warnings stay as they are.
 */
export class RequestLogController extends LogController {
  override incomingRequest (request: FastifyRequest): void {
    if (!this.isLogDisabled(request)) request.log.debug({ req: request }, 'incoming request')
  }

  override requestCompleted (error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply, metadata?: Record<string, unknown>): void {
    if (error !== null && error !== undefined) super.requestCompleted(error, request, reply, metadata)
  }
}
