// The clients table and its history (client_events): the one place that
// knows their SQL. The service reads records through it (behind its caches);
// the CLI and the admin API manage clients through it. Each audited change is
// one statement that writes the change and its event together (one implicit
// transaction), so that it works alike on a pg pool, on PGlite, and through
// the embedded service's control socket, where no transaction can be held open.
import type { JsonWebKey } from 'node:crypto'
import bcrypt from 'bcryptjs'
import type { Queryable } from './database.ts'

export interface Client {
  id: string
  /** bcrypt hash of the secret; null for a client that authenticates with keys only */
  secretHash: string | null
  /** bcrypt hash of the secret before the last rotation, accepted until previousSecretExpiresAt */
  previousSecretHash: string | null
  /** end of the previous secret's grace period; null when there is none */
  previousSecretExpiresAt: Date | null
  /** token requests per minute; null: the service default */
  rateLimit: number | null
  name: string
  status: 'enabled' | 'disabled'
  /** scopes the client may ask for */
  scopes: string[]
  /** scopes granted when a token request names none */
  defaultScopes: string[]
  /** audiences the client may ask for besides JWT_AUDIENCE */
  audiences: string[]
  /** claims added to each of its access tokens (registered claims excluded) */
  claims: Record<string, unknown>
  /** private_key_jwt: where its public keys are published, or the keys themselves */
  jwksUri: string | null
  jwks: { keys: JsonWebKey[] } | null
  /** the grant types it may use (grants/index.ts) */
  grantTypes: string[]
  /** token exchange: the clients whose access tokens it may exchange, besides its own */
  mayExchange: string[]
  /** every token request must carry a DPoP proof (RFC 9449 §5.2 dpop_bound_access_tokens) */
  dpopBoundAccessTokens: boolean
}

/** A client as stored, with the times of its creation and last change. */
export interface ClientRecord extends Client {
  createdAt: Date
  updatedAt: Date
}

export type ClientStatus = Client['status']

/** The settings `update` may change; a field left out keeps its value. */
export interface ClientChanges {
  name?: string
  rateLimit?: number | null
  scopes?: string[]
  defaultScopes?: string[]
  audiences?: string[]
  claims?: Record<string, unknown>
  jwksUri?: string | null
  /** on insert, default: the column's (client_credentials and refresh_token) */
  grantTypes?: string[]
  /** on insert, default: the column's (none) */
  mayExchange?: string[]
  /** on insert, default: the column's (false) */
  dpopBoundAccessTokens?: boolean
}

/** A client to register; every field but the id has the table's default. */
export interface NewClient extends ClientChanges {
  id: string
  /** hashed with bcrypt here; the secret itself is never stored */
  secret?: string
  jwks?: { keys: JsonWebKey[] } | null
}

export interface SecretRotation {
  /** the new secret, hashed here at `cost` */
  secret: string
  cost: number
  /** how long the current secret keeps working; 0: it stops at once */
  graceMs: number
  actor: string
}

export type ClientAction = 'created' | 'updated' | 'secret_rotated' | 'enabled' | 'disabled' | 'deleted'

/** One recorded change of a client. before and after never hold a secret or a hash. */
export interface ClientEvent {
  id: number
  clientId: string
  action: ClientAction
  /** who made it: `cli:<user>`, or the admin API's caller */
  actor: string
  at: Date
  before: Record<string, unknown> | null
  after: Record<string, unknown> | null
}

export interface ClientRow {
  client_id: string
  client_secret_hash: string | null
  previous_secret_hash: string | null
  previous_secret_expires_at: Date | string | null
  rate_limit: number | null
  name: string
  status: ClientStatus
  scopes: string[]
  default_scopes: string[]
  audiences: string[]
  claims: Record<string, unknown>
  jwks_uri: string | null
  jwks: { keys: JsonWebKey[] } | null
  grant_types: string[]
  may_exchange: string[]
  dpop_bound_access_tokens: boolean
  created_at: Date | string
  updated_at: Date | string
}

export const CLIENT_COLUMNS = 'client_id, client_secret_hash, previous_secret_hash, previous_secret_expires_at, rate_limit, name, status, scopes, default_scopes, audiences, claims, jwks_uri, jwks, grant_types, may_exchange, dpop_bound_access_tokens, created_at, updated_at'

