// Assertions that many test files make about the service's answers.
import type { Test } from 'tap'
import type { LightMyRequestResponse } from 'fastify'

/** The WWW-Authenticate challenge of a 401 answer. */
export const REALM_CHALLENGE = 'Basic realm="session-service"'
