// What each request did, told once: its id echoed in the response, one log
// line when it is answered (Fastify's own two lines are turned off by
// logging.ts's RequestLogController), and the same facts as attributes of
// its trace span when tracing is on (tracing.ts; the probes have none).
// Nothing here reads a secret: the client id is the one
// the request names, cut to MAX_LOGGED_CLIENT_ID, and an error code is
// taken from the answer only when it looks like one.
import fp from 'fastify-plugin'
import type { Span } from '@opentelemetry/api'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { readCredentials, type CredentialParameters } from '../client-auth/index.ts'
import { GRANT_TYPES } from '../grants/index.ts'
import { answeredErrorCode } from './errors.ts'
import { MAX_LOGGED_CLIENT_ID } from '../logging.ts'

/** What a log line and a span say of an answered request. */
export interface RequestOutcome {
  /** the route pattern, or the path without its query string when no route matched */
  route: string
  statusCode: number
  /** `issued` for a token response, the OAuth error code of an error answer, else the status */
  outcome: string
  grantType?: string
  /** the client the request names (authenticated or not), cut to MAX_LOGGED_CLIENT_ID */
  clientId?: string
}

/** Longest unmatched path a log line carries, in characters. */
const MAX_LOGGED_PATH = 256

/** The client id the request names, whichever way it authenticates; undefined when none or unreadable. */
function namedClientId (request: FastifyRequest): string | undefined {
  const body = request.body
  if (body === null || typeof body !== 'object') return undefined
  try {
    const clientId = readCredentials(request.headers.authorization, body as CredentialParameters).clientId
    if (typeof clientId !== 'string' || clientId === '') return undefined
    return clientId.length <= MAX_LOGGED_CLIENT_ID ? clientId : `${clientId.slice(0, MAX_LOGGED_CLIENT_ID - 1)}…`
  } catch {
    // Ambiguous or malformed credentials (the answer says so) name no client.
    return undefined
  }
}

function routeOf (request: FastifyRequest): string {
  if (request.routeOptions.url !== undefined) return request.routeOptions.url
  const url = request.url ?? ''
  const query = url.indexOf('?')
  return (query < 0 ? url : url.slice(0, query)).slice(0, MAX_LOGGED_PATH)
}

function describe (request: FastifyRequest, reply: FastifyReply, payload: unknown): RequestOutcome {
  const statusCode = reply.statusCode
  const isToken = request.routeOptions.url === '/oauth/token' && request.method === 'POST'
  const grantType = isToken ? (request.body as { grant_type?: unknown } | undefined)?.grant_type : undefined
  const outcome = isToken && statusCode === 200 ? 'issued' : (statusCode >= 400 ? answeredErrorCode(reply, payload) : undefined) ?? String(statusCode)
  return {
    route: routeOf(request),
    statusCode,
    outcome,
    // Only a grant the service knows: any other value is the caller's text.
    ...(typeof grantType === 'string' && GRANT_TYPES.includes(grantType) ? { grantType } : {}),
    ...withClientId(namedClientId(request))
  }
}

// The request's logger level: the service's LOG_LEVEL, or the route's own.
const INFO_OR_FINER = new Set(['info', 'debug', 'trace'])
const logsAtInfo = (request: FastifyRequest): boolean => INFO_OR_FINER.has(request.log.level)

function withClientId (clientId: string | undefined): { clientId?: string } {
  return clientId === undefined ? {} : { clientId }
}

/** The request span of @fastify/otel, present only when tracing is on. */
function requestSpan (request: FastifyRequest): Span | undefined {
  const otel = (request as { opentelemetry?: () => { span?: Span | null } }).opentelemetry
  return otel?.call(request).span ?? undefined
}

function annotate (span: Span, outcome: RequestOutcome): void {
  span.setAttributes({
    'oauth.outcome': outcome.outcome,
    ...(outcome.grantType === undefined ? {} : { 'oauth.grant_type': outcome.grantType }),
    ...(outcome.clientId === undefined ? {} : { 'oauth.client_id': outcome.clientId })
  })
}

export default fp(async (fastify) => {
  const { requestIdHeader } = fastify.config
  const outcomes = new WeakMap<FastifyRequest, RequestOutcome>()

  fastify.addHook('onRequest', async (request, reply) => {
    reply.header(requestIdHeader, request.id)
  })

  // onSend sees the answer as it goes out, whichever handler produced it, and
  // runs before @fastify/otel ends the span in its own route-level onSend.
  // Nothing is read of the answer when neither a line nor a span will say it
  // (LOG_LEVEL above info, or a probe, and tracing off).
  fastify.addHook('onSend', async (request, reply, payload) => {
    const span = requestSpan(request)
    if (span === undefined && !logsAtInfo(request)) return payload
    const outcome = describe(request, reply, payload)
    outcomes.set(request, outcome)
    if (span !== undefined) annotate(span, outcome)
    return payload
  })

  // request.log carries the request id (reqId), and the route's own level:
  // a route logged at warn writes no line here.
  fastify.addHook('onResponse', async (request, reply) => {
    if (!logsAtInfo(request)) return
    const outcome = outcomes.get(request) ?? describe(request, reply, undefined)
    request.log.info({
      // method and path (without the query string), by the req serializer of logging.ts
      req: request,
      ...outcome,
      durationMs: Math.round(reply.elapsedTime * 10) / 10
    }, 'request completed')
  })
}, { name: 'request-log', dependencies: ['config'] })
