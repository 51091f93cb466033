// Nothing secret reaches the log. The server process runs at LOG_LEVEL=trace
// (everything it can say), and secrets and tokens are sent in every place a
// client might put them: the query string, form and JSON bodies, Basic and
// Bearer authorization, custom headers, cookies, the token parameters of
// revoke, introspect and verify. Then the whole log is searched for each of
// them, and for a 400-character client id, which may appear cut to 128.
import { createHash, generateKeyPairSync, randomBytes, randomUUID, sign } from 'node:crypto'
import { test, type Test } from 'tap'
import { basicAuth, createDatabase, createRedisPrefix, embeddedDir, freePort, insertClient, pollUntil, ServerProcess, testEnv, waitForHealth } from './helper.ts'

const FORM = 'application/x-www-form-urlencoded'
const MAX_CLIENT_ID = 128

interface TokenBody {
  access_token: string
  refresh_token: string
}

/** What this run sends: marked with a random string, so that the log cannot hold them from elsewhere. */
interface Marks {
  clientId: string
  secret: string
  wrongSecret: string
  headerSecret: string
  cookieSecret: string
  /** 400 characters */
  longId: string
}

function newMarks (): Marks {
  const mark = randomBytes(6).toString('hex')
  return {
    clientId: `log-scan-${mark}`,
    secret: `log-scan-secret-${mark}`,
    wrongSecret: `log-scan-wrong-${mark}`,
    headerSecret: `log-scan-header-${mark}`,
    cookieSecret: `log-scan-cookie-${mark}`,
    longId: `long-id-${mark}-`.repeat(40).slice(0, 400)
  }
}

interface Issued {
  basic: TokenBody
  posted: TokenBody
  refreshed: TokenBody
}

type Send = (path: string, init?: { method?: string, headers?: Record<string, string>, body?: string }) => Promise<Response>

const form = (fields: Record<string, string>): string => new URLSearchParams(fields).toString()

/** Tokens by Basic, by client_secret_post, and by a refresh. */
async function issueAll (t: Test, send: Send, { clientId, secret }: Marks): Promise<Issued> {
  const authorization = basicAuth(clientId, secret)
  const tokens = async (res: Response, what: string): Promise<TokenBody> => {
    t.equal(res.status, 200, `${what}: 200`)
    return await res.json() as TokenBody
  }

  // Basic, and client_secret_post.
  const basic = await tokens(await send('/oauth/token', { headers: { authorization, 'content-type': FORM }, body: form({ grant_type: 'client_credentials' }) }), 'Basic')
  const posted = await tokens(await send('/oauth/token', {
    headers: { 'content-type': FORM },
    body: form({ grant_type: 'client_credentials', client_id: clientId, client_secret: secret })
  }), 'client_secret_post')
  // A refresh, with the refresh token in the body.
  const refreshed = await tokens(await send('/oauth/token', {
    headers: { authorization, 'content-type': FORM },
    body: form({ grant_type: 'refresh_token', refresh_token: basic.refresh_token })
  }), 'refresh')
  return { basic, posted, refreshed }
}

/** DPoP proofs (RFC 9449): one for the token endpoint at `tokenUrl`, one refused there (another htu), one presented with `token` to verify. */
interface Proofs { accepted: string, refused: string, presented: string }

function dpopProofs (tokenUrl: string, token: string): Proofs {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const part = (value: object): string => Buffer.from(JSON.stringify(value)).toString('base64url')
  const proof = (claims: Record<string, unknown>): string => {
    const input = `${part({ typ: 'dpop+jwt', alg: 'ES256', jwk: publicKey.export({ format: 'jwk' }) })}.${part({ jti: randomUUID(), htm: 'POST', iat: Math.floor(Date.now() / 1000), ...claims })}`
    return `${input}.${sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`
  }
  return {
    accepted: proof({ htu: tokenUrl }),
    refused: proof({ htu: 'https://elsewhere.example/oauth/token' }),
    presented: proof({ htm: 'GET', htu: 'https://api.example/orders', ath: createHash('sha256').update(token).digest('base64url') })
  }
}

