// The admin API's requests and answers for signing keys kept in the database
// (KEY_STORE=database), and the translation from the records of
// signing-keys/stored.ts. The life cycle's rules live there; this file only
// says how they look over HTTP.
import { Type, type Static } from 'typebox'
import { SIGNING_ALGORITHMS } from '../signing-keys/algorithms.ts'
import { KID_PATTERN } from '../signing-keys/kid.ts'
import type { KeyEvent, RetirementResult, RotationResult, StoredKey } from '../signing-keys/stored.ts'
import { oauthErrorRef } from './oauth.ts'

/** The most events a page holds, and how many when the query does not say. */
export const MAX_KEY_EVENTS_PAGE = 500
export const DEFAULT_KEY_EVENTS_PAGE = 50

const dateTime = Type.String({ format: 'date-time' })
const dateTimeOrNull = Type.Union([dateTime, Type.Null()])
const algorithm = Type.Unsafe<StoredKey['algorithm']>({ type: 'string', enum: [...SIGNING_ALGORITHMS] })
const state = Type.Union([Type.Literal('next'), Type.Literal('current'), Type.Literal('retired')])

const EXAMPLE_KID = 'NjVmYTk2ZDctOGI1My00Y2E0LWE1ZjAtM2U2YjQxNjc0ZGQ'
const EXAMPLE_NEXT_KID = 'q1Zr0hT8c4Xw9mB2eV6yJ3kL7nP5sD0fG1aH4uI8oE2'

// A kid is an RFC 7638 thumbprint: SHA-256, base64url, 43 characters.
export const kidParams = Type.Object({ kid: Type.String({ pattern: KID_PATTERN }) })

/** One stored key as operators see it: its public half only. */
export const KeyView = Type.Object({
  kid: Type.String(),
  algorithm,
  /** next: published, signs from activate_after; current: signs; retired: published until remove_after */
  state,
  created_at: dateTime,
  activate_after: dateTimeOrNull,
  activated_at: dateTimeOrNull,
  retired_at: dateTimeOrNull,
  remove_after: dateTimeOrNull,
  public_jwk: Type.Record(Type.String(), Type.String())
}, { $id: 'KeyView' })
/** The JSON of KeyView, as TypeScript. */
export type KeyViewBody = Static<typeof KeyView>

const EXAMPLE_KEY: KeyViewBody = {
  kid: EXAMPLE_KID,
  algorithm: 'RS256',
  state: 'current',
  created_at: '2026-01-05T09:30:00.000Z',
  activate_after: null,
  activated_at: '2026-01-05T12:30:00.000Z',
  retired_at: null,
  remove_after: null,
  public_jwk: { kty: 'RSA', kid: EXAMPLE_KID, use: 'sig', alg: 'RS256', e: 'AQAB', n: 'uncLKX...' }
}

export const keyList = Type.Object({
  /** the kid this instance signs with now: another instance may lag behind the stored current key for up to a poll */
  signing_kid: Type.String(),
  keys: Type.Array(KeyView)
}, {
  description: 'The stored keys (current, next, then retired, newest first) and the key this instance signs with',
  examples: [{ signing_kid: EXAMPLE_KID, keys: [EXAMPLE_KEY] }]
})

export const rotateKeysBody = Type.Object({
  /** sign with the new key at once and retire the current one (gateways that cached the JWKS refuse its tokens until they read it again) */
  now: Type.Optional(Type.Boolean()),
  /** the new key's algorithm (default JWT_ALGORITHM) */
  algorithm: Type.Optional(algorithm)
}, { additionalProperties: false })

export const rotation = Type.Object({
  kid: Type.String(),
  algorithm,
  /** current: it signs now (`now`); next: it signs from activate_after */
  state: Type.Union([Type.Literal('next'), Type.Literal('current')]),
  activate_after: dateTimeOrNull,
  /** the key that retired (with `now`); null otherwise */
  retired: Type.Union([Type.String(), Type.Null()]),
  /** whether this rotation made the key; false: the key that was already waiting was used */
  created: Type.Boolean()
}, {
  description: 'Rotated: the key that signs next (or now), and the key it retired',
  examples: [{ kid: EXAMPLE_NEXT_KID, algorithm: 'RS256', state: 'next', activate_after: '2026-02-04T12:30:00.000Z', retired: null, created: true }]
})

export const retireKeyBody = Type.Object({
  /** a retired key: remove it from the JWKS now, and every token it signed stops being valid */
  now: Type.Optional(Type.Boolean())
}, { additionalProperties: false })

