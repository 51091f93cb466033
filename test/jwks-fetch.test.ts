// Reading a client's jwks_uri is bounded: in time, in size, in how often, and
// in where it may lead. Every JWKS server here is a real local server; each
// refused read must end in the same 401 invalid_client as any other failed
// client authentication, soon, and without holding the connection open.
import { generateKeyPairSync, randomUUID, sign, type KeyObject } from 'node:crypto'
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http'
import { createServer as createTcpServer, type Server, type Socket } from 'node:net'
import { once } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { build, sql, tokenRequest, type TestContext } from './helper.ts'

const ISSUER = 'https://auth.example.com'
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'
/** README: a jwks_uri is read within 3 s, headers and body together. */
const FETCH_BOUND_MS = 3000
/** README: one jwks_uri is read at most once per 10 s. */
const MIN_INTERVAL_MS = 10_000
/** The answer may come a little after the fetch bound on a loaded machine, never near a minute. */
const ANSWER_BOUND_MS = FETCH_BOUND_MS + 5000

interface Signer {
  kid: string
  privateKey: KeyObject
  jwk: Record<string, unknown>
}

function signer (kid: string): Signer {
  const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  return { kid, privateKey: pair.privateKey, jwk: { ...pair.publicKey.export({ format: 'jwk' }), kid, alg: 'ES256', use: 'sig' } }
}

const segment = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')

function assertion (key: Signer, clientId: string, kid: string = key.kid): string {
  const now = Math.floor(Date.now() / 1000)
  const input = `${segment({ alg: 'ES256', typ: 'JWT', kid })}.${segment({ iss: clientId, sub: clientId, aud: `${ISSUER}/oauth/token`, iat: now, exp: now + 60, jti: randomUUID() })}`
  return `${input}.${sign('sha256', Buffer.from(input), { key: key.privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`
}

async function present (app: FastifyInstance, clientAssertion: string): Promise<LightMyRequestResponse> {
  return await tokenRequest(app, { grant_type: 'client_credentials', client_assertion_type: ASSERTION_TYPE, client_assertion: clientAssertion })
}

function assertRefused (t: Test, res: LightMyRequestResponse, what: string): void {
  t.equal(res.statusCode, 401, `${what}: 401`)
  t.equal(res.json().error, 'invalid_client', `${what}: invalid_client`)
}

/** A timed presentation: the answer, and how long it took. */
async function timed (app: FastifyInstance, clientAssertion: string): Promise<{ res: LightMyRequestResponse, ms: number }> {
  const started = Date.now()
  const res = await present(app, clientAssertion)
  return { res, ms: Date.now() - started }
}

/** Connections a local server accepted, and how many of them are still open. */
interface Connections {
  accepted: number
  open: number
  bytesSent: number
}

/** Counts a server's connections and destroys the leftovers at teardown. */
function trackConnections (t: TestContext, server: Server): Connections {
  const counts: Connections = { accepted: 0, open: 0, bytesSent: 0 }
  const sockets = new Set<Socket>()
  server.on('connection', (socket: Socket) => {
    counts.accepted++
    counts.open++
    sockets.add(socket)
    socket.on('close', () => {
      counts.open--
      counts.bytesSent += socket.bytesWritten
      sockets.delete(socket)
    })
  })
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy()
    await new Promise((resolve) => server.close(resolve))
  })
  return counts
}

async function listen (server: Server): Promise<number> {
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const address = server.address()
  return typeof address === 'object' && address !== null ? address.port : 0
}

/** An HTTP server on loopback; every request is counted by path. */
async function httpServer (t: TestContext, handle: (request: IncomingMessage, response: ServerResponse) => void): Promise<{ base: string, hits: Map<string, number>, connections: Connections }> {
  const hits = new Map<string, number>()
  const server = createHttpServer((request, response) => {
    hits.set(request.url ?? '', (hits.get(request.url ?? '') ?? 0) + 1)
    handle(request, response)
  })
  const connections = trackConnections(t, server)
  return { base: `http://127.0.0.1:${await listen(server)}`, hits, connections }
}

