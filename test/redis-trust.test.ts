// Redis is a cache and a coordinator, not a root of trust: whoever can write
// to it must not be able to mint tokens. Records that grant anything (cached
// clients, refresh tokens) are sealed with a key that lives in the database
// only; a forged record counts as absent. Each forgery is written both in the
// layout of earlier releases and in the current one, so that the test shows
// the attack against either.
import { createHash, randomBytes, createHmac } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import bcrypt from 'bcryptjs'
import type { FastifyInstance } from 'fastify'
import { basicAuth, build, buildLogged, decodeJwt, generateRsaKeyPair, insertClient, issueTokens, needs, sql, testKeys, tokenRequest, injectAdmin } from './helper.ts'

async function metric (app: FastifyInstance, name: string): Promise<number> {
  const text = (await injectAdmin(app, '/metrics')).body
  const line = text.split('\n').find((candidate) => candidate.startsWith(`${name} `))
  return Number(line?.split(' ')[1])
}

const tokenHash = (token: string): string => createHash('sha256').update(token).digest('base64url')

test('a client record forged in Redis is not honoured', { skip: needs.redis }, async (t) => {
  const { instance: app, lines } = await buildLogged(t, {})
  const redis = app.redis
  const hash = await bcrypt.hash('attacker-secret', 10)
  const forged = {
    id: 'svc-ghost',
    secretHash: hash,
    rateLimit: null,
    name: 'ghost',
    status: 'enabled',
    scopes: ['admin'],
    defaultScopes: ['admin'],
    audiences: [],
    claims: { role: 'superuser' },
    jwksUri: null,
    jwks: null,
    readAt: Date.now() + 86_400_000
  }
  for (const key of ['client:v2:svc-ghost', 'client:v3:svc-ghost', 'client:v4:svc-ghost', 'client:v5:svc-ghost', 'client:v6:svc-ghost']) await redis.set(key, JSON.stringify(forged), 'PX', 600_000)
  const res = await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-ghost', 'attacker-secret') })
  t.equal(res.statusCode, 401, 'a client that exists only in Redis gets no token')
  t.equal(await metric(app, 'session_service_redis_records_rejected_total'), 1, 'the forged record is counted')
  const again = await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-ghost', 'attacker-secret') })
  t.equal(again.statusCode, 401)
  const warnings = lines.filter((line) => typeof line.msg === 'string' && line.msg.includes('failed its integrity check'))
  t.equal(warnings.length, 1, 'logged once')
  t.equal(warnings[0]?.key, 'client:v6:svc-ghost', 'with its key')
})

test('a forged record for a real client does not change what it is granted', { skip: needs.redis }, async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-real', secret: 'real-secret' })
  const forged = {
    id: 'svc-real',
    secretHash: await bcrypt.hash('attacker-secret', 10),
    rateLimit: null,
    name: '',
    status: 'enabled',
    scopes: ['admin'],
    defaultScopes: ['admin'],
    audiences: [],
    claims: {},
    jwksUri: null,
    jwks: null,
    readAt: Date.now()
  }
  for (const key of ['client:v2:svc-real', 'client:v3:svc-real', 'client:v4:svc-real', 'client:v5:svc-real', 'client:v6:svc-real']) await app.redis.set(key, JSON.stringify(forged), 'PX', 600_000)
  const attacker = await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-real', 'attacker-secret') })
  t.equal(attacker.statusCode, 401, 'the forged secret hash is not used')
  const client = await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-real', 'real-secret') })
  t.equal(client.statusCode, 200, 'the client itself still authenticates, from PostgreSQL')
  t.notOk('scope' in decodeJwt(client.json().access_token).payload, 'with its own (empty) scopes, not the forged ones')
})

