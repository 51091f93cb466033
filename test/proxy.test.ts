// Behind a load balancer, the client's address comes from X-Forwarded-For,
// and only its trustworthy part counts: an AWS ALB appends the address it
// got the connection from, so the right-most entries are the proxies' own
// word and anything to their left is whatever the client sent. The app is
// built as server.ts builds it, with Fastify's trustProxy from TRUST_PROXY.
import { generateKeyPairSync, randomUUID, sign } from 'node:crypto'
import Fastify, { type FastifyInstance, type LightMyRequestResponse } from 'fastify'
import { test } from 'tap'
import app, { options } from '../app.ts'
import { ConfigError, loadConfig } from '../plugins/config.ts'
import { attachEmbedded, basicAuth, createDatabase, createRedisPrefix, form, FORM, insertClient, sql, testEnv, type TestContext } from './helper.ts'

/** The balancer, inside its VPC. */
const ALB = '10.0.1.5'
const ALB_CIDR = '10.0.0.0/16'
const CLIENT = '198.51.100.20'
const NEIGHBOUR = '198.51.100.30'
const LIMIT = 3
const THROTTLE_ENV = { AUTH_FAILURE_LIMIT: '100', AUTH_FAILURE_LIMIT_PER_ADDRESS: String(LIMIT) }

function configFor (env: Record<string, string>): ReturnType<typeof loadConfig> {
  return loadConfig(testEnv('postgres://postgres@127.0.0.1:5432/unused', 'unused:', env))
}

async function buildBehindProxy (t: TestContext, env: Record<string, string>): Promise<{ app: FastifyInstance, databaseUrl: string }> {
  const databaseUrl = await createDatabase(t)
  const config = loadConfig(testEnv(databaseUrl, createRedisPrefix(t), env))
  const instance = Fastify({ ...options, logger: false, trustProxy: config.trustProxy })
  await instance.register(app, { config })
  t.teardown(async () => await instance.close())
  await instance.ready()
  attachEmbedded(instance, databaseUrl)
  return { app: instance, databaseUrl }
}

/** The address Fastify settles on for a request from `peer` with this X-Forwarded-For. */
async function addressSeen (trustProxy: string, peer: string, forwardedFor: string): Promise<string> {
  const config = configFor({ TRUST_PROXY: trustProxy })
  const instance = Fastify({ trustProxy: config.trustProxy })
  instance.get('/ip', async (request) => request.ip)
  try {
    return (await instance.inject({ url: '/ip', remoteAddress: peer, headers: { 'x-forwarded-for': forwardedFor } })).body
  } finally {
    await instance.close()
  }
}

test('TRUST_PROXY: false, true, a hop count, or addresses and CIDR ranges', async (t) => {
  // What the client sent, then what the balancer appended.
  const chain = `203.0.113.66, ${CLIENT}`
  const cases: Array<[string, string, string, string]> = [
    ['false', ALB, chain, ALB],
    ['', ALB, chain, ALB],
    ['true', ALB, chain, '203.0.113.66'],
    ['1', ALB, chain, CLIENT],
    ['2', ALB, chain, '203.0.113.66'],
    [ALB_CIDR, ALB, chain, CLIENT],
    [ALB, ALB, chain, CLIENT],
    [`${ALB_CIDR}, 192.0.2.0/24`, ALB, `${chain}, 192.0.2.8`, CLIENT],
    ['fd00:ec2::/32', 'fd00:ec2::7', chain, CLIENT],
    ['loopback', '127.0.0.1', chain, CLIENT],
    // A peer outside the list is the client itself: its header is not believed.
    [ALB_CIDR, '192.0.2.99', chain, '192.0.2.99']
  ]
  for (const [value, peer, forwardedFor, expected] of cases) {
    t.equal(await addressSeen(value, peer, forwardedFor), expected, `TRUST_PROXY=${JSON.stringify(value)}, peer ${peer}, X-Forwarded-For "${forwardedFor}": ${expected}`)
  }

  for (const value of ['0', '101', '-1', '1.5', 'yes', 'alb.internal', `${ALB_CIDR}, alb.internal`, ',']) {
    let refusal: unknown
    try {
      configFor({ TRUST_PROXY: value })
    } catch (err) {
      refusal = err
    }
    t.ok(refusal instanceof ConfigError && refusal.message.startsWith('TRUST_PROXY'),
      `TRUST_PROXY=${JSON.stringify(value)} stops the configuration, naming the variable: ${String(refusal)}`)
  }
})

/** A token request through the balancer: the client's own X-Forwarded-For, with the peer address appended as an ALB does. */
async function throughAlb (instance: FastifyInstance, realAddress: string, claimed: string, clientId: string, secret: string): Promise<LightMyRequestResponse> {
  return await instance.inject({
    method: 'POST',
    url: '/oauth/token',
    remoteAddress: ALB,
    headers: { ...FORM, authorization: basicAuth(clientId, secret), 'x-forwarded-for': `${claimed}, ${realAddress}` },
    payload: form({ grant_type: 'client_credentials' })
  })
}