function sendKeys (response: ServerResponse, keys: unknown[]): void {
  response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ keys }))
}

async function addClient (databaseUrl: string, clientId: string, jwksUri: string): Promise<void> {
  await sql(databaseUrl, 'INSERT INTO clients (client_id, jwks_uri) VALUES ($1, $2)', [clientId, jwksUri])
}

/** Waits until `done` holds, or `ms` pass; says which. */
async function eventually (done: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (!done()) {
    if (Date.now() > deadline) return false
    await sleep(25)
  }
  return true
}

// Many assertions fail here from one address on purpose; the failure
// throttle (test/throttle.test.ts) must not answer them first.
const BASE_ENV = { JWT_ISSUER: ISSUER, AUTH_FAILURE_LIMIT: '1000', AUTH_FAILURE_LIMIT_PER_ADDRESS: '1000' }
const PRIVATE_ALLOWED = { ...BASE_ENV, JWKS_URI_ALLOW_PRIVATE: 'true' }

test('a server that trickles its answer is dropped at the bound, and its connection closed', async (t) => {
  const key = signer('k1')
  // Headers, then a byte of the body a second, forever.
  const body = await httpServer(t, (_request, response) => {
    response.writeHead(200, { 'content-type': 'application/json' })
    response.write('{"keys":[')
    const timer = setInterval(() => response.write(' '), 1000)
    response.on('close', () => clearInterval(timer))
  })
  // The status line, then a header line a second: the headers never end.
  const raw = createTcpServer((socket) => {
    socket.on('error', () => {})
    socket.write('HTTP/1.1 200 OK\r\n')
    let n = 0
    const timer = setInterval(() => socket.write(`x-slow-${n++}: y\r\n`), 1000)
    socket.on('close', () => clearInterval(timer))
  })
  const headers = trackConnections(t, raw)
  const rawPort = await listen(raw)

  const { app, databaseUrl } = await build(t, { env: PRIVATE_ALLOWED })
  await addClient(databaseUrl, 'svc-slow-body', `${body.base}/jwks`)
  await addClient(databaseUrl, 'svc-slow-headers', `http://127.0.0.1:${rawPort}/jwks`)

  for (const [clientId, connections] of [['svc-slow-body', body.connections], ['svc-slow-headers', headers]] as const) {
    const { res, ms } = await timed(app, assertion(key, clientId))
    assertRefused(t, res, clientId)
    t.ok(ms < ANSWER_BOUND_MS, `${clientId}: answered in ${ms} ms (bound ${FETCH_BOUND_MS} ms)`)
    t.equal(connections.accepted, 1, `${clientId}: one connection`)
    t.ok(await eventually(() => connections.open === 0, 2000), `${clientId}: the connection is closed, not held`)
  }
})