test('a client record sealed with a time in the future is kept no longer than CLIENT_CACHE_TTL', { skip: needs.redis }, async (t) => {
  const { app, databaseUrl } = await build(t, { env: { CLIENT_CACHE_TTL: '1s' } })
  await insertClient(databaseUrl, { id: 'svc-future', secret: 'future-secret' })
  // The record as this service would seal it, with a readAt a day ahead (a
  // clock far off on another instance, say).
  const [row] = await sql<{ secret: Buffer }>(databaseUrl, "SELECT secret FROM service_secrets WHERE name = 'redis-records'")
  const record = JSON.stringify({
    id: 'svc-future',
    secretHash: await bcrypt.hash('future-secret', 10),
    rateLimit: null,
    name: '',
    status: 'enabled',
    scopes: [],
    defaultScopes: [],
    audiences: [],
    claims: {},
    jwksUri: null,
    jwks: null,
    grantTypes: ['client_credentials', 'refresh_token'],
    mayExchange: [],
    previousSecretHash: null,
    previousSecretExpiresAt: null,
    dpopBoundAccessTokens: false,
    readAt: Date.now() + 86_400_000
  })
  const mac = createHmac('sha256', Buffer.from(row?.secret ?? '')).update('client:v6:svc-future').update('\0').update(record).digest('base64url')
  await app.redis.set('client:v6:svc-future', `${mac}.${record}`, 'PX', 1000)
  const auth = { authorization: basicAuth('svc-future', 'future-secret') }
  t.equal((await tokenRequest(app, { grant_type: 'client_credentials' }, auth)).statusCode, 200)
  await sql(databaseUrl, "UPDATE clients SET status = 'disabled' WHERE client_id = 'svc-future'")
  await sleep(1500)
  const res = await tokenRequest(app, { grant_type: 'client_credentials' }, auth)
  t.equal(res.statusCode, 400, 'the change in PostgreSQL is seen after CLIENT_CACHE_TTL, not a day later')
  t.equal(res.json().error, 'unauthorized_client')
})

test('a refresh-token record forged in Redis is not honoured', { skip: needs.redis }, async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-mallory', secret: 'mallory-secret' })
  const own = await issueTokens(app, 'svc-mallory', 'mallory-secret')
  const invented = randomBytes(32).toString('base64url')
  const now = Math.floor(Date.now() / 1000)
  const record = { client_id: 'svc-mallory', sid: 'forged-session', scope: 'admin', aud: 'api', iat: now, exp: now + 3600 }
  // The layout of earlier releases, and the current one with a made-up seal.
  await app.redis.set(`refresh:${tokenHash(invented)}`, JSON.stringify(record), 'EX', 3600)
  await app.redis.hset(`refresh:v2:${tokenHash(invented)}`, 'r', `${randomBytes(32).toString('base64url')}.${JSON.stringify(record)}`)
  const res = await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: invented }, { authorization: basicAuth('svc-mallory', 'mallory-secret') })
  t.equal(res.statusCode, 400, 'no tokens for an invented refresh token')
  t.equal(res.json().error, 'invalid_grant')
  const introspected = await app.inject({
    method: 'POST',
    url: '/oauth/introspect',
    headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basicAuth('svc-mallory', 'mallory-secret') },
    payload: `token=${invented}`
  })
  t.strictSame(introspected.json(), { active: false }, 'introspection does not call it active')

  // A real record moved to another token's key fails too: the seal covers the key.
  const realKey = `refresh:v2:${tokenHash(own.refresh_token)}`
  const sealed = await app.redis.hget(realKey, 'r')
  const stolen = randomBytes(32).toString('base64url')
  await app.redis.hset(`refresh:v2:${tokenHash(stolen)}`, 'r', sealed ?? '')
  const moved = await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: stolen }, { authorization: basicAuth('svc-mallory', 'mallory-secret') })
  t.equal(moved.statusCode, 400, 'a record copied under another key is refused')
  t.ok(await metric(app, 'session_service_redis_records_rejected_total') >= 2, 'and counted')
  const genuine = await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: own.refresh_token }, { authorization: basicAuth('svc-mallory', 'mallory-secret') })
  t.equal(genuine.statusCode, 200, 'the genuine refresh token still works')
})

test('rotating the signing key does not invalidate refresh tokens', async (t) => {
  const first = await build(t)
  await insertClient(first.databaseUrl, { id: 'svc-rotate', secret: 'rotate-secret' })
  const issued = await issueTokens(first.app, 'svc-rotate', 'rotate-secret')
  await first.app.close()
  const next = generateRsaKeyPair()
  const second = await build(t, {
    databaseUrl: first.databaseUrl,
    redisPrefix: first.redisPrefix,
    env: { JWT_PRIVATE_KEY: next.privateKey, JWT_PUBLIC_KEY: next.publicKey, JWT_ADDITIONAL_PUBLIC_KEYS: testKeys.publicKey }
  })
  const res = await tokenRequest(second.app, { grant_type: 'refresh_token', refresh_token: issued.refresh_token }, { authorization: basicAuth('svc-rotate', 'rotate-secret') })
  t.equal(res.statusCode, 200, 'the refresh token issued under the old key still refreshes')
  t.not(decodeJwt(res.json().access_token).header.kid, decodeJwt(issued.access_token).header.kid, 'and the new access token is signed with the new key')
})