/** Requests with a secret or a token in every place a client might put one. */
function requestsCarrying (send: Send, marks: Marks, { basic, posted, refreshed }: Issued, proofs: Proofs): Array<[string, Promise<Response>]> {
  const { clientId, secret, wrongSecret, headerSecret, cookieSecret } = marks
  const authorization = basicAuth(clientId, secret)
  return [
  // Credentials and tokens in the query string, whatever the answer.
    ['query string at the token endpoint', send(`/oauth/token?${form({ client_id: clientId, client_secret: secret, refresh_token: refreshed.refresh_token })}`, {
      headers: { 'content-type': FORM }, body: form({ grant_type: 'client_credentials' })
    })],
    ['query string at verify', send(`/oauth/verify?${form({ token: posted.access_token })}`, { headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: posted.access_token }) })],
    ['query string on a GET', send(`/health?${form({ access_token: refreshed.access_token, client_secret: secret })}`, { method: 'GET' })],
    ['query string of an unknown path', send(`/no-such-path?${form({ client_secret: secret })}`, { method: 'GET' })],
    ['malformed percent-encoding in the query', send(`/oauth/token?client_secret=${secret}%zz`, { headers: { 'content-type': FORM }, body: form({ grant_type: 'client_credentials' }) })],
    ['malformed percent-encoding in the path', send(`/%zz?client_secret=${secret}`, { method: 'GET' })],
    // A JSON body where a form is expected.
    ['JSON body at the token endpoint', send('/oauth/token', {
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ grant_type: 'client_credentials', client_id: clientId, client_secret: secret })
    })],
    ['malformed JSON at verify', send('/oauth/verify', { headers: { 'content-type': 'application/json' }, body: `{"token": "${posted.access_token}"` })],
    // A wrong secret, Basic and posted.
    ['wrong secret (Basic)', send('/oauth/token', { headers: { authorization: basicAuth(clientId, wrongSecret), 'content-type': FORM }, body: form({ grant_type: 'client_credentials' }) })],
    ['wrong secret (post)', send('/oauth/token', { headers: { 'content-type': FORM }, body: form({ grant_type: 'client_credentials', client_id: clientId, client_secret: wrongSecret }) })],
    // Bearer tokens, custom headers, cookies.
    ['Bearer at verify', send('/oauth/verify', { headers: { authorization: `Bearer ${basic.access_token}`, 'content-type': 'application/json' }, body: JSON.stringify({ token: basic.access_token }) })],
    ['Bearer at the token endpoint', send('/oauth/token', { headers: { authorization: `Bearer ${refreshed.access_token}`, 'content-type': FORM }, body: form({ grant_type: 'client_credentials' }) })],
    ['custom headers and cookies', send('/.well-known/jwks.json', {
      method: 'GET',
      headers: {
        'x-client-secret': secret,
        'x-api-key': headerSecret,
        'accept-version': headerSecret,
        'x-refresh-token': refreshed.refresh_token,
        cookie: `session=${cookieSecret}; token=${refreshed.access_token}`
      }
    })],
    // Introspection and revocation of every token.
    ['introspect a refresh token', send('/oauth/introspect', { headers: { authorization, 'content-type': FORM }, body: form({ token: refreshed.refresh_token, token_type_hint: 'refresh_token' }) })],
    ['introspect an access token', send('/oauth/introspect', { headers: { authorization, 'content-type': FORM }, body: form({ token: refreshed.access_token }) })],
    ['revoke an access token', send('/oauth/revoke', { headers: { authorization, 'content-type': FORM }, body: form({ token: posted.access_token }) })],
    ['revoke a refresh token', send('/oauth/revoke', { headers: { authorization, 'content-type': FORM }, body: form({ token: posted.refresh_token }) })],
    ['a token exchange, subject and actor tokens in the form', send('/oauth/token', {
      headers: { authorization, 'content-type': FORM },
      body: form({
        grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
        subject_token: refreshed.access_token,
        subject_token_type: 'urn:ietf:params:oauth:token-type:access_token',
        actor_token: basic.access_token,
        actor_token_type: 'urn:ietf:params:oauth:token-type:access_token'
      })
    })],
    ['a used refresh token again (reuse detection)', send('/oauth/token', { headers: { authorization, 'content-type': FORM }, body: form({ grant_type: 'refresh_token', refresh_token: basic.refresh_token }) })],
    ['verify a revoked token', send('/oauth/verify', { headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token: posted.access_token }) })],
    // DPoP proofs, accepted and refused, in the header and in a JSON body.
    ['a DPoP proof', send('/oauth/token', { headers: { authorization, 'content-type': FORM, dpop: proofs.accepted }, body: form({ grant_type: 'client_credentials' }) })],
    ['a refused DPoP proof', send('/oauth/token', { headers: { authorization, 'content-type': FORM, dpop: proofs.refused }, body: form({ grant_type: 'client_credentials' }) })],
    ['a DPoP proof at verify', send('/oauth/verify', {
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ token: refreshed.access_token, dpop: proofs.presented, method: 'GET', url: 'https://api.example/orders' })
    })]
  ]
}

/** The server's log lines, once the request to `lastPath` shows in them as completed (or after 10 s). */
async function logUntil (server: ServerProcess, lastPath: string): Promise<Array<Record<string, unknown>>> {
  const lines = (): Array<Record<string, unknown>> => server.stdout.split('\n').filter((line) => line.trim() !== '').map((line) => JSON.parse(line) as Record<string, unknown>)
  const completed = (log: Array<Record<string, unknown>>): boolean => {
    const end = log.find((line) => loggedUrl(line) === lastPath)
    return end !== undefined && log.some((line) => line.reqId === end.reqId && line.msg === 'request completed')
  }
  await pollUntil(async () => lines(), completed, 10_000, 50)
  return lines()
}

const loggedUrl = (line: Record<string, unknown>): string | undefined => (line.req as { url?: string } | undefined)?.url

