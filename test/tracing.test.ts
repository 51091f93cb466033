// Tracing end to end: server.ts runs as a process with
// OTEL_EXPORTER_OTLP_ENDPOINT pointing at a small OTLP/HTTP receiver here,
// token requests continue a W3C traceparent, and what the exporter sends is
// read back. The batch delay is a minute, so that every span arrives by the
// flush at shutdown, which the test thereby checks too.
import { createHash, randomBytes } from 'node:crypto'
import { test } from 'tap'
import { ScrubbingExporter } from '../tracing.ts'
import { basicAuth, createDatabase, createRedisPrefix, freePort, insertClient, needs, ServerProcess, testEnv, waitForHealth } from './helper.ts'
import { attribute, otlpReceiver, type OtlpExport, type OtlpSpan } from './helpers/otlp.ts'

const FORM = 'application/x-www-form-urlencoded'

const hex = (bytes: number): string => randomBytes(bytes).toString('hex')

test('a token request continues its traceparent; its span has the outcome, and bcrypt, PostgreSQL and Redis spans as children; no secret anywhere', { skip: needs.postgres || needs.redis }, async (t) => {
  const receiver = await otlpReceiver()
  t.teardown(() => { receiver.server.close() })

  const databaseUrl = await createDatabase(t)
  const port = await freePort()
  const base = `http://127.0.0.1:${port}`
  const server = new ServerProcess(t, testEnv(databaseUrl, createRedisPrefix(t), {
    SERVER_PORT: String(port),
    SERVER_HOST: '127.0.0.1',
    ADMIN_PORT: '0',
    LOG_LEVEL: 'warn',
    SHUTDOWN_DELAY: '0',
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    OTEL_BSP_SCHEDULE_DELAY: '60000'
  }))
  const healthStatus = await waitForHealth(base, () => server.running, 30_000)
  t.equal(healthStatus, 200, 'the server answers /health', { stderr: server.stderr })
  if (healthStatus !== 200) return

  const clientId = `traced-${hex(4)}`
  const secret = `traced-secret-${hex(8)}`
  await insertClient(databaseUrl, { id: clientId, secret })
  const authorization = basicAuth(clientId, secret)
  const traceId = hex(16)
  const parentId = hex(8)

  const issued = await fetch(`${base}/oauth/token`, {
    method: 'POST',
    headers: { authorization, 'content-type': FORM, traceparent: `00-${traceId}-${parentId}-01` },
    body: new URLSearchParams({ grant_type: 'client_credentials' }).toString()
  })
  t.equal(issued.status, 200, 'the token request succeeds')
  const tokens = await issued.json() as { access_token: string, refresh_token: string }

  const refreshTraceId = hex(16)
  const refreshed = await fetch(`${base}/oauth/token`, {
    method: 'POST',
    headers: { authorization, 'content-type': FORM, traceparent: `00-${refreshTraceId}-${hex(8)}-01` },
    body: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: tokens.refresh_token }).toString()
  })
  t.equal(refreshed.status, 200, 'the refresh succeeds')
  const newTokens = await refreshed.json() as { access_token: string, refresh_token: string }

  // Credentials in the query string, and a wrong secret: error answers.
  const queried = await fetch(`${base}/oauth/token?client_secret=${encodeURIComponent(secret)}&refresh_token=${newTokens.refresh_token}`, {
    method: 'POST',
    headers: { 'content-type': FORM },
    body: new URLSearchParams({ grant_type: 'client_credentials', client_id: clientId }).toString()
  })
  t.ok(queried.status >= 400 && queried.status < 500, `credentials in the query string are refused (${queried.status})`)
  const wrongTraceId = hex(16)
  const wrong = await fetch(`${base}/oauth/token`, {
    method: 'POST',
    headers: { authorization: basicAuth(clientId, `${secret}-wrong`), 'content-type': FORM, traceparent: `00-${wrongTraceId}-${hex(8)}-01` },
    body: new URLSearchParams({ grant_type: 'client_credentials' }).toString()
  })
  t.equal(wrong.status, 401, 'a wrong secret is refused')

  // An error before any handler: the body parser's.
  const malformed = await fetch(`${base}/oauth/verify`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: `x${secret}` })
  t.equal(malformed.status, 400, 'malformed JSON is refused')

  // The probes are left out of traces.
  const probeTraceIds: string[] = []
  for (const path of ['/health', '/ready', '/metrics']) {
    const probeTraceId = hex(16)
    probeTraceIds.push(probeTraceId)
    const res = await fetch(`${base}${path}`, { headers: { traceparent: `00-${probeTraceId}-${hex(8)}-01` } })
    await res.arrayBuffer()
  }

  t.equal(receiver.bodies.length, 0, 'nothing exported before the batch delay')
  server.child.kill('SIGTERM')
  t.strictSame(await server.exitWithin(20_000), { code: 0, signal: null }, 'the server exits 0 after SIGTERM')
  t.ok(receiver.bodies.length > 0, 'the spans were exported at shutdown')

  const exports = receiver.bodies.map((body) => JSON.parse(body) as OtlpExport)
  const resourceNames = exports.flatMap((sent) => sent.resourceSpans.map((resource) => resource.resource.attributes.find((entry) => entry.key === 'service.name')?.value.stringValue))
  t.ok(resourceNames.length > 0 && resourceNames.every((name) => name === 'session-service'), 'service.name is session-service')
  const spans = exports.flatMap((sent) => sent.resourceSpans.flatMap((resource) => resource.scopeSpans.flatMap((scope) => scope.spans)))
  const requestSpan = (trace: string): OtlpSpan | undefined => spans.find((span) => span.traceId === trace && attribute(span, 'fastify.root') === '@fastify/otel')

  t.test('the request span continues the trace and carries the outcome', async (t) => {
    const span = requestSpan(traceId)
    t.ok(span, 'a request span in the caller\'s trace')
    if (span === undefined) return
    t.equal(span.parentSpanId, parentId, 'its parent is the caller\'s span')
    t.equal(attribute(span, 'http.route'), '/oauth/token')
    t.equal(attribute(span, 'http.response.status_code'), 200)
    t.equal(attribute(span, 'oauth.grant_type'), 'client_credentials')
    t.equal(attribute(span, 'oauth.client_id'), clientId)
    t.equal(attribute(span, 'oauth.outcome'), 'issued')

    // Descendants of the request span (through its handler's span).
    const byId = new Map(spans.map((other) => [other.spanId, other]))
    const under = (other: OtlpSpan): boolean => {
      for (let parent = other.parentSpanId; parent !== undefined; parent = byId.get(parent)?.parentSpanId) {
        if (parent === span.spanId) return true
      }
      return false
    }
    const children = spans.filter((other) => other.traceId === traceId && under(other))
    t.ok(children.some((other) => other.name === 'bcrypt compare' && attribute(other, 'bcrypt.cost') === 10), 'a bcrypt compare span')
    t.ok(children.some((other) => attribute(other, 'db.system.name') === 'postgresql'), 'a PostgreSQL span')
    t.ok(children.some((other) => attribute(other, 'db.system.name') === 'redis'), 'a Redis span')
  })

  t.test('the refresh and the failure are traced with their outcomes', async (t) => {
    const refresh = requestSpan(refreshTraceId)
    t.equal(refresh === undefined ? undefined : attribute(refresh, 'oauth.grant_type'), 'refresh_token')
    t.equal(refresh === undefined ? undefined : attribute(refresh, 'oauth.outcome'), 'issued')
    const failure = requestSpan(wrongTraceId)
    t.equal(failure === undefined ? undefined : attribute(failure, 'oauth.outcome'), 'invalid_client')
    t.equal(failure === undefined ? undefined : attribute(failure, 'http.response.status_code'), 401)
    t.ok(spans.some((span) => attribute(span, 'url.path') === '/oauth/token' && span.traceId !== traceId && span.traceId !== refreshTraceId && span.traceId !== wrongTraceId),
      'the request with a query string has its span, its path without the query')
  })

  t.test('the probes make no span', async (t) => {
    t.strictSame(spans.filter((span) => probeTraceIds.includes(span.traceId)).map((span) => span.name), [])
  })

  t.test('no secret, token, hash or credential in anything exported', async (t) => {
    const exported = receiver.bodies.join('\n')
    const hashOf = (token: string): string => createHash('sha256').update(token).digest('base64url')
    const secrets: Array<[string, string]> = [
      ['the client secret', secret],
      ['the client secret, URL-encoded', encodeURIComponent(secret)],
      ['the Basic credentials', authorization.slice('Basic '.length)],
      ['the access token', tokens.access_token],
      ['the refresh token', tokens.refresh_token],
      ['the refresh token\'s hash', hashOf(tokens.refresh_token)],
      ['the new access token', newTokens.access_token],
      ['the new refresh token', newTokens.refresh_token],
      ['the new refresh token\'s hash', hashOf(newTokens.refresh_token)]
    ]
    for (const [what, value] of secrets) t.notOk(exported.includes(value), `${what} is not exported`)
    t.notOk(exported.includes('?'), 'no exported value has a query string (or any question mark)')
    t.ok(spans.some((span) => span.status?.code === 2), 'some spans ended in error')
    t.strictSame(spans.filter((span) => (span.status?.message ?? '') !== '').map((span) => span.status?.message), [], 'no error status has a message')
  })
})

