// The Lambda entry point as AWS runs it: lambda.ts is imported once (its init
// reads the environment and connects), then its handler receives API Gateway
// HTTP API events (payload format 2.0) and returns the proxy results that the
// gateway turns into HTTP answers.
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { attachEmbedded, basicAuth, createDatabase, createRedisPrefix, decodeJwt, form, insertClient, testEnv } from './helper.ts'

const ISSUER = 'https://auth.example.com'
const API_ID = 'a1b2c3d4e5'
const API_HOST = `${API_ID}.execute-api.eu-west-1.amazonaws.com`
const SOURCE_IP = '203.0.113.24'
const USER_AGENT = 'payments-worker/2.4 (+node)'
const CLIENT_ID = 'svc-lambda'
const CLIENT_SECRET = 'lambda-secret with spaces & symbols'

/** The part of an HTTP API payload 2.0 event that a Lambda function receives. */
interface HttpApiEvent {
  version: '2.0'
  routeKey: string
  rawPath: string
  rawQueryString: string
  cookies?: string[]
  headers: Record<string, string>
  queryStringParameters?: Record<string, string>
  requestContext: {
    accountId: string
    apiId: string
    domainName: string
    domainPrefix: string
    http: { method: string, path: string, protocol: string, sourceIp: string, userAgent: string }
    requestId: string
    routeKey: string
    stage: string
    time: string
    timeEpoch: number
  }
  body?: string
  isBase64Encoded: boolean
}

interface ProxyResult {
  statusCode: number
  headers: Record<string, string>
  body: string
  isBase64Encoded?: boolean
  cookies?: string[]
}

interface EventSpec {
  method: 'GET' | 'POST'
  path: string
  headers?: Record<string, string>
  /** Sent base64-encoded, as API Gateway passes form posts to Lambda. */
  formBody?: string
}

// API Gateway's access-log time format, e.g. 29/Nov/2025:01:55:00 +0000.
function requestTime (date: Date): string {
  const month = date.toLocaleString('en-US', { month: 'short', timeZone: 'UTC' })
  const pad = (n: number): string => String(n).padStart(2, '0')
  return `${pad(date.getUTCDate())}/${month}/${date.getUTCFullYear()}:${pad(date.getUTCHours())}:${pad(date.getUTCMinutes())}:${pad(date.getUTCSeconds())} +0000`
}

// What the gateway builds for a request on its default execute-api endpoint
// with the $default route: header names lower-cased, the client's address in
// x-forwarded-for and requestContext, no body field at all on a GET.
function httpApiEvent (spec: EventSpec): HttpApiEvent {
  const now = new Date()
  const headers: Record<string, string> = {
    accept: 'application/json',
    host: API_HOST,
    'user-agent': USER_AGENT,
    'x-amzn-trace-id': `Root=1-${Math.floor(now.getTime() / 1000).toString(16)}-${randomUUID().replace(/-/g, '').slice(0, 24)}`,
    'x-forwarded-for': SOURCE_IP,
    'x-forwarded-port': '443',
    'x-forwarded-proto': 'https',
    ...spec.headers
  }
  const event: HttpApiEvent = {
    version: '2.0',
    routeKey: '$default',
    rawPath: spec.path,
    rawQueryString: '',
    headers,
    requestContext: {
      accountId: '123456789012',
      apiId: API_ID,
      domainName: API_HOST,
      domainPrefix: API_ID,
      http: { method: spec.method, path: spec.path, protocol: 'HTTP/1.1', sourceIp: SOURCE_IP, userAgent: USER_AGENT },
      requestId: `${randomUUID().slice(0, 8)}=`,
      routeKey: '$default',
      stage: '$default',
      time: requestTime(now),
      timeEpoch: now.getTime()
    },
    isBase64Encoded: false
  }
  if (spec.formBody !== undefined) {
    headers['content-type'] = 'application/x-www-form-urlencoded'
    headers['content-length'] = String(Buffer.byteLength(spec.formBody))
    event.body = Buffer.from(spec.formBody).toString('base64')
    event.isBase64Encoded = true
  }
  return event
}

