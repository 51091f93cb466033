// A stand-in OpenTelemetry collector: an OTLP/HTTP receiver on 127.0.0.1
// that keeps what the exporter sends (JSON), and readers of its spans.
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'

export interface OtlpValue {
  stringValue?: string
  intValue?: number | string
  boolValue?: boolean
  doubleValue?: number
}

export interface OtlpSpan {
  traceId: string
  spanId: string
  parentSpanId?: string
  name: string
  attributes: Array<{ key: string, value: OtlpValue }>
  status?: { code?: number, message?: string }
}

export interface OtlpExport {
  resourceSpans: Array<{
    resource: { attributes: Array<{ key: string, value: OtlpValue }> }
    scopeSpans: Array<{ spans: OtlpSpan[] }>
  }>
}

/** An OTLP/HTTP receiver on 127.0.0.1 that keeps every body it is sent. */
export async function otlpReceiver (): Promise<{ server: Server, url: string, bodies: string[] }> {
  const bodies: string[] = []
  const server = createServer((request, response) => {
    let body = ''
    request.setEncoding('utf8').on('data', (chunk: string) => { body += chunk })
    request.on('end', () => {
      if (request.url === '/v1/traces') bodies.push(body)
      response.writeHead(200, { 'content-type': 'application/json' }).end('{}')
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, bodies }
}

export function attribute (span: OtlpSpan, key: string): string | number | boolean | undefined {
  const value = span.attributes.find((entry) => entry.key === key)?.value
  if (value === undefined) return undefined
  return value.stringValue ?? (value.intValue === undefined ? undefined : Number(value.intValue)) ?? value.boolValue ?? value.doubleValue
}

/** Every span of the bodies received, in the order sent. */
export function spansOf (bodies: string[]): OtlpSpan[] {
  return bodies.flatMap((body) => (JSON.parse(body) as OtlpExport).resourceSpans
    .flatMap((resource) => resource.scopeSpans.flatMap((scope) => scope.spans)))
}