/** bcrypt reads only the first 72 bytes; a longer secret would be truncated silently. */
export const MAX_SECRET_BYTES = 72

/** bcrypt cost of the secrets this service hashes by default (BCRYPT_COST). */
export const BCRYPT_COST = 12

/** The most rows one page of `list` or `events` returns. */
export const MAX_PAGE = 1000

export { CLIENT_CHANGES_CHANNEL, clientCacheKey } from './client-cache.ts'

const dateOrNull = (value: Date | string | null): Date | null => value === null ? null : new Date(value)

export function clientFromRow (row: ClientRow): Client {
  return {
    id: row.client_id,
    secretHash: row.client_secret_hash,
    previousSecretHash: row.previous_secret_hash,
    previousSecretExpiresAt: dateOrNull(row.previous_secret_expires_at),
    rateLimit: row.rate_limit,
    name: row.name,
    status: row.status,
    scopes: row.scopes,
    defaultScopes: row.default_scopes,
    audiences: row.audiences,
    claims: row.claims,
    jwksUri: row.jwks_uri,
    jwks: row.jwks,
    grantTypes: row.grant_types,
    mayExchange: row.may_exchange,
    dpopBoundAccessTokens: row.dpop_bound_access_tokens
  }
}

function recordFromRow (row: ClientRow): ClientRecord {
  return { ...clientFromRow(row), createdAt: new Date(row.created_at), updatedAt: new Date(row.updated_at) }
}

/** A secret longer than bcrypt reads (MAX_SECRET_BYTES): refused, never truncated. */
export class SecretTooLongError extends Error {
  readonly code = 'SS_SECRET_TOO_LONG'
  constructor () {
    super(`a client secret may be at most ${MAX_SECRET_BYTES} bytes`)
    this.name = 'SecretTooLongError'
  }
}

/** A client id that is already registered. */
export class ClientExistsError extends Error {
  readonly code = 'SS_CLIENT_EXISTS'
  constructor (clientId: string) {
    super(`a client "${clientId}" already exists`)
    this.name = 'ClientExistsError'
  }
}

/** A change the table refuses as a whole (a rule that spans the stored and the changed fields). */
export class ClientRuleError extends Error {
  readonly code = 'SS_CLIENT_RULE'
  constructor (message: string) {
    super(message)
    this.name = 'ClientRuleError'
  }
}

async function hashSecret (secret: string, cost: number): Promise<string> {
  if (Buffer.byteLength(secret, 'utf8') > MAX_SECRET_BYTES) throw new SecretTooLongError()
  return await bcrypt.hash(secret, cost)
}

const jsonOrNull = (value: unknown): string | null => value === undefined || value === null ? null : JSON.stringify(value)

/** The columns and values of a new client's row: only what it sets, the table's defaults for the rest. */
function newRow (client: NewClient, hash: string | null): { columns: string[], values: unknown[] } {
  const row: Record<string, unknown> = {
    client_id: client.id,
    client_secret_hash: hash,
    name: client.name ?? '',
    rate_limit: client.rateLimit ?? null,
    scopes: client.scopes ?? [],
    default_scopes: client.defaultScopes ?? [],
    audiences: client.audiences ?? [],
    claims: JSON.stringify(client.claims ?? {}),
    jwks_uri: client.jwksUri ?? null,
    jwks: jsonOrNull(client.jwks)
  }
  if (client.grantTypes !== undefined) row.grant_types = client.grantTypes
  if (client.mayExchange !== undefined) row.may_exchange = client.mayExchange
  if (client.dpopBoundAccessTokens !== undefined) row.dpop_bound_access_tokens = client.dpopBoundAccessTokens
  return { columns: Object.keys(row), values: Object.values(row) }
}

const placeholders = (count: number, from = 1): string => Array.from({ length: count }, (_, index) => `$${index + from}`).join(', ')

/** Inserts a client row, without an event, through any pg-style query function (a pool, a client): for seeding and benchmarks. */
export async function insertClientRow (db: { query: (text: string, values: unknown[]) => Promise<unknown> }, client: NewClient, cost: number = BCRYPT_COST): Promise<void> {
  const hash = client.secret === undefined ? null : await hashSecret(client.secret, cost)
  const { columns, values } = newRow(client, hash)
  await db.query(`INSERT INTO clients (${columns.join(', ')}) VALUES (${placeholders(values.length)})`, values)
}

