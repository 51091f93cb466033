// The soak's load generator, a process of its own (soak.ts forks itself with
// SOAK_ROLE=generator): it sends the mix at a steady rate, checks every
// answer, and reports each interval and the totals to the parent.
import { Agent, request as httpRequest } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import {
  CROSS_CHECK_DELAY_MS, type GeneratorMessage, type GeneratorSettings, Histogram, type ErrorSample, type InstanceCount, type IntervalReport,
  type Kind, KINDS, type KindTotals, MIX, MIX_TOTAL, RECORDED_KINDS, REQUEST_TIMEOUT_MS, round
} from './soak-messages.ts'
import { type Outgoing, type Planned, RequestPlanner, TokenPools } from './soak-requests.ts'

/** connections per endpoint at most */
const MAX_SOCKETS = 256
const ERROR_SAMPLES = 20

/** Smooth weighted round robin: the mix holds exactly over every 40 requests. */
class MixSchedule {
  readonly #credit = new Map<Kind, number>(KINDS.map((kind) => [kind, 0]))

  next (): Kind {
    let best: Kind = 'client_credentials'
    let bestCredit = -Infinity
    for (const [kind, weight] of MIX) {
      const value = (this.#credit.get(kind) ?? 0) + weight
      this.#credit.set(kind, value)
      if (value > bestCredit) {
        best = kind
        bestCredit = value
      }
    }
    this.#credit.set(best, bestCredit - MIX_TOTAL)
    return best
  }
}

/** The figures of one interval. */
class Tally {
  requests = 0
  errors = 0
  sent = 0
  lagMs = 0
  readonly all = new Histogram()
  readonly cc = new Histogram()
  readonly errorsByLabel = new Map<string, number>()
  readonly byKind = new Map<Kind, number>()
  readonly byInstance: InstanceCount[]

  constructor (instances: number) {
    this.byInstance = Array.from({ length: instances }, () => ({ requests: 0, errors: 0 }))
  }
}

const percentiles = (histogram: Histogram): { p50: number | null, p99: number | null } => ({ p50: histogram.percentile(50), p99: histogram.percentile(99) })

/** Figures: per interval, and per endpoint over the whole soak. */
class Figures {
  readonly #instances: number
  tally: Tally
  readonly #byKind = new Map<Kind, { requests: number, errors: number, latency: Histogram }>(RECORDED_KINDS.map((kind) => [kind, { requests: 0, errors: 0, latency: new Histogram() }]))
  readonly #byInstance: InstanceCount[]
  readonly #all = new Histogram()
  readonly #errorsByLabel = new Map<string, number>()
  readonly #errorSamples: ErrorSample[] = []
  answered = 0
  errors = 0

  constructor (instances: number) {
    this.#instances = instances
    this.tally = new Tally(instances)
    this.#byInstance = Array.from({ length: instances }, () => ({ requests: 0, errors: 0 }))
  }

