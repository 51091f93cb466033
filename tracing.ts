// OpenTelemetry tracing, on when OTEL_EXPORTER_OTLP_ENDPOINT is set. The
// entry points (server.ts, lambda.ts) import this module before any other: pg and ioredis are
// CommonJS modules that @fastify/postgres and @fastify/redis require, and an
// instrumentation only patches what is loaded after it is registered.
// Without the endpoint nothing of the SDK is loaded, and @opentelemetry/api's
// calls elsewhere (plugins/secrets.ts) stay no-ops.
import { existsSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { parse as parseDotenv } from 'dotenv'
import type { ReadableSpan, SpanExporter, TimedEvent } from '@opentelemetry/sdk-trace-node'
import type { Attributes } from '@opentelemetry/api'

/** service.name unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES names another. */
export const DEFAULT_SERVICE_NAME = 'session-service'

export interface Tracing {
  /** Exports the spans buffered so far; bounded and never rejects, like shutdown. */
  flush: () => Promise<void>
  /**
   * Exports the spans still buffered, then stops the exporter; gives up after
   * EXPORT_LIMIT_MS, so that a collector that is down cannot hold the
   * process's exit (or a Lambda invocation's answer). Never rejects.
   */
  shutdown: () => Promise<void>
}

const EXPORT_LIMIT_MS = 3_000

// Attributes of URLs that would carry a query string: clients put
// client_secret and tokens there despite RFC 6749 §2.3.1.
const URL_ATTRIBUTES = ['url.path', 'url.full', 'http.target', 'http.url']

function withoutQuery (attributes: Attributes): Attributes {
  const cleaned: Attributes = { ...attributes }
  delete cleaned['url.query']
  for (const name of URL_ATTRIBUTES) {
    const value = cleaned[name]
    if (typeof value === 'string' && value.includes('?')) cleaned[name] = value.slice(0, value.indexOf('?'))
  }
  return cleaned
}

// An exception event keeps its type only: a message may quote the input
// (a JSON syntax error quotes the body) and a stack says nothing to a trace.
function exceptionTypeOnly (event: TimedEvent): TimedEvent {
  if (event.name !== 'exception') return event
  const type = event.attributes?.['exception.type']
  return { ...event, attributes: type === undefined ? {} : { 'exception.type': type } }
}

/**
 * A span as exported: the query string cut from its URL attributes, no
 * error status message, exception events reduced to their type. Everything
 * else is read from the span itself (its prototype).
 */
function scrubbed (span: ReadableSpan): ReadableSpan {
  return Object.create(span, {
    attributes: { value: withoutQuery(span.attributes) },
    status: { value: { code: span.status.code } },
    events: { value: span.events.map(exceptionTypeOnly) }
  }) as ReadableSpan
}

/** Hands the exporter spans that carry nothing a request sent in the places named above. */
export class ScrubbingExporter implements SpanExporter {
  readonly #inner: SpanExporter

  constructor (inner: SpanExporter) {
    this.#inner = inner
  }

  export (spans: ReadableSpan[], resultCallback: Parameters<SpanExporter['export']>[1]): void {
    this.#inner.export(spans.map(scrubbed), resultCallback)
  }

  async shutdown (): Promise<void> {
    await this.#inner.shutdown()
  }

  async forceFlush (): Promise<void> {
    await this.#inner.forceFlush?.()
  }
}

/**
 * The OTEL_* variables of a `.env` file in the working folder, put in the
 * environment (where the SDK reads them) unless already set there, as the
 * configuration treats every other variable of the file.
 */
function readOtelDotenv (env: NodeJS.ProcessEnv): void {
  const path = join(process.cwd(), '.env')
  if (!existsSync(path)) return
  for (const [name, value] of Object.entries(parseDotenv(readFileSync(path)))) {
    if (name.startsWith('OTEL_') && env[name] === undefined) env[name] = value
  }
}

// Probes, answered every few seconds: like their log lines (they log at
// warn), their spans would drown the requests. Called with a route's pattern
// when it is added, and with a request's URL (query included) when it arrives.
const UNTRACED_PATHS = new Set(['/health', '/ready', '/live', '/metrics'])
const isProbe = ({ url }: { url: string }): boolean => UNTRACED_PATHS.has(url.split('?')[0] ?? url)

// Redis arguments hold keys named after refresh token hashes and the values
// stored; a span names the command and how many arguments it had.
const redisStatement = (command: string, args: unknown[]): string => `${command} [${args.length} arguments]`

/** The tracer provider, the exporter and the instrumentations; loaded only here, synchronously. */
function startTracing (): Tracing {
  const require = createRequire(import.meta.url)
  const { NodeTracerProvider, BatchSpanProcessor } = require('@opentelemetry/sdk-trace-node') as typeof import('@opentelemetry/sdk-trace-node')
  const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-http') as typeof import('@opentelemetry/exporter-trace-otlp-http')
  const { defaultResource, detectResources, envDetector, resourceFromAttributes } = require('@opentelemetry/resources') as typeof import('@opentelemetry/resources')
  const { FastifyOtelInstrumentation } = require('@fastify/otel') as typeof import('@fastify/otel')
  const { PgInstrumentation } = require('@opentelemetry/instrumentation-pg') as typeof import('@opentelemetry/instrumentation-pg')
  const { IORedisInstrumentation } = require('@opentelemetry/instrumentation-ioredis') as typeof import('@opentelemetry/instrumentation-ioredis')

  const resource = defaultResource()
    .merge(resourceFromAttributes({ 'service.name': DEFAULT_SERVICE_NAME }))
    .merge(detectResources({ detectors: [envDetector] }))
  // The exporter reads its endpoint, headers, timeout and so on from OTEL_EXPORTER_OTLP_*.
  const exporter = new ScrubbingExporter(new OTLPTraceExporter())
  const provider = new NodeTracerProvider({ resource, spanProcessors: [new BatchSpanProcessor(exporter)] })
  // The global provider, AsyncLocalStorage context and W3C traceparent propagation.
  provider.register()

  // Created after register(): each one enables itself on construction.
  // eslint-disable-next-line no-new
  new FastifyOtelInstrumentation({
    // Every Fastify instance created from now on gets its request span.
    registerOnInitialization: true,
    // One span per request and one for its handler, not one per hook.
    instrumentHooks: false,
    recordExceptions: false,
    ignorePaths: isProbe
  })
  // eslint-disable-next-line no-new
  new PgInstrumentation({
    // Statements are parameterised; their values (hashes, secrets) stay out.
    enhancedDatabaseReporting: false,
    // Background pings and migrations outside a request make no trace.
    requireParentSpan: true
  })
  // eslint-disable-next-line no-new
  new IORedisInstrumentation({ dbStatementSerializer: redisStatement, requireParentSpan: true })

  const bounded = async (work: Promise<void>): Promise<void> => {
    await Promise.race([work.catch(() => {}), sleep(EXPORT_LIMIT_MS, undefined, { ref: false })])
  }
  return {
    flush: async () => await bounded(provider.forceFlush()),
    shutdown: async () => await bounded(provider.shutdown())
  }
}

function tracingRequested (env: NodeJS.ProcessEnv): boolean {
  readOtelDotenv(env)
  return (env.OTEL_EXPORTER_OTLP_ENDPOINT ?? '').trim() !== '' || (env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? '').trim() !== ''
}

/** The running tracing, or undefined when no OTLP endpoint is configured. */
export const tracing: Tracing | undefined = tracingRequested(process.env) ? startTracing() : undefined
