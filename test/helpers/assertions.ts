// Assertions that many test files make about the service's answers.
import type { Test } from 'tap'
import type { LightMyRequestResponse } from 'fastify'

/** The WWW-Authenticate challenge of a 401 answer. */
export const REALM_CHALLENGE = 'Basic realm="session-service"'

// What an error body must never carry: stack frames, file paths, the names
// of internal errors, database or Redis messages.
const LEAKS = [
  /\bat \S+ \(/, /node_modules/, /\.[cm]?[jt]s:\d+/, /\/work\//, /\w*Error\b/, /\b(?:ECONN\w+|FST_ERR\w*|ERR_[A-Z_]+)\b/,
  /SQLSTATE|syntax error at|violates|duplicate key|relation "|ReplyError|WRONGTYPE|FAST_JWT/i
]

/** A JSON body as an object (a scalar as { value }, unparsable text as { unparsable }), for assertions on any answer. */
export function parseBody (body: string): Record<string, unknown> {
  try {
    const value: unknown = JSON.parse(body)
    return typeof value === 'object' && value !== null ? value as Record<string, unknown> : { value }
  } catch {
    return { unparsable: body.slice(0, 200) }
  }
}

/**
 * Asserts that an answer is an RFC 6749 §5.2 error body and nothing more: the
 * status, JSON of exactly error and a short error_description, and no
 * internal detail. For any route (the not-found handler, /oauth/verify).
 */
export function assertErrorBody (t: Test, res: LightMyRequestResponse, status: number, error: string, what = `${status} ${error}`): void {
  t.equal(res.statusCode, status, `${what}: status ${status}`, { body: res.body })
  t.match(res.headers['content-type'], /^application\/json/, `${what}: a JSON answer`)
  const body = parseBody(res.body)
  t.strictSame(Object.keys(body).sort(), ['error', 'error_description'], `${what}: the body has error and error_description only`)
  t.equal(body.error, error, `${what}: error ${error}`)
  const description = body.error_description
  t.ok(typeof description === 'string' && description.length > 0 && description.length <= 200, `${what}: a short error_description`)
  const leak = LEAKS.find((pattern) => pattern.test(res.body))
  t.equal(leak, undefined, `${what}: no stack trace or internal detail in the answer`)
}

/**
 * An error of an endpoint that authenticates clients (token, revocation,
 * introspection): the error body, not cacheable (RFC 6749 §5.1), and on a
 * 401 the Basic challenge (`challenge`: when the realm names another issuer).
 */
export function assertOAuthError (t: Test, res: LightMyRequestResponse, status: number, error: string, what = `${status} ${error}`, challenge = REALM_CHALLENGE): void {
  assertErrorBody(t, res, status, error, what)
  t.equal(res.headers['cache-control'], 'no-store', `${what}: Cache-Control no-store`)
  t.equal(res.headers.pragma, 'no-cache', `${what}: Pragma no-cache`)
  if (status === 401) t.equal(res.headers['www-authenticate'], challenge, `${what}: WWW-Authenticate names the realm`)
}

/** 401 invalid_client, with the Basic challenge. */
export function assertInvalidClient (t: Test, res: LightMyRequestResponse, what: string, challenge = REALM_CHALLENGE): void {
  assertOAuthError(t, res, 401, 'invalid_client', what, challenge)
}