/** Every secret and token of the run, by name, as they could appear in the log. */
function secretsOf (marks: Marks, { basic, posted, refreshed }: Issued, proofs: Proofs): Array<[string, string]> {
  const { clientId, secret, wrongSecret, headerSecret, cookieSecret } = marks
  const basicValue = (id: string, value: string): string => basicAuth(id, value).slice('Basic '.length)
  return [
    ['the client secret', secret],
    ['the client secret, form-encoded', encodeURIComponent(secret)],
    ['a wrong secret', wrongSecret],
    ['the Basic credentials', basicValue(clientId, secret)],
    ['the wrong Basic credentials', basicValue(clientId, wrongSecret)],
    ['a custom header value', headerSecret],
    ['a cookie value', cookieSecret],
    ['the first access token', basic.access_token],
    ['the first refresh token', basic.refresh_token],
    ['the posted access token', posted.access_token],
    ['the posted refresh token', posted.refresh_token],
    ['the refreshed access token', refreshed.access_token],
    ['the refreshed refresh token', refreshed.refresh_token],
    ['the signature of an access token', basic.access_token.split('.')[2] ?? basic.access_token],
    ['a DPoP proof', proofs.accepted],
    ['a refused DPoP proof', proofs.refused],
    ['a DPoP proof sent to verify', proofs.presented],
    ['the signature of a DPoP proof', proofs.accepted.split('.')[2] ?? proofs.accepted]
  ]
}

test('secrets and tokens sent anywhere in a request never reach the log, and client ids are cut to 128 characters', async (t) => {
  const marks = newMarks()
  const { clientId, secret, wrongSecret, longId } = marks

  const databaseUrl = await createDatabase(t)
  // An embedded database (migrated already) admits one opener: the client is
  // made before the process starts; a server's, once the process has migrated it.
  const embedded = embeddedDir(databaseUrl) !== undefined
  if (embedded) await insertClient(databaseUrl, { id: clientId, secret })

  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  const server = new ServerProcess(t, testEnv(databaseUrl, createRedisPrefix(t), { SERVER_PORT: String(port), SERVER_HOST: '127.0.0.1', LOG_LEVEL: 'trace' }))
  const healthStatus = await waitForHealth(base, () => server.running, 60_000)
  t.equal(healthStatus, 200, 'the server answers /health', { stderr: server.stderr })
  if (healthStatus !== 200) return
  if (!embedded) await insertClient(databaseUrl, { id: clientId, secret })

  const send: Send = async (path, init = {}) =>
    await fetch(`${base}${path}`, { method: init.method ?? 'POST', headers: init.headers, body: init.body, signal: AbortSignal.timeout(20_000) })
  const { basic, posted, refreshed } = await issueAll(t, send, marks)

  const proofs = dpopProofs(`http://localhost:${port}/oauth/token`, refreshed.access_token)
  const attempts = requestsCarrying(send, marks, { basic, posted, refreshed }, proofs)
  for (const [what, pending] of attempts) {
    const res = await pending
    await res.arrayBuffer()
    t.ok(res.status < 500, `${what}: answered without a server error (${res.status})`)
  }

  // A 400-character client id, until the failure throttle speaks too.
  for (let attempt = 0; attempt < 12; attempt++) {
    const res = attempt % 2 === 0
      ? await send('/oauth/token', { headers: { authorization: basicAuth(longId, wrongSecret), 'content-type': FORM }, body: form({ grant_type: 'client_credentials' }) })
      : await send('/oauth/token', { headers: { 'content-type': FORM }, body: form({ grant_type: 'client_credentials', client_id: longId, client_secret: wrongSecret }) })
    await res.arrayBuffer()
  }

  // The last request's completion marks the end of what is to be scanned.
  await (await send('/log-scan-end', { method: 'GET' })).arrayBuffer()
  const log = await logUntil(server, '/log-scan-end')
  t.ok(log.some((line) => loggedUrl(line) === '/log-scan-end'), 'the log reached the last request')
  t.ok(log.some((line) => line.level === 10 || line.level === 20) || log.length > 50, 'the log was written at trace level (many lines)')
  t.ok(log.some((line) => loggedUrl(line) === '/oauth/token'), 'requests are logged with their path')
  t.strictSame(log.filter((line) => loggedUrl(line)?.includes('?') === true).map(loggedUrl), [], 'no logged URL has a query string')

  const secrets = secretsOf(marks, { basic, posted, refreshed }, proofs)
  for (const [what, value] of secrets) {
    t.notOk(server.stdout.includes(value), `${what} is not in the log`)
    t.notOk(server.stderr.includes(value), `${what} is not on stderr`)
  }

  t.notOk(server.stdout.includes(longId.slice(0, MAX_CLIENT_ID + 1)), `no run of more than ${MAX_CLIENT_ID} characters of the long client id is in the log`)
  const loggedIds = log.flatMap((line) => [line.clientId, line.client_id]).filter((value): value is string => typeof value === 'string')
  t.strictSame(loggedIds.filter((id) => id.length > MAX_CLIENT_ID), [], `every logged client id has at most ${MAX_CLIENT_ID} characters`)
  t.ok(loggedIds.some((id) => id.startsWith(longId.slice(0, MAX_CLIENT_ID - 1))), 'the long client id was logged, cut')
})