/** Wrong secrets from one real address, each claiming another address; the statuses in order. */
async function guessThroughAlb (instance: FastifyInstance, attempts: number): Promise<number[]> {
  const statuses: number[] = []
  for (let i = 1; i <= attempts; i++) {
    statuses.push((await throughAlb(instance, CLIENT, `203.0.113.${i}`, 'svc-alb', `guess-${i}`)).statusCode)
  }
  return statuses
}

for (const trustProxy of ['1', ALB_CIDR]) {
  test(`behind an ALB with TRUST_PROXY=${trustProxy}, a spoofed X-Forwarded-For does not escape the failure throttle`, async (t) => {
    const { app: instance, databaseUrl } = await buildBehindProxy(t, { ...THROTTLE_ENV, TRUST_PROXY: trustProxy })
    await insertClient(databaseUrl, { id: 'svc-alb', secret: 'alb-secret' })

    const statuses = await guessThroughAlb(instance, LIMIT + 3)
    t.same(statuses.slice(0, LIMIT), Array(LIMIT).fill(401), `the first ${LIMIT} wrong secrets: 401`)
    t.equal(statuses.at(-1), 429, `then 429, though each claimed another address (${statuses.join(', ')})`)

    // Another client behind the same balancer keeps its own budget, even when
    // it claims the throttled address.
    t.equal((await throughAlb(instance, NEIGHBOUR, CLIENT, 'svc-alb', 'alb-secret')).statusCode, 200, 'another real address: the right secret passes')
    t.equal((await throughAlb(instance, NEIGHBOUR, '203.0.113.50', 'svc-alb', 'wrong')).statusCode, 401, 'another real address: a wrong secret is checked, 401')
  })
}

test('behind an ALB, TRUST_PROXY unset or true goes wrong', async (t) => {
  // Unset: every client has the balancer's address, so one client's guesses
  // throttle all of them.
  const unset = await buildBehindProxy(t, THROTTLE_ENV)
  await insertClient(unset.databaseUrl, { id: 'svc-alb', secret: 'alb-secret' })
  t.equal((await guessThroughAlb(unset.app, LIMIT + 3)).at(-1), 429, 'unset: the guessing client is throttled')
  t.equal((await throughAlb(unset.app, NEIGHBOUR, '203.0.113.50', 'svc-alb', 'alb-secret')).statusCode, 429, 'unset: and so is everyone behind the balancer')

  // true: the left-most entry, which the client writes, is taken as its
  // address, so a new claim each time is never throttled.
  const trusting = await buildBehindProxy(t, { ...THROTTLE_ENV, TRUST_PROXY: 'true' })
  await insertClient(trusting.databaseUrl, { id: 'svc-alb', secret: 'alb-secret' })
  t.same(await guessThroughAlb(trusting.app, LIMIT + 3), Array(LIMIT + 3).fill(401), 'true: a client that varies its claim is never throttled')
})

test('trusted forwarded headers do not change the published URLs or the accepted audiences', async (t) => {
  const { app: instance, databaseUrl } = await buildBehindProxy(t, { JWT_ISSUER: 'https://auth.example.com', TRUST_PROXY: 'true' })
  const forwarded = { host: 'evil.example', 'x-forwarded-host': 'evil.example', 'x-forwarded-proto': 'http' }

  const plain = await instance.inject({ url: '/.well-known/openid-configuration' })
  const steered = await instance.inject({ url: '/.well-known/openid-configuration', headers: forwarded })
  t.equal(steered.body, plain.body, 'the discovery document is the same')
  t.equal(steered.json().token_endpoint, 'https://auth.example.com/oauth/token')

  const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  await sql(databaseUrl, 'INSERT INTO clients (client_id, jwks) VALUES ($1, $2)', ['svc-keys', JSON.stringify({ keys: [pair.publicKey.export({ format: 'jwk' })] })])
  const assertionFor = (aud: string): string => {
    const now = Math.floor(Date.now() / 1000)
    const segment = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')
    const input = `${segment({ alg: 'ES256' })}.${segment({ iss: 'svc-keys', sub: 'svc-keys', aud, exp: now + 60, jti: randomUUID() })}`
    return `${input}.${sign('sha256', Buffer.from(input), { key: pair.privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`
  }
  const present = async (aud: string): Promise<LightMyRequestResponse> => await instance.inject({
    method: 'POST',
    url: '/oauth/token',
    headers: { ...FORM, ...forwarded },
    payload: form({ grant_type: 'client_credentials', client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer', client_assertion: assertionFor(aud) })
  })
  t.equal((await present('http://evil.example/oauth/token')).statusCode, 401, 'an assertion for the forwarded host is refused')
  t.equal((await present('https://auth.example.com/oauth/token')).statusCode, 200, 'one for the configured URL passes')
})