test('a huge JWK Set is abandoned after 64 KiB: memory stays flat', async (t) => {
  const key = signer('k1')
  const entry = Buffer.from(JSON.stringify({ kty: 'EC', crv: 'P-256', x: 'A'.repeat(43), y: 'A'.repeat(43) }) + ',')
  const chunk = Buffer.concat(Array.from({ length: 1024 }, () => entry))
  const total = 64 * 1024 * 1024
  const huge = await httpServer(t, (request, response) => {
    // A valid JSON document of 64 MB, streamed as fast as it is read.
    const declared = request.url === '/declared'
    response.writeHead(200, { 'content-type': 'application/json', ...(declared ? { 'content-length': String(total) } : {}) })
    response.write('{"keys":[')
    let sent = 0
    const more = (): void => {
      while (sent < total && !response.destroyed) {
        sent += chunk.length
        if (!response.write(chunk)) {
          response.once('drain', more)
          return
        }
      }
      if (!response.destroyed) response.end('{}]}')
    }
    more()
  })
  const { app, databaseUrl } = await build(t, { env: PRIVATE_ALLOWED })
  await addClient(databaseUrl, 'svc-huge', `${huge.base}/streamed`)
  await addClient(databaseUrl, 'svc-declared', `${huge.base}/declared`)

  const baseline = process.memoryUsage().rss
  let peak = baseline
  const sampler = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss) }, 20)
  try {
    for (const clientId of ['svc-huge', 'svc-declared']) {
      const { res, ms } = await timed(app, assertion(key, clientId))
      assertRefused(t, res, clientId)
      t.ok(ms < ANSWER_BOUND_MS, `${clientId}: answered in ${ms} ms`)
    }
    t.ok(await eventually(() => huge.connections.open === 0, 5000), 'both connections are closed')
  } finally {
    clearInterval(sampler)
  }
  const grewMb = (peak - baseline) / 2 ** 20
  t.ok(grewMb < 48, `the process grew by ${grewMb.toFixed(1)} MB reading two 64 MB answers`)
  const sentMb = huge.connections.bytesSent / 2 ** 20
  t.ok(sentMb < 32, `the servers got ${sentMb.toFixed(1)} MB of their 128 MB out before the connections closed`)
})

test('answers that are not a JWK Set, redirects and failures are refused alike', async (t) => {
  const key = signer('k1')
  const target = await httpServer(t, (_request, response) => sendKeys(response, [key.jwk]))
  const odd = await httpServer(t, (request, response) => {
    switch (request.url) {
      case '/text': response.writeHead(200, { 'content-type': 'text/plain' }).end('keys'); break
      case '/no-keys': response.writeHead(200, { 'content-type': 'application/json' }).end('{"jwks":[]}'); break
      case '/array': response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify([key.jwk])); break
      case '/moved': response.writeHead(302, { location: `${target.base}/jwks` }).end(); break
      case '/permanent': response.writeHead(301, { location: `${target.base}/jwks` }).end(); break
      default: response.writeHead(500).end()
    }
  })
  const { app, databaseUrl } = await build(t, { env: PRIVATE_ALLOWED })
  for (const path of ['/text', '/no-keys', '/array', '/moved', '/permanent', '/broken']) {
    const clientId = `svc${path.replace('/', '-')}`
    await addClient(databaseUrl, clientId, `${odd.base}${path}`)
    assertRefused(t, await present(app, assertion(key, clientId)), path)
  }
  t.equal(target.connections.accepted, 0, 'a redirect is never followed')
  await addClient(databaseUrl, 'svc-control', `${target.base}/jwks`)
  t.equal((await present(app, assertion(key, 'svc-control'))).statusCode, 200, 'control: the redirect target itself serves good keys')
})