  record (kind: Kind, instance: number, ms: number, label: string | undefined, body: string, at: number): void {
    const { tally } = this
    const counts = [tally.byInstance[instance]!, this.#byInstance[instance]!]
    for (const count of counts) count.requests++
    tally.requests++
    tally.all.record(ms)
    if (kind === 'client_credentials') tally.cc.record(ms)
    tally.byKind.set(kind, (tally.byKind.get(kind) ?? 0) + 1)
    const total = this.#byKind.get(kind)
    total!.requests++
    total!.latency.record(ms)
    this.#all.record(ms)
    this.answered++
    if (label === undefined) return
    const key = `${kind} ${label}`
    for (const count of counts) count.errors++
    tally.errors++
    tally.errorsByLabel.set(key, (tally.errorsByLabel.get(key) ?? 0) + 1)
    total!.errors++
    this.#errorsByLabel.set(key, (this.#errorsByLabel.get(key) ?? 0) + 1)
    this.errors++
    if (this.#errorSamples.length < ERROR_SAMPLES) this.#errorSamples.push({ at: round(at, 3), kind, instance, label, body: body.slice(0, 300) })
  }

  /** The report of the interval so far, which then starts afresh. */
  closeInterval (index: number, from: number, to: number, answeredUntil: number, inFlight: number): IntervalReport {
    const { tally } = this
    const cc = percentiles(tally.cc)
    this.tally = new Tally(this.#instances)
    return {
      index,
      from: round(from, 3),
      to: round(to, 3),
      sent: tally.sent,
      requests: tally.requests,
      rps: round(tally.requests / Math.max(answeredUntil - from, 0.001)),
      errors: tally.errors,
      errorsByLabel: Object.fromEntries(tally.errorsByLabel),
      ...percentiles(tally.all),
      max: tally.all.count === 0 ? null : round(tally.all.max, 2),
      ccRequests: tally.cc.count,
      ccP50: cc.p50,
      ccP99: cc.p99,
      byKind: Object.fromEntries(tally.byKind),
      lagMs: round(tally.lagMs, 1),
      inFlight,
      byInstance: tally.byInstance
    }
  }

  totals (seconds: number, sent: number, unfinished: number, substituted: number, crossChecks: number): GeneratorMessage {
    const byKind: Record<string, KindTotals> = {}
    for (const [kind, total] of this.#byKind) {
      byKind[kind] = { requests: total.requests, errors: total.errors, ...percentiles(total.latency), max: total.latency.count === 0 ? null : round(total.latency.max, 2) }
    }
    return {
      type: 'done',
      totals: {
        seconds: round(seconds, 3),
        sent,
        requests: this.answered,
        errors: this.errors + unfinished,
        unfinished,
        errorsByLabel: Object.fromEntries(this.#errorsByLabel),
        errorSamples: this.#errorSamples,
        ...percentiles(this.#all),
        max: this.#all.count === 0 ? null : round(this.#all.max, 2),
        byKind,
        substituted,
        crossChecks,
        byInstance: this.#byInstance
      }
    }
  }
}

/**
 * Sends one request; `settle` gets its answer (status and body) or what
 * failed, once. The time limit counts from the send, time queued for a
 * connection included.
 */
function sendRequest (target: URL, agent: Agent | undefined, outgoing: Outgoing, settle: (status: number, body: string, failure?: string) => void): void {
  let settled = false
  const timer = setTimeout(() => request.destroy(Object.assign(new Error('no answer within 10 s'), { code: 'timeout' })), REQUEST_TIMEOUT_MS)
  const once = (status: number, body: string, failure?: string): void => {
    if (settled) return
    settled = true
    clearTimeout(timer)
    settle(status, body, failure)
  }
  const headers: Record<string, string | number> = { ...outgoing.headers }
  if (outgoing.body !== undefined) headers['content-length'] = Buffer.byteLength(outgoing.body)
  const request = httpRequest({ agent, hostname: target.hostname, port: target.port, method: outgoing.method, path: outgoing.path, headers }, (response) => {
    const chunks: Buffer[] = []
    response.on('data', (chunk: Buffer) => chunks.push(chunk))
    response.on('end', () => once(response.statusCode ?? 0, Buffer.concat(chunks).toString('utf8')))
    response.on('error', (err: NodeJS.ErrnoException) => once(response.statusCode ?? 0, '', err.code ?? err.message))
  })
  request.on('error', (err: NodeJS.ErrnoException) => once(0, '', err.code ?? err.message))
  request.end(outgoing.body)
}

/** The generator's run: the planned requests, sent at the rate, and their figures. */
class LoadRun {
  readonly #settings: GeneratorSettings
  readonly #targets: URL[]
  // A connection pool per endpoint, as its callers would be: token requests
  // held up by the service do not hold up the verify requests behind them.
  readonly agents = new Map<Kind, Agent>(RECORDED_KINDS.map((kind) => [kind, new Agent({ keepAlive: true, maxSockets: MAX_SOCKETS })]))
  readonly #planner: RequestPlanner
  readonly #schedule = new MixSchedule()
  readonly figures: Figures
  readonly #startedAt = performance.now()
  sent = 0
  inFlight = 0
  substituted = 0
  crossChecks = 0
  index = 0
  #requestNumber = 0

  constructor (settings: GeneratorSettings) {
    this.#settings = settings
    this.#targets = settings.urls.map((url) => new URL(url))
    this.figures = new Figures(this.#targets.length)
    this.#planner = new RequestPlanner(settings.clientId, settings.clientSecret, new TokenPools())
  }

  elapsed (): number {
    return (performance.now() - this.#startedAt) / 1000
  }

  /** The next request of the mix, to the next instance in turn. */
  launch (): void {
    let planned = this.#planner.plan(this.#schedule.next())
    if (planned === undefined) {
      // No token to use yet (the first moments): a token request instead.
      this.substituted++
      planned = this.#planner.plan('client_credentials')!
    }
    this.#send(planned, this.#requestNumber++ % this.#targets.length)
  }

  #send (planned: Planned, instance: number): void {
    const { kind, check, after, crossChecks } = planned
    const started = performance.now()
    this.inFlight++
    sendRequest(this.#targets[instance]!, this.agents.get(kind), planned.outgoing, (status, body, failure) => {
      this.inFlight--
      after?.()
      let label = failure
      if (label === undefined) {
        try {
          label = check(status, body)
        } catch {
          label = `${status} unreadable body`
        }
      }
      this.figures.record(kind, instance, performance.now() - started, label, body, this.elapsed())
      if (label === undefined && crossChecks !== undefined) this.#scheduleCrossChecks(crossChecks, instance)
    })
  }

  // Each check on another instance than the one that answered (the next ones
  // in turn), counted in flight while it waits so that the end waits for it.
  #scheduleCrossChecks (checks: Planned[], answeredBy: number): void {
    this.inFlight += checks.length
    setTimeout(() => {
      this.inFlight -= checks.length
      checks.forEach((check, position) => {
        this.crossChecks++
        this.#send(check, (answeredBy + 1 + position) % this.#targets.length)
      })
    }, CROSS_CHECK_DELAY_MS)
  }

  report (from: number, to: number, answeredUntil = to): void {
    const message: GeneratorMessage = { type: 'interval', report: this.figures.closeInterval(this.index, from, to, answeredUntil, this.inFlight) }
    process.send?.(message)
    this.index++
  }

  /** The paced loop: every millisecond or so, whatever has come due is sent. Resolves with the end, in seconds. */
  async pace (isStopping: () => boolean): Promise<number> {
    const { rate, interval } = this.#settings
    let end = this.#settings.seconds
    await new Promise<void>((resolve) => {
      const tick = (): void => {
        const now = this.elapsed()
        if (isStopping()) end = Math.min(end, now)
        const until = Math.min(now, end)
        const due = Math.floor(until * rate)
        if (due > this.sent) {
          const lateMs = (until - this.sent / rate) * 1000
          if (lateMs > this.figures.tally.lagMs) this.figures.tally.lagMs = lateMs
          while (this.sent < due) {
            this.launch()
            this.sent++
            this.figures.tally.sent++
          }
        }
        while ((this.index + 1) * interval <= until && (this.index + 1) * interval < end) {
          this.report(this.index * interval, (this.index + 1) * interval)
        }
        if (now >= end) resolve()
        else setTimeout(tick, 1)
      }
      tick()
    })
    return end
  }
}

export async function generate (): Promise<void> {
  const settings = JSON.parse(process.env.SOAK_GENERATOR ?? '{}') as GeneratorSettings
  let stopping = false
  process.on('message', (message: { type?: string }) => {
    if (message.type === 'stop') stopping = true
  })
  process.on('SIGINT', () => {}) // the parent decides when to stop

  const run = new LoadRun(settings)
  const end = await run.pace(() => stopping)

  // The last interval takes the answers still in flight.
  const drainUntil = performance.now() + REQUEST_TIMEOUT_MS + 5000
  while (run.inFlight !== 0 && performance.now() < drainUntil) await sleep(10)
  const unfinished = run.inFlight
  run.report(run.index * settings.interval, end, Math.max(end, run.elapsed()))

  const done = run.figures.totals(end, run.sent, unfinished, run.substituted, run.crossChecks)
  for (const agent of run.agents.values()) agent.destroy()
  process.send?.(done, () => process.disconnect())
}
