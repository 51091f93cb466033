import fp from 'fastify-plugin'
import createError from '@fastify/error'
import type { FastifyError, FastifyReply } from 'fastify'
import { oauthError } from '../schemas/oauth.ts'

/** An error with an RFC 6749 §5.2 body: `{ error, error_description }`. */
export class OAuthError extends Error {
  readonly statusCode: number
  readonly error: string
  readonly headers: Record<string, string>

  constructor (statusCode: number, error: string, description: string, headers: Record<string, string> = {}) {
    super(description)
    this.name = 'OAuthError'
    this.statusCode = statusCode
    this.error = error
    this.headers = headers
  }
}

export const invalidRequest = (description: string): OAuthError => new OAuthError(400, 'invalid_request', description)
export const invalidGrant = (description: string): OAuthError => new OAuthError(400, 'invalid_grant', description)
/** RFC 9449 §5: a DPoP proof that is missing where one is needed, or that fails a check. */
export const invalidDpopProof = (description: string): OAuthError => new OAuthError(400, 'invalid_dpop_proof', description)

/** The dependencies the service names in errors, logs and health answers. */
export type DependencyName = 'postgresql' | 'redis'

/** An operation that did not settle in its time bound (withTimeout). */
export const TimeoutError = createError<'SS_TIMEOUT', 503, [string, number]>('SS_TIMEOUT', '%s did not answer within %d ms', 503)

/** How a dependency call failed: its time bound ran out, or anything else. */
export type DependencyFailure = 'timeout' | 'unreachable'

/**
 * PostgreSQL or Redis did not answer in time or refused the connection.
 * Answered with 503 `temporarily_unavailable` and Retry-After.
 */
export class DependencyError extends createError<'SS_DEPENDENCY_UNAVAILABLE', 503, [string, { cause: unknown }]>('SS_DEPENDENCY_UNAVAILABLE', '%s is unavailable', 503) {
  readonly dependency: DependencyName
  /** what went wrong: by the code of the cause unless the caller knows better (a call that ran out its bound) */
  readonly failure: DependencyFailure

  constructor (dependency: DependencyName, cause: unknown, failure?: DependencyFailure) {
    super(dependency, { cause })
    this.dependency = dependency
    this.failure = failure ?? ((cause as { code?: unknown } | null)?.code === 'SS_TIMEOUT' ? 'timeout' : 'unreachable')
  }
}

/** What each call to a dependency goes through: any failure of `operation` becomes a DependencyError naming `dependency`. */
export type Guard = <T>(dependency: DependencyName, operation: Promise<T>) => Promise<T>

/** The guard that records nothing: for pings (which have their own gauge), sealing, and the CLI and tests. */
export const guard: Guard = async (dependency, operation) => {
  try {
    return await operation
  } catch (err) {
    throw err instanceof DependencyError ? err : new DependencyError(dependency, err)
  }
}

/** One call to a dependency as a recording guard saw it: how long it took, and how it failed if it did. */
export interface DependencyCall {
  dependency: DependencyName
  seconds: number
  failure?: DependencyFailure
}

// ioredis (commandTimeout) and pg (query_timeout, connectionTimeoutMillis)
// reject a call that ran out its bound with a plain Error, no code: a failure
// that took the whole bound is taken for a timeout. The slack covers timers
// that fire a little early and calls that started just before the guard.
const TIMER_SLACK_MS = 10

/**
 * guard() that also tells `record` of every call: its duration, and its
 * failure (a timeout when it failed after `timeoutMs`, the bound the clients
 * of PostgreSQL and Redis are given). One per app instance, so that
 * instances in one process keep their own counts.
 */
export function recordingGuard (record: (call: DependencyCall) => void, timeoutMs: number): Guard {
  return async (dependency, operation) => {
    const started = performance.now()
    try {
      const result = await operation
      record({ dependency, seconds: (performance.now() - started) / 1000 })
      return result
    } catch (err) {
      // Already classified (and recorded) by a guard inside this one.
      if (err instanceof DependencyError) throw err
      const ms = performance.now() - started
      const failure = ms >= timeoutMs - TIMER_SLACK_MS ? 'timeout' : undefined
      const error = new DependencyError(dependency, err, failure)
      record({ dependency, seconds: ms / 1000, failure: error.failure })
      throw error
    }
  }
}

