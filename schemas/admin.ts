// The admin API's requests and answers. The client's own fields are those of
// schemas/client.ts, which the CLI shares; this file adds paging, rotation
// and the error answers.
import { Type } from 'typebox'
import { ClientCreate, ClientEventView, ClientPatch, ClientView, EXAMPLE_CLIENT } from './client.ts'
import { oauthErrorRef } from './oauth.ts'

/** The longest grace period a rotation may give the previous secret. */
export const MAX_GRACE_SECONDS = 30 * 86400

const CLIENT_ID = Type.String({ minLength: 1, maxLength: 255, pattern: '^[\\x21-\\x7E]+$' })

export const clientIdParams = Type.Object({ client_id: CLIENT_ID })

export const createClientBody = ClientCreate
export const patchClientBody = ClientPatch
export const viewOfClient = ClientView

/** The client and, this once, its secret. */
export const createdClient = Type.Intersect([ClientView, Type.Object({ client_secret: Type.String() })], {
  description: 'Created: the client and its secret, shown this once',
  examples: [{ ...EXAMPLE_CLIENT, client_secret: 'kS9vQ2-x7LmR4tWz1bY8nE3cF6hJ0pUa' }]
})

/** The most items a page holds, and how many when the query does not say. */
export const MAX_PAGE_SIZE = 200
export const DEFAULT_PAGE_SIZE = 50

// Query values are strings, and the service does not coerce types: digits
// here, a number in the route.
const limit = Type.Optional(Type.String({ pattern: '^[1-9][0-9]{0,2}$', description: `items per page, 1 to ${MAX_PAGE_SIZE} (default ${DEFAULT_PAGE_SIZE})` }))

export const clientListQuery = Type.Object({
  limit,
  /** the `next` of the previous page */
  after: Type.Optional(CLIENT_ID)
}, { additionalProperties: false })

export const clientList = Type.Object({
  clients: Type.Array(ClientView),
  /** pass as `after` for the following page; null on the last one */
  next: Type.Union([Type.String(), Type.Null()])
}, { description: 'A page of clients', examples: [{ clients: [EXAMPLE_CLIENT], next: null }] })

export const eventListQuery = Type.Object({
  limit,
  /** the `next` of the previous page */
  before: Type.Optional(Type.String({ pattern: '^[1-9][0-9]{0,17}$' }))
}, { additionalProperties: false })

export const eventList = Type.Object({
  events: Type.Array(ClientEventView),
  next: Type.Union([Type.Integer(), Type.Null()])
}, {
  description: 'A page of the client\'s changes, newest first',
  examples: [{
    events: [{
      id: 42,
      client_id: 'billing-service',
      action: 'updated',
      actor: 'client:ops-automation',
      at: '2026-01-06T14:00:00.000Z',
      before: { rate_limit: 600 },
      after: { rate_limit: 1200 }
    }],
    next: 41
  }]
})

/** The body is optional: without one, the previous secret stops at once. */
export const rotateSecretBody = Type.Object({
  /** how long the previous secret keeps working: 3600s, 15m, 24h, 7d; absent or 0: it stops now */
  grace: Type.Optional(Type.String({ maxLength: 32 }))
}, { additionalProperties: false })

export const rotatedSecret = Type.Object({
  client_id: Type.String(),
  client_secret: Type.String(),
  previous_secret_expires_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()])
}, {
  description: 'Rotated: the new secret, shown this once, and until when the previous one works',
  examples: [{ client_id: 'billing-service', client_secret: 'Vb7nQ1-p4XsK9wLz2cR6tY0mH3jF8dUe', previous_secret_expires_at: '2026-01-07T14:00:00.000Z' }]
})

/** 204: done, nothing to say. */
export const noContent = Type.Null({ description: 'Deleted; no content (RFC 9110 §15.3.5)' })

/** Every error answer of the admin API: the OAuth error body. */
export const adminErrorResponses = {
  400: oauthErrorRef,
  401: oauthErrorRef,
  403: oauthErrorRef,
  404: oauthErrorRef,
  409: oauthErrorRef,
  413: oauthErrorRef,
  503: oauthErrorRef
}
