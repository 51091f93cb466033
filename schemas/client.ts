// A client as operators speak of it (the CLI, the admin API): the JSON
// shapes (snake_case), the rules that span fields, and the translation to
// and from the repository's records (storage/clients.ts). Every client rule
// is written here once; neither the CLI nor a route keeps a copy.
import { randomBytes, randomUUID } from 'node:crypto'
import { Type, type Static, type TArray, type TSchema, type TString } from 'typebox'
import Value from 'typebox/value'
import { GRANT_TYPES } from '../grants/index.ts'
import { REGISTERED_CLAIMS } from '../tokens/issuance.ts'
import { MAX_SECRET_BYTES, type ClientChanges, type ClientEvent, type ClientRecord, type NewClient } from '../storage/clients.ts'
import { SCOPE_TOKEN } from './scope.ts'

/** The shortest secret accepted from an operator (a generated one has 32 bytes). */
export const MIN_SECRET_BYTES = 16
export const MAX_NAME_LENGTH = 200

const CLIENT_ID_PATTERN = '^[\\x21-\\x7E]{1,255}$'
const token = (pattern: string): TString => Type.String({ pattern, maxLength: 255 })
const list = <T extends TSchema>(item: T): TArray<T> => Type.Array(item, { maxItems: 100, uniqueItems: true })

const fields = {
  name: Type.String({ minLength: 1, maxLength: MAX_NAME_LENGTH }),
  scopes: list(token(SCOPE_TOKEN.source)),
  default_scopes: list(token(SCOPE_TOKEN.source)),
  audiences: list(token('^[\\x21-\\x7E]+$')),
  /** token requests per minute; null: the service default */
  rate_limit: Type.Union([Type.Integer({ minimum: 1, maximum: 999_999_999 }), Type.Null()]),
  /** added to each access token; registered claims are refused */
  claims: Type.Record(Type.String({ maxLength: 100 }), Type.Unknown(), { maxProperties: 50 }),
  /** private_key_jwt: an https URL of the client's JWK Set; null: none */
  jwks_uri: Type.Union([Type.String({ maxLength: 2048 }), Type.Null()]),
  grant_types: Type.Array(Type.Unsafe<string>({ type: 'string', enum: [...GRANT_TYPES] }), { minItems: 1, uniqueItems: true }),
  /** token exchange: clients whose access tokens this one may exchange (its own always) */
  may_exchange: list(Type.String({ pattern: CLIENT_ID_PATTERN })),
  /** RFC 9449 §5.2: every token request must carry a DPoP proof, so every token is bound to a key */
  dpop_bound_access_tokens: Type.Boolean()
}

/** The settings a create may give and a patch may change, each optional. */
const optionalSettings = {
  scopes: Type.Optional(fields.scopes),
  default_scopes: Type.Optional(fields.default_scopes),
  audiences: Type.Optional(fields.audiences),
  rate_limit: Type.Optional(fields.rate_limit),
  claims: Type.Optional(fields.claims),
  jwks_uri: Type.Optional(fields.jwks_uri),
  grant_types: Type.Optional(fields.grant_types),
  may_exchange: Type.Optional(fields.may_exchange),
  dpop_bound_access_tokens: Type.Optional(fields.dpop_bound_access_tokens)
}

/**
 * A client to register. client_id: generated (a UUID) when absent.
 * client_secret: generated (generateClientSecret) when absent, which is the
 * recommended way; given, it must have 16 to 72 bytes (bcrypt reads 72), for
 * a client whose secret already exists elsewhere. Either way it is returned
 * once and only its hash is stored.
 */
export const ClientCreate = Type.Object({
  client_id: Type.Optional(Type.String({ pattern: CLIENT_ID_PATTERN })),
  client_secret: Type.Optional(Type.String({ minLength: 1, maxLength: MAX_SECRET_BYTES })),
  name: fields.name,
  ...optionalSettings
}, { additionalProperties: false, $id: 'ClientCreate' })
/** The JSON of ClientCreate, as TypeScript. */
export type ClientCreateBody = Static<typeof ClientCreate>

/** Changes to a client: only the fields given change; at least one. */
export const ClientPatch = Type.Object({
  name: Type.Optional(fields.name),
  ...optionalSettings
}, { additionalProperties: false, minProperties: 1, $id: 'ClientPatch' })
/** The JSON of ClientPatch, as TypeScript. */
export type ClientPatchBody = Static<typeof ClientPatch>

const dateTime = Type.String({ format: 'date-time' })

