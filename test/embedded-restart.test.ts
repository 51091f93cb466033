// The embedded mode: no DATABASE_URL and no REDIS_URL. The service keeps its
// database (PGlite) in DATA_DIR, its refresh tokens and revocations in that
// database, and generates its signing key there on the first start. These
// tests use that mode whatever servers the machine has: each builds the app
// on a data directory of its own, as an operator following the README would.
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import tap, { test } from 'tap'
import Fastify from 'fastify'
import serviceApp, { options } from '../app.js'
import { loadConfig } from '../plugins/config.js'
import { LOCK_FILE, SIGNING_KEY_FILE } from '../storage/data-dir.js'
import { decodeJwt, freePort, runEntry, tokenRequest, verify } from './helper.js'
import { testDataDir, migratedDataDir, start, createClient, tokens, revoke, introspect, jwksKids, mode } from './embedded/apps.js'

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

test('the lock of DATA_DIR: a stale one is taken over, a live one refuses a second opener with one line, and it goes with the app', async (t) => {
  // Left by a process that no longer exists (beyond any pid_max).
  const dir = await migratedDataDir(t, { [LOCK_FILE]: '2147483646\n' })
  const app = await start(t, dir)
  t.equal((await app.inject({ method: 'GET', url: '/health' })).statusCode, 200, 'a stale lock is taken over: the app starts and answers /health')
  t.equal(readFileSync(join(dir, LOCK_FILE), 'utf8').trim(), String(process.pid), `${LOCK_FILE} now names this process`)

  const other = Fastify({ ...options, logger: false })
  await t.rejects(async () => await other.register(serviceApp, { config: loadConfig({ DATA_DIR: dir, LOG_LEVEL: 'silent' }) }), { message: /in use/ },
    'a second app on the same DATA_DIR in this process: an error saying the data directory is in use')
  await other.close().catch(() => {})
  t.equal((await app.inject({ method: 'GET', url: '/health' })).statusCode, 200, 'the first app still serves after the refused attempt')
  t.ok(existsSync(join(dir, LOCK_FILE)), 'the refused attempt left the lock of the first app in place')

  const run = await runEntry('server.ts', [], {
    env: { DATA_DIR: dir, SERVER_PORT: String(await freePort()), SERVER_HOST: '127.0.0.1' },
    timeoutMs: 30_000
  })
  t.equal(run.code, 1, 'server.ts on a held DATA_DIR exits with code 1', { stderr: run.stderr })
  t.match(run.stderr, /^session-service: the data directory [^\n]*\n$/, `exactly one line on stderr, naming the data directory (${run.stderr})`)
  t.match(run.stderr, `in use by process ${process.pid}`, 'the line names the process holding it')
  t.notMatch(run.stdout + run.stderr, /^\s+at /m, 'no stack trace')

  await app.close()
  t.notOk(existsSync(join(dir, LOCK_FILE)), `${LOCK_FILE} is gone once the app has closed`)
})
