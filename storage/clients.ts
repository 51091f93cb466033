// The clients table: the one place that knows its SQL. The service reads
// records through it (behind its caches), the CLI manages them through it.
import type { JsonWebKey } from 'node:crypto'
import bcrypt from 'bcryptjs'
import type { Queryable } from './database.js'

export interface Client {
  id: string
  /** bcrypt hash of the secret; null for a client that authenticates with keys only */
  secretHash: string | null
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
}

/** A client as stored, with the times of its creation and last change. */
export interface ClientRecord extends Client {
  createdAt: Date
  updatedAt: Date
}

export type ClientStatus = Client['status']

/** A client to register; every field but the id has the table's default. */
export interface NewClient {
  id: string
  /** hashed with bcrypt here; the secret itself is never stored */
  secret?: string
  name?: string
  rateLimit?: number | null
  scopes?: string[]
  defaultScopes?: string[]
  audiences?: string[]
  claims?: Record<string, unknown>
  jwksUri?: string | null
  jwks?: { keys: JsonWebKey[] } | null
}

export interface ClientRow {
  client_id: string
  client_secret_hash: string | null
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
  created_at: Date | string
  updated_at: Date | string
}

export const CLIENT_COLUMNS = 'client_id, client_secret_hash, rate_limit, name, status, scopes, default_scopes, audiences, claims, jwks_uri, jwks, grant_types, created_at, updated_at'

/** bcrypt reads only the first 72 bytes; a longer secret would be truncated silently. */
export const MAX_SECRET_BYTES = 72

/** bcrypt cost of the secrets this service hashes by default (BCRYPT_COST). */
export const BCRYPT_COST = 12

export { CLIENT_CHANGES_CHANNEL, clientCacheKey } from './client-cache.js'

export function clientFromRow (row: ClientRow): Client {
  return {
    id: row.client_id,
    secretHash: row.client_secret_hash,
    rateLimit: row.rate_limit,
    name: row.name,
    status: row.status,
    scopes: row.scopes,
    defaultScopes: row.default_scopes,
    audiences: row.audiences,
    claims: row.claims,
    jwksUri: row.jwks_uri,
    jwks: row.jwks,
    grantTypes: row.grant_types
  }
}

function recordFromRow (row: ClientRow): ClientRecord {
  return { ...clientFromRow(row), createdAt: new Date(row.created_at), updatedAt: new Date(row.updated_at) }
}

/** Inserts a client row through any pg-style query function (a pool, a client). */
export async function insertClientRow (db: { query: (text: string, values: unknown[]) => Promise<unknown> }, client: NewClient, cost: number = BCRYPT_COST): Promise<void> {
  if (client.secret !== undefined && Buffer.byteLength(client.secret, 'utf8') > MAX_SECRET_BYTES) {
    throw new Error(`a client secret may be at most ${MAX_SECRET_BYTES} bytes`)
  }
  const hash = client.secret === undefined ? null : await bcrypt.hash(client.secret, cost)
  await db.query(
    `INSERT INTO clients (client_id, client_secret_hash, name, rate_limit, scopes, default_scopes, audiences, claims, jwks_uri, jwks)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
    [client.id, hash, client.name ?? '', client.rateLimit ?? null, client.scopes ?? [], client.defaultScopes ?? [],
      client.audiences ?? [], JSON.stringify(client.claims ?? {}), client.jwksUri ?? null,
      client.jwks === undefined || client.jwks === null ? null : JSON.stringify(client.jwks)]
  )
}

/** A client id that is already registered. */
export class ClientExistsError extends Error {
  constructor (clientId: string) {
    super(`a client "${clientId}" already exists`)
    this.name = 'ClientExistsError'
  }
}

const UNIQUE_VIOLATION = '23505'

export interface ClientsRepository {
  /** The client, or undefined if unknown. */
  find: (clientId: string) => Promise<Client | undefined>
  /** The client with its timestamps, or undefined if unknown. */
  findRecord: (clientId: string) => Promise<ClientRecord | undefined>
  /** Every client, oldest first. */
  list: () => Promise<ClientRecord[]>
  /** Registers a client (its secret hashed at `cost`); throws ClientExistsError for a taken id. */
  insert: (client: NewClient, cost: number) => Promise<void>
  /** Whether the client existed. */
  setStatus: (clientId: string, status: ClientStatus) => Promise<boolean>
  /** Gives the client a new secret (hashed at `cost`); whether the client existed. */
  setSecret: (clientId: string, secret: string, cost: number) => Promise<boolean>
  /** Replaces the hash only if it is still `oldHash` (a rotation meanwhile wins); whether it did. */
  replaceSecretHash: (clientId: string, oldHash: string, newHash: string) => Promise<boolean>
  /** Whether the client existed. */
  delete: (clientId: string) => Promise<boolean>
}

export function clientsRepository (db: Queryable): ClientsRepository {
  const changed = async (text: string, values: unknown[]): Promise<boolean> => (await db.query(text, values)).rows.length > 0
  const select = async (clientId: string): Promise<ClientRow | undefined> =>
    (await db.query<ClientRow>(`SELECT ${CLIENT_COLUMNS} FROM clients WHERE client_id = $1`, [clientId])).rows[0]
  return {
    async find (clientId) {
      const row = await select(clientId)
      return row === undefined ? undefined : clientFromRow(row)
    },
    async findRecord (clientId) {
      const row = await select(clientId)
      return row === undefined ? undefined : recordFromRow(row)
    },
    async list () {
      const { rows } = await db.query<ClientRow>(`SELECT ${CLIENT_COLUMNS} FROM clients ORDER BY created_at, client_id`)
      return rows.map(recordFromRow)
    },
    async insert (client, cost) {
      try {
        await insertClientRow(db, client, cost)
      } catch (err) {
        if ((err as { code?: string }).code === UNIQUE_VIOLATION) throw new ClientExistsError(client.id)
        throw err
      }
    },
    setStatus: async (clientId, status) =>
      await changed('UPDATE clients SET status = $2 WHERE client_id = $1 RETURNING client_id', [clientId, status]),
    async setSecret (clientId, secret, cost) {
      const hash = await bcrypt.hash(secret, cost)
      return await changed('UPDATE clients SET client_secret_hash = $2 WHERE client_id = $1 RETURNING client_id', [clientId, hash])
    },
    replaceSecretHash: async (clientId, oldHash, newHash) =>
      await changed('UPDATE clients SET client_secret_hash = $1 WHERE client_id = $2 AND client_secret_hash = $3 RETURNING client_id', [newHash, clientId, oldHash]),
    delete: async (clientId) =>
      await changed('DELETE FROM clients WHERE client_id = $1 RETURNING client_id', [clientId])
  }
}