/** A client as the admin API shows it, for the API documentation. */
export const EXAMPLE_CLIENT = {
  client_id: 'billing-service',
  name: 'Billing service',
  status: 'enabled',
  scopes: ['orders:read', 'orders:write'],
  default_scopes: ['orders:read'],
  audiences: ['https://api.example.com'],
  rate_limit: 600,
  claims: {},
  jwks_uri: null,
  grant_types: ['client_credentials', 'refresh_token'],
  may_exchange: [],
  dpop_bound_access_tokens: false,
  authentication: ['client_secret'],
  previous_secret_expires_at: null,
  created_at: '2026-01-05T09:30:00.000Z',
  updated_at: '2026-01-05T09:30:00.000Z'
}

/** A client as shown: every setting, never a secret or a hash. */
export const ClientView = Type.Object({
  client_id: Type.String(),
  name: Type.String(),
  status: Type.Union([Type.Literal('enabled'), Type.Literal('disabled')]),
  scopes: Type.Array(Type.String()),
  default_scopes: Type.Array(Type.String()),
  audiences: Type.Array(Type.String()),
  rate_limit: Type.Union([Type.Integer(), Type.Null()]),
  claims: Type.Record(Type.String(), Type.Unknown()),
  jwks_uri: Type.Union([Type.String(), Type.Null()]),
  grant_types: Type.Array(Type.String()),
  /** token exchange: the clients whose access tokens it may exchange, besides its own */
  may_exchange: Type.Array(Type.String()),
  dpop_bound_access_tokens: Type.Boolean(),
  /** how it may authenticate: client_secret (basic or post), private_key_jwt */
  authentication: Type.Array(Type.Union([Type.Literal('client_secret'), Type.Literal('private_key_jwt')])),
  /** until when the secret before the last rotation still works; null: it does not */
  previous_secret_expires_at: Type.Union([dateTime, Type.Null()]),
  created_at: dateTime,
  updated_at: dateTime
}, { $id: 'ClientView', description: 'The client, every field but its secrets', examples: [EXAMPLE_CLIENT] })
/** The JSON of ClientView, as TypeScript. */
export type ClientViewBody = Static<typeof ClientView>

/** One recorded change of a client; before and after are client settings without secrets. */
export const ClientEventView = Type.Object({
  id: Type.Integer(),
  client_id: Type.String(),
  action: Type.Union([Type.Literal('created'), Type.Literal('updated'), Type.Literal('secret_rotated'),
    Type.Literal('enabled'), Type.Literal('disabled'), Type.Literal('deleted')]),
  actor: Type.String(),
  at: dateTime,
  before: Type.Union([Type.Record(Type.String(), Type.Unknown()), Type.Null()]),
  after: Type.Union([Type.Record(Type.String(), Type.Unknown()), Type.Null()])
}, { $id: 'ClientEventView' })
/** The JSON of ClientEventView, as TypeScript. */
export type ClientEventViewBody = Static<typeof ClientEventView>

/** Input that breaks a client rule; the message names the field, never a secret. */
export class InvalidClientError extends Error {
  readonly code = 'SS_INVALID_CLIENT_INPUT'
  constructor (message: string) {
    super(message)
    this.name = 'InvalidClientError'
  }
}

/** 256 random bits, base64url: the secret a client gets unless one is given. */
export const generateClientSecret = (): string => randomBytes(32).toString('base64url')

/** A new client's id when none is given. */
export const generateClientId = (): string => randomUUID()

/** Whether `id` is a valid client id: 1 to 255 visible ASCII characters. */
export const isClientId = (id: string): boolean => new RegExp(CLIENT_ID_PATTERN).test(id)

/** Refuses a secret chosen by an operator that bcrypt would truncate or that is too short to be one. */
export function checkClientSecret (secret: string): void {
  const bytes = Buffer.byteLength(secret, 'utf8')
  if (bytes > MAX_SECRET_BYTES) throw new InvalidClientError(`client_secret is ${bytes} bytes; at most ${MAX_SECRET_BYTES} are allowed (bcrypt ignores the rest)`)
  if (bytes < MIN_SECRET_BYTES) throw new InvalidClientError(`client_secret is shorter than ${MIN_SECRET_BYTES} bytes`)
}

/** What a field's pattern asks for, in words. */
const PATTERN_HINTS: Record<string, string> = {
  client_id: 'must be 1 to 255 visible ASCII characters',
  scopes: 'must be scope tokens (RFC 6749 §3.3)',
  default_scopes: 'must be scope tokens (RFC 6749 §3.3)',
  audiences: 'must be visible ASCII characters',
  may_exchange: 'must be client ids (1 to 255 visible ASCII characters)'
}

