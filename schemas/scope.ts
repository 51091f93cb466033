import { OAuthError } from '../plugins/errors.ts'

/** RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E ). */
export const SCOPE_TOKEN = /^[\x21\x23-\x5B\x5D-\x7E]+$/

/** The tokens of a scope the service itself wrote (a session's, a token's claim); none when it is not a string. */
export function scopesOf (scope: unknown): string[] {
  return typeof scope === 'string' ? scope.split(' ').filter((value) => value !== '') : []
}

/**
 * Parses a scope parameter (RFC 6749 §3.3: space-delimited scope tokens) into
 * its distinct tokens; undefined when the parameter is absent or names none.
 * A malformed token is invalid_scope.
 */
export function parseScope (scope: string | undefined): string[] | undefined {
  if (scope === undefined) return undefined
  const scopes = scopesOf(scope)
  const bad = scopes.find((value) => !SCOPE_TOKEN.test(value))
  if (bad !== undefined) throw new OAuthError(400, 'invalid_scope', 'scope must be space-delimited scope tokens (RFC 6749 §3.3)')
  return scopes.length === 0 ? undefined : [...new Set(scopes)]
}
