// The signing key series of /metrics: which key signs (either key store),
// and, with KEY_STORE=database, each stored key's age and state, as the
// keys rotate on the app's clock.
import { randomBytes } from 'node:crypto'
import { test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { basicAuth, build, injectAdmin, insertClient, sample, samplesOf, scrapeMetrics, sql, tokenRequest } from './helper.ts'
import { rotateKeys, keyPolicy } from '../signing-keys/stored.ts'

const DATABASE_MODE = { KEY_STORE: 'database', KEY_ENCRYPTION_KEY: randomBytes(32).toString('base64') }
const HOUR = 3600_000

const info = (kid: string, alg = 'RS256'): string => `session_service_signing_key_info{kid="${kid}",alg="${alg}"}`
const age = (kid: string, state: string, alg = 'RS256'): string => `session_service_signing_key_age_seconds{kid="${kid}",alg="${alg}",state="${state}"}`

async function rotate (app: FastifyInstance, at: number, immediately: boolean): Promise<string> {
  const result = await rotateKeys(app.db, app.config.keyEncryptionKey as Buffer, keyPolicy(app.config), at, { immediately, actor: 'test' })
  await app.keyRing?.refresh()
  return result.kid
}

test('KEY_STORE=database: the signing key and each stored key\'s age on the clock, by state, as the keys rotate', async (t) => {
  let now = Date.parse('2026-04-01T08:00:00.000Z')
  const { app } = await build(t, { env: DATABASE_MODE, unset: ['JWT_PRIVATE_KEY', 'JWT_PUBLIC_KEY'], clock: () => now, keyPollMs: 0 })
  const first = app.keys.kid

  let text = await scrapeMetrics(app)
  t.strictSame(samplesOf(text, 'session_service_signing_key_info'), [`${info(first)} 1`], 'the stored key signs')
  t.strictSame(samplesOf(text, 'session_service_signing_key_age_seconds'), [`${age(first, 'current')} 0`], 'made now, on the app\'s clock')

  now += HOUR
  text = await scrapeMetrics(app)
  t.equal(sample(text, age(first, 'current')), 3600, 'an hour later it is an hour older')

  const next = await rotate(app, now, false)
  now += HOUR
  text = await scrapeMetrics(app)
  t.equal(sample(text, info(first)), 1, 'the current key still signs')
  t.equal(sample(text, age(first, 'current')), 7200)
  t.equal(sample(text, age(next, 'next')), 3600, 'the next key, published an hour ago')

  await rotate(app, now, true)
  text = await scrapeMetrics(app)
  t.strictSame(samplesOf(text, 'session_service_signing_key_info'), [`${info(next)} 1`], 'the new key signs: one series, its kid')
  t.strictSame(samplesOf(text, 'session_service_signing_key_age_seconds').sort(), [`${age(first, 'retired')} 7200`, `${age(next, 'current')} 3600`].sort(),
    'the old key retired, the new one current; no series of a former state')
})

test('KEY_STORE=database: a rotation through the admin API changes the series of the instance that made it', async (t) => {
  const now = Date.parse('2026-04-01T08:00:00.000Z')
  const { app, databaseUrl } = await build(t, { env: { ...DATABASE_MODE, JWT_ALGORITHM: 'ES256' }, unset: ['JWT_PRIVATE_KEY', 'JWT_PUBLIC_KEY'], clock: () => now, keyPollMs: 0 })
  await insertClient(databaseUrl, { id: 'automation', secret: 'automation secret' })
  await sql(databaseUrl, 'UPDATE clients SET scopes = $2 WHERE client_id = $1', ['automation', ['session-service:admin']])
  const token = (await tokenRequest(app, { grant_type: 'client_credentials', scope: 'session-service:admin' }, { authorization: basicAuth('automation', 'automation secret') })).json().access_token
  const first = app.keys.kid
  t.equal(sample(await scrapeMetrics(app), info(first, 'ES256')), 1)

  const res = await injectAdmin(app, { method: 'POST', url: '/admin/keys/rotate', headers: { authorization: `Bearer ${String(token)}` }, payload: { now: true } })
  t.equal(res.statusCode, 200, res.body)
  const { kid } = res.json<{ kid: string }>()
  const text = await scrapeMetrics(app)
  t.strictSame(samplesOf(text, 'session_service_signing_key_info'), [`${info(kid, 'ES256')} 1`], 'the next scrape names the new key')
  t.equal(sample(text, age(first, 'retired', 'ES256')), 0, 'and the old one retired')
  t.equal(sample(text, age(kid, 'current', 'ES256')), 0)
})

test('KEY_STORE=settings: the signing key is named, and there is no age series', async (t) => {
  let now = Date.parse('2026-04-01T08:00:00.000Z')
  const { app } = await build(t, { clock: () => now })
  now += HOUR
  const text = await scrapeMetrics(app)
  t.strictSame(samplesOf(text, 'session_service_signing_key_info'), [`${info(app.keys.kid)} 1`], 'the settings\' key')
  t.strictSame(samplesOf(text, 'session_service_signing_key_age_seconds'), [], 'no stored key, no age')
})