export const retirement = Type.Object({
  kid: Type.String(),
  /** removed: it left the JWKS now; retired: it leaves at remove_after */
  outcome: Type.Union([Type.Literal('removed'), Type.Literal('retired')]),
  remove_after: dateTimeOrNull
}, {
  description: 'Retired: whether the key has left the JWKS',
  examples: [{ kid: EXAMPLE_NEXT_KID, outcome: 'removed', remove_after: null }]
})

export const keyEventListQuery = Type.Object({
  // Query values are strings, and the service does not coerce types.
  limit: Type.Optional(Type.String({ pattern: '^[1-9][0-9]{0,2}$', description: `events per page, 1 to ${MAX_KEY_EVENTS_PAGE} (default ${DEFAULT_KEY_EVENTS_PAGE})` })),
  /** the `next` of the previous page */
  before: Type.Optional(Type.String({ pattern: '^[1-9][0-9]{0,17}$' }))
}, { additionalProperties: false })

/** One recorded change of a key: who, when, and its details (never a private key). */
export const KeyEventView = Type.Object({
  id: Type.Integer(),
  kid: Type.String(),
  action: Type.Union([Type.Literal('created'), Type.Literal('imported'), Type.Literal('activated'),
    Type.Literal('retired'), Type.Literal('removed'), Type.Literal('rescheduled'), Type.Literal('rewrapped')]),
  actor: Type.String(),
  at: dateTime,
  details: Type.Record(Type.String(), Type.Unknown())
}, { $id: 'KeyEventView' })
/** The JSON of KeyEventView, as TypeScript. */
export type KeyEventViewBody = Static<typeof KeyEventView>

export const keyEventList = Type.Object({
  events: Type.Array(KeyEventView),
  /** pass as `before` for the following page; null on the last one */
  next: Type.Union([Type.Integer(), Type.Null()])
}, {
  description: 'A page of the signing keys\' history, newest first',
  examples: [{
    events: [{ id: 7, kid: EXAMPLE_NEXT_KID, action: 'created', actor: 'client:ops-automation', at: '2026-02-04T09:30:00.000Z', details: { algorithm: 'RS256', state: 'next', activate_after: '2026-02-04T12:30:00.000Z' } }],
    next: 6
  }]
})

/** An error answer with what it means here; the body is the shared OAuth error (an allOf keeps its reference). */
const keyError = (description: string, example: { error: string, error_description: string }): ReturnType<typeof Type.Unsafe<Static<typeof oauthErrorRef>>> =>
  Type.Unsafe<Static<typeof oauthErrorRef>>({ allOf: [oauthErrorRef], description, examples: [example] })

/** The refusal of every key operation when the keys come from the settings. */
export const SETTINGS_MODE = 'signing keys come from the settings (KEY_STORE=settings); set KEY_STORE=database to keep them in the database, where this API manages them'

/** The admin API's error answers, with the keys' own 404 and 409. */
export const keyErrorResponses = {
  400: oauthErrorRef,
  401: oauthErrorRef,
  403: oauthErrorRef,
  404: keyError('not_found: no stored key with this kid', { error: 'not_found', error_description: `no signing key ${EXAMPLE_KID}` }),
  409: keyError('conflict: the life cycle does not allow the change (the current key cannot retire, a retired key leaves early only with `now`, ' +
    'another algorithm while a next key waits), or the keys come from the settings (KEY_STORE=settings)',
  { error: 'conflict', error_description: SETTINGS_MODE }),
  413: oauthErrorRef,
  503: oauthErrorRef
}

/** A time as ISO 8601 text, or null: how the keys' times travel (the admin API, the CLI's JSON, the control socket). */
export const iso = (date: Date | null | undefined): string | null => date?.toISOString() ?? null

export function keyView (key: StoredKey): KeyViewBody {
  return {
    kid: key.kid,
    algorithm: key.algorithm,
    state: key.state,
    created_at: key.createdAt.toISOString(),
    activate_after: iso(key.activateAfter),
    activated_at: iso(key.activatedAt),
    retired_at: iso(key.retiredAt),
    remove_after: iso(key.removeAfter),
    public_jwk: key.publicJwk
  }
}

export function rotationView (result: RotationResult): Static<typeof rotation> {
  return {
    kid: result.kid,
    algorithm: result.algorithm,
    state: result.state,
    activate_after: iso(result.activateAfter),
    retired: result.retired ?? null,
    created: result.created
  }
}

export function retirementView (result: RetirementResult): Static<typeof retirement> {
  return { kid: result.kid, outcome: result.outcome, remove_after: iso(result.removeAfter) }
}

export function keyEventView (event: KeyEvent): KeyEventViewBody {
  return { id: event.id, kid: event.kid, action: event.action, actor: event.actor, at: event.at.toISOString(), details: event.details }
}