// The Lambda context object of one invocation (the handler does not read it,
// but the runtime always passes one).
function lambdaContext (): Record<string, unknown> {
  const deadline = Date.now() + 30_000
  return {
    callbackWaitsForEmptyEventLoop: true,
    functionName: 'session-service',
    functionVersion: '$LATEST',
    invokedFunctionArn: 'arn:aws:lambda:eu-west-1:123456789012:function:session-service',
    memoryLimitInMB: '512',
    awsRequestId: randomUUID(),
    logGroupName: '/aws/lambda/session-service',
    logStreamName: '2025/11/29/[$LATEST]0123456789abcdef0123456789abcdef',
    getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now())
  }
}

// lambda.ts configures itself from process.env when it is first imported, as
// the Lambda runtime does at init: the environment is set before the import.
const databaseUrl = await createDatabase(t)
const redisPrefix = createRedisPrefix(t)
Object.assign(process.env, testEnv(databaseUrl, redisPrefix, { JWT_ISSUER: ISSUER }))
const lambda = await import('../lambda.ts')
// Registered last, so run first: the app closes before its database is dropped.
t.teardown(async () => await lambda.app.close())

attachEmbedded(lambda.app, databaseUrl)

// The schema exists once the import has returned: migrations ran during init.
await insertClient(databaseUrl, { id: CLIENT_ID, secret: CLIENT_SECRET })

async function invoke (spec: EventSpec): Promise<ProxyResult> {
  return await lambda.handler(httpApiEvent(spec), lambdaContext()) as ProxyResult
}

function parseBody (result: ProxyResult): Record<string, unknown> {
  // A JSON answer goes back as text: base64 would be decoded by the gateway,
  // but nothing here needs it.
  if (result.isBase64Encoded === true) return JSON.parse(Buffer.from(result.body, 'base64').toString('utf8'))
  return JSON.parse(result.body)
}

// API Gateway refuses a proxy result whose header values are not strings.
function headersAreStrings (result: ProxyResult): boolean {
  return Object.values(result.headers).every((value) => typeof value === 'string')
}

interface Jwk {
  kty: string
  kid: string
  alg: string
  use: string
  d?: string
}

t.test('client_credentials with Basic auth through a base64-encoded form post', async (t) => {
  const result = await invoke({
    method: 'POST',
    path: '/oauth/token',
    headers: { authorization: basicAuth(CLIENT_ID, CLIENT_SECRET) },
    formBody: form({ grant_type: 'client_credentials' })
  })
  // On failure the body is an OAuth error, shown to explain it; a success
  // body holds tokens and is never printed.
  t.equal(result.statusCode, 200, result.statusCode === 200 ? 'tokens issued' : result.body)
  t.match(result.headers['content-type'], /^application\/json/)
  t.equal(result.headers['cache-control'], 'no-store')
  t.equal(result.headers.pragma, 'no-cache')
  t.ok(headersAreStrings(result), 'every header value is a string')
  t.equal(result.isBase64Encoded, false, 'JSON goes back as text')

  const body = parseBody(result)
  t.equal(body.token_type, 'Bearer')
  t.type(body.expires_in, 'number')
  t.type(body.access_token, 'string')
  const { header, payload } = decodeJwt(body.access_token as string)
  t.equal(payload.iss, ISSUER, 'iss is the configured issuer, byte for byte')
  t.equal(payload.sub, CLIENT_ID)
  t.equal(header.alg, 'RS256')

  // The gateway finds the token's key in the JWKS by kid.
  const jwks = parseBody(await invoke({ method: 'GET', path: '/.well-known/jwks.json' }))
  const kids = (jwks.keys as Jwk[]).map((key) => key.kid)
  t.ok(kids.includes(header.kid as string), 'the token kid is published')
})