/**
 * A client's settings as an event records them (`alias` names a row of
 * clients): listed one by one, so that a secret column added later stays out
 * of the history unless it is added here.
 */
const auditedFields = (alias: string): string => `jsonb_build_object(
  'client_id', ${alias}.client_id, 'name', ${alias}.name, 'status', ${alias}.status,
  'scopes', to_jsonb(${alias}.scopes), 'default_scopes', to_jsonb(${alias}.default_scopes),
  'audiences', to_jsonb(${alias}.audiences), 'rate_limit', ${alias}.rate_limit, 'claims', ${alias}.claims,
  'jwks_uri', ${alias}.jwks_uri, 'grant_types', to_jsonb(${alias}.grant_types),
  'may_exchange', to_jsonb(${alias}.may_exchange),
  'dpop_bound_access_tokens', ${alias}.dpop_bound_access_tokens)`

/** The column of each field `update` may change, and how its value is sent. */
const CHANGE_COLUMNS: Record<keyof ClientChanges, { column: string, cast: string, encode?: (value: unknown) => unknown }> = {
  name: { column: 'name', cast: 'text' },
  rateLimit: { column: 'rate_limit', cast: 'integer' },
  scopes: { column: 'scopes', cast: 'text[]' },
  defaultScopes: { column: 'default_scopes', cast: 'text[]' },
  audiences: { column: 'audiences', cast: 'text[]' },
  claims: { column: 'claims', cast: 'jsonb', encode: (value) => JSON.stringify(value) },
  jwksUri: { column: 'jwks_uri', cast: 'text' },
  grantTypes: { column: 'grant_types', cast: 'text[]' },
  mayExchange: { column: 'may_exchange', cast: 'text[]' },
  dpopBoundAccessTokens: { column: 'dpop_bound_access_tokens', cast: 'boolean' }
}

/**
 * A change of one client and its event in one statement: `assignments` (SQL
 * after SET, parameters from $3 on) applied to the row locked as it was,
 * the event recording both versions. $1: the client id, $2: the actor.
 */
function auditedUpdate (action: string, assignments: string): string {
  return `WITH old_row AS (SELECT * FROM clients WHERE client_id = $1 FOR UPDATE),
  new_row AS (UPDATE clients SET ${assignments} FROM old_row WHERE clients.client_id = old_row.client_id RETURNING clients.*),
  event AS (INSERT INTO client_events (client_id, action, actor, before, after)
    SELECT new_row.client_id, ${action}, $2, ${auditedFields('old_row')}, ${auditedFields('new_row')}
    FROM old_row JOIN new_row ON new_row.client_id = old_row.client_id)
  SELECT ${CLIENT_COLUMNS} FROM new_row`
}

const UNIQUE_VIOLATION = '23505'
const CHECK_VIOLATION = '23514'

/** What each rule of the clients table means, by its constraint's name. */
const TABLE_RULES: Record<string, string> = {
  clients_default_scopes_allowed: 'the default scopes must be among the client\'s scopes',
  clients_have_credentials: 'a client needs a secret, a jwks_uri or keys to authenticate with'
}

/** A refused change as the typed error callers map to a 400; other errors as they are. */
function ruleBroken (err: unknown): unknown {
  const error = err as { code?: string, constraint?: string, message?: string }
  if (error.code !== CHECK_VIOLATION) return err
  // Through the control socket only the SQLSTATE and the message travel.
  const name = error.constraint ?? Object.keys(TABLE_RULES).find((rule) => error.message?.includes(`"${rule}"`) === true)
  return new ClientRuleError(TABLE_RULES[name ?? ''] ?? 'the change breaks a rule of the clients table')
}

function checkPage (limit: number): void {
  if (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_PAGE) throw new RangeError(`a page holds 1 to ${MAX_PAGE} rows`)
}

interface EventRow {
  id: string
  client_id: string
  action: ClientAction
  actor: string
  at: Date | string
  before: Record<string, unknown> | null
  after: Record<string, unknown> | null
}

const eventFromRow = (row: EventRow): ClientEvent => ({
  id: Number(row.id),
  clientId: row.client_id,
  action: row.action,
  actor: row.actor,
  at: new Date(row.at),
  before: row.before,
  after: row.after
})