function checkShape (schema: TSchema, value: unknown): void {
  const first = Value.Errors(schema, value).find((error) => error.keyword !== 'boolean')
  if (first === undefined) return
  const field = first.instancePath.replace(/^\//, '').replaceAll('/', '.')
  const detail = first.keyword === 'minProperties' ? 'give at least one field to change' : first.keyword === 'pattern' ? PATTERN_HINTS[field.split('.')[0] ?? ''] ?? first.message : first.message
  throw new InvalidClientError(field === '' ? detail : `${field}: ${detail}`)
}

/** The rules that span fields or go beyond a JSON Schema; `fields` as given (a patch may lack some). */
function checkRules (fields: Partial<ClientPatchBody>): void {
  const { scopes, default_scopes: defaultScopes, claims, jwks_uri: jwksUri } = fields
  if (scopes !== undefined && defaultScopes !== undefined) {
    const outside = defaultScopes.find((scope) => !scopes.includes(scope))
    if (outside !== undefined) throw new InvalidClientError(`default_scopes: "${outside}" is not among scopes`)
  }
  const registered = Object.keys(claims ?? {}).find((name) => REGISTERED_CLAIMS.has(name))
  if (registered !== undefined) throw new InvalidClientError(`claims: "${registered}" is a registered claim the service sets itself`)
  if (jwksUri !== undefined && jwksUri !== null && !isHttpsUrl(jwksUri)) throw new InvalidClientError('jwks_uri: must be an https URL')
}

function isHttpsUrl (text: string): boolean {
  try {
    const url = new URL(text)
    return url.protocol === 'https:' && url.hostname !== '' && url.username === '' && url.password === ''
  } catch {
    return false
  }
}

/** The repository's changes for a patch, checked; throws InvalidClientError. */
export function clientChangesFrom (patch: ClientPatchBody): ClientChanges {
  checkShape(ClientPatch, patch)
  checkRules(patch)
  const changes: ClientChanges = {
    name: patch.name,
    rateLimit: patch.rate_limit,
    scopes: patch.scopes,
    defaultScopes: patch.default_scopes,
    audiences: patch.audiences,
    claims: patch.claims,
    jwksUri: patch.jwks_uri,
    grantTypes: patch.grant_types,
    mayExchange: patch.may_exchange,
    dpopBoundAccessTokens: patch.dpop_bound_access_tokens
  }
  return Object.fromEntries(Object.entries(changes).filter(([, value]) => value !== undefined))
}

/**
 * The client to insert for a create request, checked, and its secret in
 * clear (generated unless given), to be shown once. Throws InvalidClientError.
 */
export function newClientFrom (create: ClientCreateBody): { client: NewClient, secret: string } {
  // First, so that a secret too long is refused with its length in bytes.
  if (typeof create.client_secret === 'string') checkClientSecret(create.client_secret)
  checkShape(ClientCreate, create)
  checkRules({ ...create, scopes: create.scopes ?? [], default_scopes: create.default_scopes ?? [] })
  const secret = create.client_secret ?? generateClientSecret()
  const client: NewClient = {
    id: create.client_id ?? generateClientId(),
    secret,
    name: create.name,
    rateLimit: create.rate_limit ?? null,
    scopes: create.scopes ?? [],
    defaultScopes: create.default_scopes ?? [],
    audiences: create.audiences ?? [],
    claims: create.claims ?? {},
    jwksUri: create.jwks_uri ?? null,
    ...(create.grant_types === undefined ? {} : { grantTypes: create.grant_types }),
    ...(create.may_exchange === undefined ? {} : { mayExchange: create.may_exchange }),
    ...(create.dpop_bound_access_tokens === undefined ? {} : { dpopBoundAccessTokens: create.dpop_bound_access_tokens })
  }
  return { client, secret }
}

/** The end of the previous secret's grace, if it is still running at `now`. */
function graceEnd (record: ClientRecord, now: number): string | null {
  const end = record.previousSecretExpiresAt
  return record.previousSecretHash !== null && end !== null && end.getTime() > now ? end.toISOString() : null
}

/** A client as shown to operators: every setting, never its secret or hashes. */
export function clientView (record: ClientRecord, now: number = Date.now()): ClientViewBody {
  return {
    client_id: record.id,
    name: record.name,
    status: record.status,
    scopes: record.scopes,
    default_scopes: record.defaultScopes,
    audiences: record.audiences,
    rate_limit: record.rateLimit,
    claims: record.claims,
    jwks_uri: record.jwksUri,
    grant_types: record.grantTypes,
    may_exchange: record.mayExchange,
    dpop_bound_access_tokens: record.dpopBoundAccessTokens,
    authentication: [...(record.secretHash !== null ? ['client_secret' as const] : []),
      ...(record.jwksUri !== null || record.jwks !== null ? ['private_key_jwt' as const] : [])],
    previous_secret_expires_at: graceEnd(record, now),
    created_at: record.createdAt.toISOString(),
    updated_at: record.updatedAt.toISOString()
  }
}

export function clientEventView (event: ClientEvent): ClientEventViewBody {
  return {
    id: event.id,
    client_id: event.clientId,
    action: event.action,
    actor: event.actor,
    at: event.at.toISOString(),
    before: event.before,
    after: event.after
  }
}