/** Rejects with a TimeoutError after `ms` milliseconds unless the operation settles first. */
export async function withTimeout<T> (operation: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((resolve, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(what, ms)), ms)
  })
  try {
    return await Promise.race([operation, timeout])
  } finally {
    clearTimeout(timer)
  }
}

// Codes of errors raised by ioredis or pg (network errors, PostgreSQL's
// connection and shutdown classes) that reach the handler outside a guard():
// a dependency is down, not a bug.
const DEPENDENCY_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', '57P01', '57P02', '57P03', '08000', '08001', '08003', '08006'])

function isDependencyFailure (err: FastifyError): boolean {
  return err instanceof DependencyError || (err.code !== undefined && DEPENDENCY_CODES.has(err.code))
}

export const RETRY_AFTER_SECONDS = 2

// Error codes are the service's own, but a body is only parsed, not trusted:
// anything unexpected is left out rather than becoming a label or a log field.
const ERROR_CODE = /^[a-z_]{1,64}$/

/** The `error` member of an OAuth error body as sent (metrics, the request log), or undefined for any other answer. */
export function answeredErrorCode (reply: FastifyReply, payload: unknown): string | undefined {
  if (typeof payload !== 'string' || !String(reply.getHeader('content-type') ?? '').includes('json')) return undefined
  try {
    const error = (JSON.parse(payload) as { error?: unknown } | null)?.error
    return typeof error === 'string' && ERROR_CODE.test(error) ? error : undefined
  } catch {
    return undefined
  }
}

function send (reply: FastifyReply, statusCode: number, error: string, description: string): FastifyReply {
  return reply.code(statusCode).type('application/json; charset=utf-8').send({ error, error_description: description })
}

export default fp(async (fastify) => {
  fastify.addSchema(oauthError)

  fastify.setErrorHandler((err: FastifyError, request, reply) => {
    if (err instanceof OAuthError) {
      reply.headers(err.headers)
      if (err.statusCode >= 500) request.log.warn({ oauthError: err.error }, err.message)
      return send(reply, err.statusCode, err.error, err.message)
    }
    if (err.validation !== undefined) {
      return send(reply, 400, 'invalid_request', `${err.validationContext ?? 'request'}${err.validation[0]?.instancePath ?? ''} ${err.validation[0]?.message ?? 'is invalid'}`)
    }
    if (isDependencyFailure(err)) {
      const dependency = err instanceof DependencyError ? err.dependency : 'a storage dependency'
      request.log.error({ dependency, cause: (err.cause as Error | undefined)?.message ?? err.message }, 'dependency unavailable')
      reply.header('retry-after', String(RETRY_AFTER_SECONDS))
      return send(reply, 503, 'temporarily_unavailable', `${dependency} is unavailable; retry later`)
    }
    switch (err.code) {
      case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
        return send(reply, 400, 'invalid_request', 'unsupported content type')
      case 'FST_ERR_CTP_BODY_TOO_LARGE':
        return send(reply, 413, 'invalid_request', 'request body is too large')
      case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      case 'FST_ERR_CTP_INVALID_JSON_BODY':
        return send(reply, 400, 'invalid_request', 'request body is malformed')
    }
    const status = err.statusCode ?? 500
    if (status >= 400 && status < 500) {
      // Other client errors from Fastify or its parsers (JSON syntax errors
      // carry statusCode 400); their messages may quote the input, so they
      // are not echoed.
      return send(reply, status === 404 || status === 405 ? status : 400, 'invalid_request', 'the request could not be parsed')
    }
    request.log.error({ err }, 'unexpected error')
    return send(reply, 500, 'server_error', 'internal error')
  })

  fastify.setNotFoundHandler((request, reply) => {
    return send(reply, 404, 'not_found', `no route for ${request.method} ${request.url.split('?')[0] ?? ''}`)
  })
}, { name: 'errors' })
