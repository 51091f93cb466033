// schemas/client.ts: the one home of the client fields and their rules, as
// the CLI and the admin API use them.
import { test } from 'tap'
import Value from 'typebox/value'
import {
  ClientCreate, ClientEventView, ClientView, type ClientCreateBody, type ClientPatchBody, clientChangesFrom, clientEventView, clientView,
  generateClientId, generateClientSecret, InvalidClientError, isClientId, newClientFrom
} from '../schemas/client.ts'
import type { ClientRecord } from '../storage/clients.ts'

const RECORD: ClientRecord = {
  id: 'svc-view',
  secretHash: '$2b$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234',
  previousSecretHash: '$2b$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ56789',
  previousSecretExpiresAt: new Date(Date.now() + 60_000),
  rateLimit: null,
  name: 'view',
  status: 'enabled',
  scopes: ['read'],
  defaultScopes: [],
  audiences: [],
  claims: { tier: 'gold' },
  jwksUri: null,
  jwks: null,
  grantTypes: ['client_credentials'],
  mayExchange: ['svc-portal'],
  dpopBoundAccessTokens: true,
  createdAt: new Date(),
  updatedAt: new Date()
}

test('generated ids and secrets', async (t) => {
  t.match(generateClientSecret(), /^[A-Za-z0-9_-]{43}$/, '256 bits, base64url')
  t.not(generateClientSecret(), generateClientSecret())
  t.ok(isClientId(generateClientId()))
  t.notOk(isClientId('has space'))
  t.notOk(isClientId('x'.repeat(256)))
})

test('newClientFrom: defaults, a generated id and secret, and each rule', async (t) => {
  const { client, secret } = newClientFrom({ name: 'n' })
  t.ok(isClientId(client.id), 'an id is generated')
  t.equal(client.secret, secret, 'the secret to hash is the one to show')
  t.match(secret, /^[A-Za-z0-9_-]{43}$/)
  t.notOk('grantTypes' in client, 'no grant types: the table\'s default')
  t.notOk('mayExchange' in client, 'no may_exchange: the table\'s default')
  t.strictSame(newClientFrom({ name: 'n', may_exchange: ['svc-portal'] }).client.mayExchange, ['svc-portal'])
  t.notOk('dpopBoundAccessTokens' in client, 'no DPoP requirement: the table\'s default')
  t.equal(newClientFrom({ name: 'n', dpop_bound_access_tokens: true }).client.dpopBoundAccessTokens, true)
  t.equal(newClientFrom({ name: 'n', client_secret: 'a-given-secret-0123' }).secret, 'a-given-secret-0123')
  const refused: Array<[unknown, RegExp]> = [
    [{ name: '' }, /^name: /],
    [{ name: 'n', client_id: 'a b' }, /client_id: must be 1 to 255 visible ASCII/],
    [{ name: 'n', scopes: ['a'], default_scopes: ['b'] }, /"b" is not among scopes/],
    [{ name: 'n', default_scopes: ['b'] }, /"b" is not among scopes/],
    [{ name: 'n', claims: { iss: 'x' } }, /"iss" is a registered claim/],
    [{ name: 'n', jwks_uri: 'http://x.example/jwks' }, /https URL/],
    [{ name: 'n', jwks_uri: 'https://user:pw@x.example/jwks' }, /https URL/],
    [{ name: 'n', grant_types: ['password'] }, /^grant_types/],
    [{ name: 'n', grant_types: [] }, /^grant_types/],
    [{ name: 'n', may_exchange: ['a b'] }, /may_exchange\.0: must be client ids/],
    [{ name: 'n', may_exchange: ['a', 'a'] }, /^may_exchange/],
    [{ name: 'n', claims: { act: { sub: 'x' } } }, /"act" is a registered claim/],
    [{ name: 'n', claims: { may_act: { sub: 'x' } } }, /"may_act" is a registered claim/],
    [{ name: 'n', rate_limit: 0 }, /^rate_limit/],
    [{ name: 'n', dpop_bound_access_tokens: 'yes' }, /^dpop_bound_access_tokens/],
    [{ name: 'n', client_secret: 'short' }, /shorter than 16 bytes/],
    [{ name: 'n', client_secret: 'é'.repeat(40) }, /80 bytes; at most 72/],
    [{ name: 'n', unknown: 1 }, /additional properties/]
  ]
  for (const [input, message] of refused) {
    t.throws(() => newClientFrom(input as ClientCreateBody), InvalidClientError, JSON.stringify(input).slice(0, 60))
    t.throws(() => newClientFrom(input as ClientCreateBody), { message }, JSON.stringify(input).slice(0, 60))
  }
  t.notOk(Value.Check(ClientCreate, { name: 'n', client_secret: 'x'.repeat(73) }), 'the schema bounds the secret too')
})

test('clientChangesFrom: only the fields given, at least one, the same rules', async (t) => {
  t.strictSame(clientChangesFrom({ name: 'x', rate_limit: null }), { name: 'x', rateLimit: null })
  t.strictSame(clientChangesFrom({ default_scopes: [], jwks_uri: null, grant_types: ['refresh_token', 'client_credentials'] }),
    { defaultScopes: [], jwksUri: null, grantTypes: ['refresh_token', 'client_credentials'] })
  t.strictSame(clientChangesFrom({ may_exchange: [] }), { mayExchange: [] }, 'an empty may_exchange is a change')
  t.strictSame(clientChangesFrom({ dpop_bound_access_tokens: false }), { dpopBoundAccessTokens: false })
  t.throws(() => clientChangesFrom({}), { message: 'give at least one field to change' })
  t.throws(() => clientChangesFrom({ claims: { scope: 'admin' } }), InvalidClientError)
  t.throws(() => clientChangesFrom({ client_id: 'other' } as ClientPatchBody), InvalidClientError, 'the id never changes')
})

test('clientView and clientEventView: what the schemas declare, never a secret or a hash', async (t) => {
  const view = clientView(RECORD)
  t.ok(Value.Check(ClientView, view), 'a valid ClientView')
  t.equal(view.dpop_bound_access_tokens, true, 'the DPoP requirement is shown')
  t.notMatch(JSON.stringify(view), /\$2b\$/, 'no hash')
  t.equal(view.previous_secret_expires_at, RECORD.previousSecretExpiresAt?.toISOString(), 'the grace period\'s end while it runs')
  t.strictSame(view.may_exchange, ['svc-portal'], 'may_exchange as stored')
  t.equal(clientView(RECORD, Date.now() + 120_000).previous_secret_expires_at, null, 'null once it has passed')
  const event = clientEventView({ id: 3, clientId: 'svc-view', action: 'updated', actor: 'cli:x', at: new Date(), before: { name: 'a' }, after: { name: 'b' } })
  t.ok(Value.Check(ClientEventView, event), 'a valid ClientEventView')
})
