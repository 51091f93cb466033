// Failed client authentication is throttled per client id from one address
// and per address, without letting an attacker lock a client out of its own
// address. Requests come from chosen addresses (light-my-request's
// remoteAddress), as a load balancer's clients would with TRUST_PROXY.
import { join } from 'node:path'
import { test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { basicAuth, build, form, FORM, insertClient } from './helper.ts'

const ATTACKER = '203.0.113.7'
const CLIENT_HOME = '198.51.100.20'

async function tokenFrom (app: FastifyInstance, address: string, clientId: string, secret: string): Promise<LightMyRequestResponse> {
  return await app.inject({
    method: 'POST',
    url: '/oauth/token',
    remoteAddress: address,
    headers: { ...FORM, authorization: basicAuth(clientId, secret) },
    payload: form({ grant_type: 'client_credentials' })
  })
}

test('a client id guessed from one address: that address is throttled, the client at home is not', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { AUTH_FAILURE_LIMIT: '5', AUTH_FAILURE_LIMIT_PER_ADDRESS: '100' } })
  await insertClient(databaseUrl, { id: 'svc-target', secret: 'the-right-secret' })

  for (let attempt = 1; attempt <= 5; attempt++) {
    const res = await tokenFrom(app, ATTACKER, 'svc-target', `guess-${attempt}`)
    t.equal(res.statusCode, 401, `guess ${attempt}: 401 invalid_client`)
  }
  const throttled = await tokenFrom(app, ATTACKER, 'svc-target', 'guess-6')
  t.equal(throttled.statusCode, 429, 'the sixth guess from that address is refused before any check')
  t.strictSame(throttled.json(), {
    error: 'rate_limit_exceeded',
    error_description: 'too many failed client authentications; retry in 60 s'
  })
  t.equal(throttled.headers['retry-after'], '60')
  const evenRight = await tokenFrom(app, ATTACKER, 'svc-target', 'the-right-secret')
  t.equal(evenRight.statusCode, 429, 'from the guessing address even the right secret waits (it would cost a bcrypt compare)')

  const home = await tokenFrom(app, CLIENT_HOME, 'svc-target', 'the-right-secret')
  t.equal(home.statusCode, 200, 'the client, from its own address, still gets tokens')
  const rememberedEverywhere = await tokenFrom(app, ATTACKER, 'svc-target', 'the-right-secret')
  t.equal(rememberedEverywhere.statusCode, 200, 'a secret already verified is no guess: it passes from any address')
  const stillGuessing = await tokenFrom(app, ATTACKER, 'svc-target', 'guess-7')
  t.equal(stillGuessing.statusCode, 429, 'while wrong guesses from that address stay throttled')

  const otherClient = await tokenFrom(app, ATTACKER, 'svc-other', 'whatever')
  t.equal(otherClient.statusCode, 401, 'the per-client limit is per client id: another id from that address is still checked')
})

test('an address that fails for many client ids is throttled for all of them, alone', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { AUTH_FAILURE_LIMIT: '100', AUTH_FAILURE_LIMIT_PER_ADDRESS: '8' } })
  await insertClient(databaseUrl, { id: 'svc-known', secret: 'known-secret' })

  for (let attempt = 1; attempt <= 8; attempt++) {
    const res = await tokenFrom(app, ATTACKER, `svc-unknown-${attempt}`, 'any-secret')
    t.equal(res.statusCode, 401, `unknown client ${attempt}: 401`)
  }
  const unknown = await tokenFrom(app, ATTACKER, 'svc-unknown-9', 'any-secret')
  const known = await tokenFrom(app, ATTACKER, 'svc-known', 'wrong-secret')
  t.equal(unknown.statusCode, 429, 'the address is throttled for an unknown client id')
  t.equal(known.statusCode, 429, 'and for a known one')
  t.equal(unknown.body, known.body, 'with the same body: the throttle tells nothing of which ids exist')
  t.equal(unknown.headers['retry-after'], known.headers['retry-after'])

  const elsewhere = await tokenFrom(app, CLIENT_HOME, 'svc-known', 'known-secret')
  t.equal(elsewhere.statusCode, 200, 'other addresses are not affected')
})

test('AUTH_FAILURE_LIMIT and AUTH_FAILURE_LIMIT_PER_ADDRESS are validated', async (t) => {
  const { loadConfig, loadSettings } = await import('../plugins/config.ts')
  for (const name of ['AUTH_FAILURE_LIMIT', 'AUTH_FAILURE_LIMIT_PER_ADDRESS']) {
    const named = { name: 'ConfigError', message: new RegExp(`^${name}: `) }
    t.throws(() => loadConfig({ DATA_DIR: t.testdir({}), [name]: '0' }), named, `${name}=0 is refused`)
    t.throws(() => loadConfig({ DATA_DIR: t.testdir({}), [name]: 'many' }), named, `${name}=many is refused`)
  }
  // The defaults, from the settings alone (no signing key needed).
  const config = loadSettings({ DATA_DIR: join(t.testdir({}), 'data') })
  t.equal(config.authFailureLimit, 10, 'default: 10 failures per minute per client id and address')
  t.equal(config.authFailureLimitPerAddress, 50, 'default: 50 failures per minute per address')
})

test('failed client assertions (private_key_jwt) count in the same throttle', async (t) => {
  const { insertClientRow } = await import('../plugins/clients.ts')
  const { generateKeyPairSync } = await import('node:crypto')
  const { app } = await build(t, { env: { AUTH_FAILURE_LIMIT: '3', AUTH_FAILURE_LIMIT_PER_ADDRESS: '100' } })
  const jwk = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ format: 'jwk' })
  await insertClientRow(app.db, { id: 'svc-jwt', jwks: { keys: [{ ...jwk, kid: 'k1', alg: 'ES256' }] } })
  // Signed by nobody's key: each is a failed authentication.
  const forged = (n: number): string => [
    Buffer.from(JSON.stringify({ alg: 'ES256', kid: 'k1' })).toString('base64url'),
    Buffer.from(JSON.stringify({ iss: 'svc-jwt', sub: 'svc-jwt', aud: 'x', jti: `j${n}`, exp: Math.floor(Date.now() / 1000) + 60 })).toString('base64url'),
    Buffer.alloc(64, n).toString('base64url')
  ].join('.')
  const attempt = async (address: string, n: number): Promise<number> => (await app.inject({
    method: 'POST',
    url: '/oauth/token',
    remoteAddress: address,
    headers: FORM,
    payload: form({
      grant_type: 'client_credentials',
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: forged(n)
    })
  })).statusCode
  for (let n = 1; n <= 3; n++) t.equal(await attempt(ATTACKER, n), 401, `forged assertion ${n}: 401`)
  t.equal(await attempt(ATTACKER, 4), 429, 'the fourth from that address is refused before any check')
  t.equal(await attempt(CLIENT_HOME, 5), 401, 'another address is still checked')
})