t.test('a wrong client secret gets 401 invalid_client with a Basic challenge', async (t) => {
  const result = await invoke({
    method: 'POST',
    path: '/oauth/token',
    headers: { authorization: basicAuth(CLIENT_ID, 'not-the-secret') },
    formBody: form({ grant_type: 'client_credentials' })
  })
  t.equal(result.statusCode, 401)
  t.match(result.headers['www-authenticate'], /^Basic realm="[^"]+"$/)
  t.match(result.headers['content-type'], /^application\/json/)
  t.equal(result.headers['cache-control'], 'no-store')
  t.ok(headersAreStrings(result), 'every header value is a string')
  const body = parseBody(result)
  t.equal(body.error, 'invalid_client')
  t.type(body.error_description, 'string')
  t.notOk('access_token' in body)
})

t.test('GET /.well-known/jwks.json publishes the signing key', async (t) => {
  const result = await invoke({ method: 'GET', path: '/.well-known/jwks.json' })
  t.equal(result.statusCode, 200)
  t.match(result.headers['content-type'], /^application\/json/)
  t.match(result.headers['cache-control'], /^public, max-age=\d+$/)
  t.ok(headersAreStrings(result), 'every header value is a string')
  const keys = parseBody(result).keys as Jwk[]
  t.ok(Array.isArray(keys) && keys.length >= 1, 'at least one key')
  for (const key of keys) {
    t.equal(key.kty, 'RSA')
    t.type(key.kid, 'string')
    t.ok(key.kid.length > 0, 'kid is not empty')
    t.equal(key.alg, 'RS256')
    t.equal(key.use, 'sig')
    t.notOk('d' in key, 'no private parameter')
  }
})

t.test('GET /.well-known/openid-configuration names the configured issuer', async (t) => {
  const result = await invoke({ method: 'GET', path: '/.well-known/openid-configuration' })
  t.equal(result.statusCode, 200)
  t.match(result.headers['content-type'], /^application\/json/)
  t.ok(headersAreStrings(result), 'every header value is a string')
  const document = parseBody(result)
  t.equal(document.issuer, ISSUER, 'issuer equals JWT_ISSUER, byte for byte')
  t.equal(document.issuer, process.env.JWT_ISSUER)
  t.equal(document.jwks_uri, `${ISSUER}/.well-known/jwks.json`)
  t.equal(document.token_endpoint, `${ISSUER}/oauth/token`)
})

t.test('the handler serves the public routes only: the admin listener\'s are not found', async (t) => {
  for (const path of ['/metrics', '/ready', '/live', '/docs/json', '/admin/clients']) {
    const result = await invoke({ method: 'GET', path })
    t.equal(result.statusCode, 404, `GET ${path}: 404`)
    t.match(parseBody(result), { error: 'not_found' })
  }
  t.equal((await invoke({ method: 'GET', path: '/.well-known/jwks.json' })).statusCode, 200, 'while the public ones answer')
})

t.test('a configuration error fails the init with the variable named', async (t) => {
  const saved = { key: process.env.JWT_PRIVATE_KEY, database: process.env.DATABASE_URL }
  delete process.env.JWT_PRIVATE_KEY
  // With a database server the key is required (without one, the embedded
  // mode would make its own); this init fails before connecting to it.
  process.env.DATABASE_URL = saved.database ?? 'postgres://postgres@127.0.0.1:1/unused'
  t.teardown(() => {
    process.env.JWT_PRIVATE_KEY = saved.key
    if (saved.database === undefined) delete process.env.DATABASE_URL
    else process.env.DATABASE_URL = saved.database
  })
  // A query string makes a fresh module instance: the init runs again, as in
  // a new execution environment.
  const specifier = new URL('../lambda.ts?config-error', import.meta.url).href
  await t.rejects(import(specifier), { name: 'ConfigError', message: /^JWT_PRIVATE_KEY: is required/ })
})