export interface ClientsRepository {
  /** The client, or undefined if unknown. */
  find: (clientId: string) => Promise<Client | undefined>
  /** The client with its timestamps, or undefined if unknown. */
  findRecord: (clientId: string) => Promise<ClientRecord | undefined>
  /** One page of clients by id; `next` is the `after` of the following page, null after the last. */
  list: (page: { limit: number, after?: string }) => Promise<{ clients: ClientRecord[], next: string | null }>
  /**
   * Registers a client (its secret hashed at `cost`) and records the event.
   * Throws ClientExistsError for a taken id, SecretTooLongError, ClientRuleError.
   */
  insert: (client: NewClient, cost: number, actor: string) => Promise<ClientRecord>
  /** Changes the given fields only; undefined for an unknown client. Throws ClientRuleError. */
  update: (clientId: string, changes: ClientChanges, actor: string) => Promise<ClientRecord | undefined>
  /**
   * A new secret; the current one keeps working for `graceMs` (0: stops at
   * once). Undefined for an unknown client. Throws SecretTooLongError.
   */
  rotateSecret: (clientId: string, rotation: SecretRotation) => Promise<{ previousSecretExpiresAt: Date | null } | undefined>
  /** Undefined for an unknown client. */
  setStatus: (clientId: string, status: ClientStatus, actor: string) => Promise<ClientRecord | undefined>
  /** Whether the client existed. Its events stay. */
  delete: (clientId: string, actor: string) => Promise<boolean>
  /** One page of a client's events, newest first; `next` is the `before` of the following page. */
  events: (clientId: string, page: { limit: number, before?: number }) => Promise<{ events: ClientEvent[], next: number | null }>
  /** Replaces the hash only if it is still `oldHash` (a rotation meanwhile wins); whether it did. Not an audited change. */
  replaceSecretHash: (clientId: string, oldHash: string, newHash: string) => Promise<boolean>
}

/** The changed row of an audited statement, as a record; a broken table rule becomes a ClientRuleError. */
async function changedRecordOf (db: Queryable, text: string, values: unknown[]): Promise<ClientRecord | undefined> {
  try {
    const row = (await db.query<ClientRow>(text, values)).rows[0]
    return row === undefined ? undefined : recordFromRow(row)
  } catch (err) {
    throw ruleBroken(err)
  }
}

/** Inserts a client and its `created` event in one statement; ClientExistsError for a taken id. */
async function insertAudited (db: Queryable, client: NewClient, cost: number, actor: string): Promise<ClientRecord> {
  const hash = client.secret === undefined ? null : await hashSecret(client.secret, cost)
  const { columns, values } = newRow(client, hash)
  const text = `WITH new_row AS (INSERT INTO clients (${columns.join(', ')}) VALUES (${placeholders(values.length, 2)}) RETURNING *),
    event AS (INSERT INTO client_events (client_id, action, actor, after)
      SELECT client_id, 'created', $1, ${auditedFields('new_row')} FROM new_row)
    SELECT ${CLIENT_COLUMNS} FROM new_row`
  try {
    return await changedRecordOf(db, text, [actor, ...values]) as ClientRecord
  } catch (err) {
    if ((err as { code?: string }).code === UNIQUE_VIOLATION) throw new ClientExistsError(client.id)
    throw err
  }
}

/** A new secret, the current one kept for graceMs (0: dropped), and the `secret_rotated` event, in one statement. */
async function rotateAudited (db: Queryable, clientId: string, { secret, cost, graceMs, actor }: SecretRotation): Promise<{ previousSecretExpiresAt: Date | null } | undefined> {
  if (!Number.isSafeInteger(graceMs) || graceMs < 0) throw new RangeError('graceMs is a whole number of milliseconds, at least 0')
  const hash = await hashSecret(secret, cost)
  // The event keeps only the grace period's end: no hash in the history.
  const { rows } = await db.query<{ previous_secret_expires_at: Date | string | null }>(
      `WITH old_row AS (SELECT client_id, client_secret_hash FROM clients WHERE client_id = $1 FOR UPDATE),
      new_row AS (UPDATE clients SET client_secret_hash = $3,
          previous_secret_hash = CASE WHEN $4::bigint > 0 THEN old_row.client_secret_hash END,
          previous_secret_expires_at = CASE WHEN $4::bigint > 0 AND old_row.client_secret_hash IS NOT NULL
            THEN now() + $4::bigint * interval '1 millisecond' END
        FROM old_row WHERE clients.client_id = old_row.client_id
        RETURNING clients.client_id, clients.previous_secret_expires_at),
      event AS (INSERT INTO client_events (client_id, action, actor, after)
        SELECT client_id, 'secret_rotated', $2, jsonb_build_object('previous_secret_expires_at', previous_secret_expires_at) FROM new_row)
      SELECT previous_secret_expires_at FROM new_row`,
      [clientId, actor, hash, graceMs])
  const row = rows[0]
  return row === undefined ? undefined : { previousSecretExpiresAt: dateOrNull(row.previous_secret_expires_at) }
}

