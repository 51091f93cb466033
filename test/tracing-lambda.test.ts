// Tracing in the Lambda handler: lambda.ts imported with an OTLP endpoint set
// (as a function configured so would be), and an invocation's spans, which
// the handler exports before it answers, since a frozen environment would
// never run the batch timer (set to a minute here).
import { randomBytes, randomUUID } from 'node:crypto'
import { test } from 'tap'
import { basicAuth, createDatabase, createRedisPrefix, insertClient, needs, testEnv } from './helper.ts'
import { attribute, otlpReceiver, spansOf } from './helpers/otlp.ts'

const hex = (bytes: number): string => randomBytes(bytes).toString('hex')

/** A minimal API Gateway HTTP API (payload 2.0) event posting a form. */
function tokenEvent (headers: Record<string, string>, body: string): Record<string, unknown> {
  return {
    version: '2.0',
    routeKey: '$default',
    rawPath: '/oauth/token',
    rawQueryString: '',
    headers: { 'content-type': 'application/x-www-form-urlencoded', 'content-length': String(Buffer.byteLength(body)), ...headers },
    requestContext: {
      http: { method: 'POST', path: '/oauth/token', protocol: 'HTTP/1.1', sourceIp: '203.0.113.9', userAgent: 'test' },
      requestId: randomUUID(),
      routeKey: '$default',
      stage: '$default',
      timeEpoch: Date.now()
    },
    body: Buffer.from(body).toString('base64'),
    isBase64Encoded: true
  }
}

test('each invocation exports its spans before it answers', { skip: needs.postgres || needs.redis }, async (t) => {
  const receiver = await otlpReceiver()
  t.teardown(() => { receiver.server.close() })
  const databaseUrl = await createDatabase(t)
  const clientId = `lambda-traced-${hex(4)}`
  const secret = `lambda-secret-${hex(8)}`
  await insertClient(databaseUrl, { id: clientId, secret })
  Object.assign(process.env, testEnv(databaseUrl, createRedisPrefix(t), {
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    OTEL_BSP_SCHEDULE_DELAY: '60000'
  }))
  const lambda = await import('../lambda.ts')
  const { tracing } = await import('../tracing.ts')
  t.teardown(async () => {
    await lambda.app.close()
    await tracing?.shutdown()
  })
  t.ok(tracing, 'tracing is on')

  const traceId = hex(16)
  const parentId = hex(8)
  const result = await lambda.handler(tokenEvent({ authorization: basicAuth(clientId, secret), traceparent: `00-${traceId}-${parentId}-01` },
    new URLSearchParams({ grant_type: 'client_credentials' }).toString()), {} as never) as { statusCode: number, body: string }
  t.equal(result.statusCode, 200, 'a token is issued')

  const spans = spansOf(receiver.bodies)
  const request = spans.find((span) => span.traceId === traceId && attribute(span, 'fastify.root') === '@fastify/otel')
  t.ok(request, 'the request span was exported by the time the handler answered')
  t.equal(request?.parentSpanId, parentId, 'continuing the caller\'s trace')
  t.equal(request === undefined ? undefined : attribute(request, 'oauth.outcome'), 'issued')
  const inTrace = spans.filter((span) => span.traceId === traceId)
  t.ok(inTrace.some((span) => span.name === 'bcrypt compare'), 'a bcrypt span')
  t.ok(inTrace.some((span) => attribute(span, 'db.system.name') === 'postgresql'), 'a PostgreSQL span')
  t.ok(inTrace.some((span) => attribute(span, 'db.system.name') === 'redis'), 'a Redis span')
  const { access_token: accessToken } = JSON.parse(result.body) as { access_token: string }
  t.notOk(receiver.bodies.join('\n').includes(accessToken), 'the token is not exported')
  t.notOk(receiver.bodies.join('\n').includes(secret), 'nor the secret')
})