test('made-up kids and failing servers cost one read a while, not one each', async (t) => {
  const key = signer('k1')
  const next = signer('k2')
  const sets = new Map<string, unknown[] | number>([['/count', [key.jwk]], ['/burst', [key.jwk]], ['/fails', 500]])
  const server = await httpServer(t, (request, response) => {
    const set = sets.get(request.url ?? '') ?? 404
    if (typeof set === 'number') response.writeHead(set).end()
    else sendKeys(response, set)
  })
  const { app, databaseUrl } = await build(t, { env: PRIVATE_ALLOWED })
  await addClient(databaseUrl, 'svc-count', `${server.base}/count`)
  await addClient(databaseUrl, 'svc-burst', `${server.base}/burst`)
  await addClient(databaseUrl, 'svc-fails', `${server.base}/fails`)
  const firstRead = Date.now()

  for (let i = 0; i < 40; i++) assertRefused(t, await present(app, assertion(key, 'svc-count', randomUUID())), `random kid ${i + 1}`)
  t.equal(server.hits.get('/count'), 1, '40 assertions with random kids: one read')
  t.equal((await present(app, assertion(key, 'svc-count'))).statusCode, 200, 'the registered kid still passes, from the cached set')
  t.equal(server.hits.get('/count'), 1, 'without another read')

  const burst = await Promise.all(Array.from({ length: 20 }, async () => await present(app, assertion(key, 'svc-burst', randomUUID()))))
  t.same(burst.map((res) => res.statusCode), Array(20).fill(401), '20 concurrent made-up kids: all refused')
  t.equal(server.hits.get('/burst'), 1, 'with one read between them')

  for (let i = 0; i < 10; i++) assertRefused(t, await present(app, assertion(key, 'svc-fails')), `failing server ${i + 1}`)
  t.equal(server.hits.get('/fails'), 1, 'a failed read is remembered: ten assertions, one read')

  // A client rotates by publishing its new key first: once 10 s have passed
  // since the last read, a kid not in the cached set is read for once more.
  sets.set('/count', [key.jwk, next.jwk])
  sets.set('/fails', [key.jwk])
  await sleep(Math.max(0, firstRead + MIN_INTERVAL_MS + 500 - Date.now()))
  t.equal((await present(app, assertion(next, 'svc-count'))).statusCode, 200, 'the new key passes after the interval')
  t.equal(server.hits.get('/count'), 2, 'with one more read')
  assertRefused(t, await present(app, assertion(key, 'svc-count', randomUUID())), 'a made-up kid right after')
  t.equal(server.hits.get('/count'), 2, 'costs no read')
  assertRefused(t, await present(app, assertion(key, 'svc-fails')), 'the failed server, mended, within the minute')
  t.equal(server.hits.get('/fails'), 1, 'is not read again before the failure is forgotten')
})

test('without JWKS_URI_ALLOW_PRIVATE: https only, and never to this host or private networks', async (t) => {
  const key = signer('k1')
  const plain = await httpServer(t, (_request, response) => sendKeys(response, [key.jwk]))
  // Anything that connects here is counted, TLS or not.
  const tls = createTcpServer((socket) => socket.destroy())
  const tlsConnections = trackConnections(t, tls)
  const tlsPort = await listen(tls)

  const { app, databaseUrl } = await build(t, { env: BASE_ENV })
  const refused: Array<[string, string]> = [
    ['plain http', `${plain.base}/jwks`],
    ['loopback address', `https://127.0.0.1:${tlsPort}/jwks`],
    ['a name that resolves to loopback', `https://localhost:${tlsPort}/jwks`],
    ['loopback in another spelling', `https://0x7f.1:${tlsPort}/jwks`],
    ['IPv6 loopback', `https://[::1]:${tlsPort}/jwks`],
    ['IPv4-mapped loopback', `https://[::ffff:127.0.0.1]:${tlsPort}/jwks`],
    ['RFC 1918', 'https://10.0.0.1/jwks'],
    ['RFC 1918, 192.168/16', 'https://192.168.1.1/jwks'],
    ['cloud metadata', 'https://169.254.169.254/latest/jwks'],
    ['IPv6 cloud metadata', 'https://[fd00:ec2::254]/jwks'],
    ['link-local IPv6', 'https://[fe80::1]/jwks'],
    ['CGNAT', 'https://100.64.0.1/jwks'],
    ['unspecified', `https://0.0.0.0:${tlsPort}/jwks`]
  ]
  for (const [what, uri] of refused) {
    const clientId = `svc-${what.replace(/\W+/g, '-')}`
    await addClient(databaseUrl, clientId, uri)
    const { res, ms } = await timed(app, assertion(key, clientId))
    assertRefused(t, res, what)
    t.ok(ms < ANSWER_BOUND_MS, `${what}: answered in ${ms} ms`)
  }
  t.equal(plain.connections.accepted, 0, 'the plain http server was never contacted')
  t.equal(tlsConnections.accepted, 0, 'nothing on this host was contacted')
})
