// The embedded mode: no DATABASE_URL and no REDIS_URL. The service keeps its
// database (PGlite) in DATA_DIR, its refresh tokens and revocations in that
// database, and generates its signing key there on the first start. These
// tests use that mode whatever servers the machine has: each builds the app
// on a data directory of its own, as an operator following the README would.
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import tap, { test } from 'tap'
import { LOCK_FILE, SIGNING_KEY_FILE } from '../storage/data-dir.ts'
import { decodeJwt, tokenRequest, verify } from './helper.ts'
import { testDataDir, start, createClient, tokens, revoke, introspect, jwksKids, mode } from './embedded/apps.ts'

// Each test opens the embedded PostgreSQL on a new data directory, and its
// first start (initdb, then the migrations) takes several seconds on a busy
// machine: more than the default per-file budget allows for the whole file.
tap.setTimeout(300_000)

test('a restart loses nothing: clients, tokens, revocations, refresh tokens and the signing key are kept in DATA_DIR', async (t) => {
  // A folder that does not exist yet: the service creates it, owner-only.
  const dir = join(testDataDir(t), 'data')
  const first = await start(t, dir)
  const client = await createClient(first, 'svc-restart', { scopes: ['read', 'write'] })
  const { authorization } = client

  const kept = tokens(t, await tokenRequest(first, { grant_type: 'client_credentials', scope: 'read' }, { authorization }), 'first session')
  t.equal(decodeJwt(kept.access_token).payload.scope, 'read', 'the first session has the scope asked for')
  const revoked = tokens(t, await tokenRequest(first, { grant_type: 'client_credentials', scope: 'read' }, { authorization }), 'second session')
  const revokeRes = await revoke(first, authorization, revoked.access_token)
  t.equal(revokeRes.statusCode, 200, 'revoking an access token answers 200')
  t.strictSame((await verify(first, revoked.access_token)).json(), { valid: false, error: 'revoked' }, 'before the restart: the revoked access token is revoked')
  const kidsBefore = await jwksKids(first)
  t.equal(kidsBefore.length, 1, 'the JWKS publishes one key')

  await first.close()
  t.notOk(existsSync(join(dir, LOCK_FILE)), 'the lock is given back when the app closes')

  const second = await start(t, dir)

  const fresh = await tokenRequest(second, { grant_type: 'client_credentials' }, { authorization })
  t.equal(fresh.statusCode, 200, 'after the restart: the client still authenticates', { body: fresh.body })

  const keptCheck = (await verify(second, kept.access_token)).json()
  t.equal(keptCheck.valid, true, 'after the restart: the access token issued before still verifies', { body: keptCheck })
  t.match(keptCheck, { claims: { sub: client.id, scope: 'read' } }, 'with its claims')
  t.strictSame((await verify(second, revoked.access_token)).json(), { valid: false, error: 'revoked' },
    'after the restart: the access token revoked before is still revoked')

  const sid = decodeJwt(kept.access_token).payload.sid
  const introspected = await introspect(second, authorization, kept.refresh_token)
  t.equal(introspected.statusCode, 200, 'introspection answers 200')
  t.match(introspected.json(), { active: true, token_type: 'refresh_token', client_id: client.id, scope: 'read', sid },
    'after the restart: the refresh token from before introspects as active, with its session and scope')

  const refreshed = tokens(t, await tokenRequest(second, { grant_type: 'refresh_token', refresh_token: kept.refresh_token }, { authorization }),
    'after the restart: the refresh token from before is exchanged')
  t.equal(decodeJwt(refreshed.access_token).payload.sid, sid, 'the new access token belongs to the same session')
  t.equal((await verify(second, refreshed.access_token)).json().valid, true, 'the new access token verifies')

  const replay = await tokenRequest(second, { grant_type: 'refresh_token', refresh_token: kept.refresh_token }, { authorization })
  t.equal(replay.statusCode, 400, 'the same refresh token a second time: 400')
  t.equal(replay.json().error, 'invalid_grant', 'the same refresh token a second time: invalid_grant')
  t.strictSame((await verify(second, refreshed.access_token)).json(), { valid: false, error: 'revoked' },
    'the replay revoked the session: its newest access token is revoked')
  t.strictSame((await verify(second, kept.access_token)).json(), { valid: false, error: 'revoked' },
    'the replay revoked the session: its first access token is revoked too')
  t.strictSame((await introspect(second, authorization, refreshed.refresh_token)).json(), { active: false },
    'the replay revoked the session: its rotated refresh token is no longer active')

  t.strictSame(await jwksKids(second), kidsBefore, 'the JWKS kid is the same after the restart: the same key signs')
  t.equal(mode(join(dir, SIGNING_KEY_FILE)), '600', `${SIGNING_KEY_FILE} is readable by its owner only`)
  t.equal(mode(dir), '700', 'DATA_DIR is accessible to its owner only')
})