test('the exporter is handed spans without query strings, error messages or exception details', async (t) => {
  const { InMemorySpanExporter, NodeTracerProvider, SimpleSpanProcessor } = await import('@opentelemetry/sdk-trace-node')
  const memory = new InMemorySpanExporter()
  const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(new ScrubbingExporter(memory))] })
  t.teardown(async () => await provider.shutdown())
  const span = provider.getTracer('test').startSpan('request', {
    attributes: { 'url.path': '/oauth/token?client_secret=s3cret', 'url.full': 'http://h/x?token=t0ken', 'url.query': 'a=b', 'http.route': '/oauth/token' }
  })
  const failure = new SyntaxError('Unexpected token \'x\', "xs3cret" is not valid JSON')
  span.recordException(failure)
  span.setStatus({ code: 2, message: failure.message })
  span.end()
  await provider.forceFlush()

  const [exported] = memory.getFinishedSpans()
  t.strictSame(exported?.attributes, { 'url.path': '/oauth/token', 'url.full': 'http://h/x', 'http.route': '/oauth/token' }, 'URL attributes without their query')
  t.strictSame(exported?.status, { code: 2 }, 'an error status without its message')
  t.strictSame(exported?.events.map((event) => [event.name, event.attributes]), [['exception', { 'exception.type': 'SyntaxError' }]], 'an exception event with its type only')
  t.equal(exported?.spanContext().spanId, span.spanContext().spanId, 'the rest is the span itself')
})