export function clientsRepository (db: Queryable): ClientsRepository {
  const select = async (clientId: string): Promise<ClientRow | undefined> =>
    (await db.query<ClientRow>(`SELECT ${CLIENT_COLUMNS} FROM clients WHERE client_id = $1`, [clientId])).rows[0]
  const findRecord = async (clientId: string): Promise<ClientRecord | undefined> => {
    const row = await select(clientId)
    return row === undefined ? undefined : recordFromRow(row)
  }
  const changedRecord = async (text: string, values: unknown[]): Promise<ClientRecord | undefined> => await changedRecordOf(db, text, values)
  return {
    async find (clientId) {
      const row = await select(clientId)
      return row === undefined ? undefined : clientFromRow(row)
    },
    findRecord,
    async list ({ limit, after }) {
      checkPage(limit)
      const { rows } = await db.query<ClientRow>(
        `SELECT ${CLIENT_COLUMNS} FROM clients WHERE $1::text IS NULL OR client_id > $1 ORDER BY client_id LIMIT $2`,
        [after ?? null, limit + 1])
      const clients = rows.slice(0, limit).map(recordFromRow)
      return { clients, next: rows.length > limit ? clients[clients.length - 1]?.id ?? null : null }
    },
    insert: async (client, cost, actor) => await insertAudited(db, client, cost, actor),
    async update (clientId, changes, actor) {
      const given = (Object.keys(CHANGE_COLUMNS) as Array<keyof ClientChanges>).filter((field) => changes[field] !== undefined)
      if (given.length === 0) return await findRecord(clientId)
      const assignments = given.map((field, index) => `${CHANGE_COLUMNS[field].column} = $${index + 3}::${CHANGE_COLUMNS[field].cast}`)
      const values = given.map((field) => CHANGE_COLUMNS[field].encode?.(changes[field]) ?? changes[field])
      return await changedRecord(auditedUpdate('\'updated\'', assignments.join(', ')), [clientId, actor, ...values])
    },
    rotateSecret: async (clientId, rotation) => await rotateAudited(db, clientId, rotation),
    setStatus: async (clientId, status, actor) =>
      await changedRecord(auditedUpdate('$3::text', 'status = $3::text'), [clientId, actor, status]),
    async delete (clientId, actor) {
      const { rows } = await db.query(
        `WITH old_row AS (DELETE FROM clients WHERE client_id = $1 RETURNING *),
        event AS (INSERT INTO client_events (client_id, action, actor, before)
          SELECT client_id, 'deleted', $2, ${auditedFields('old_row')} FROM old_row)
        SELECT client_id FROM old_row`, [clientId, actor])
      return rows.length > 0
    },
    async events (clientId, { limit, before }) {
      checkPage(limit)
      const { rows } = await db.query<EventRow>(
        `SELECT id::text AS id, client_id, action, actor, at, before, after FROM client_events
         WHERE client_id = $1 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3`,
        [clientId, before ?? null, limit + 1])
      const events = rows.slice(0, limit).map(eventFromRow)
      return { events, next: rows.length > limit ? events[events.length - 1]?.id ?? null : null }
    },
    replaceSecretHash: async (clientId, oldHash, newHash) =>
      (await db.query('UPDATE clients SET client_secret_hash = $1 WHERE client_id = $2 AND client_secret_hash = $3 RETURNING client_id', [newHash, clientId, oldHash])).rows.length > 0
  }
}
