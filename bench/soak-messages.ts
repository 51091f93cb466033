// What the soak's two processes (the soak and its load generator) share: the
// request mix, the messages between them, and latency histograms.

export type Kind = 'client_credentials' | 'refresh_token' | 'verify' | 'introspect' | 'revoke' | 'jwks' | 'discovery' | CheckKind

/**
 * The cross-instance checks, outside the mix: 1 s after a revocation answered
 * 200 on one instance, the revoked token is verified (and a revoked refresh
 * token presented) on other instances, which must refuse it.
 */
export type CheckKind = 'verify_revoked' | 'refresh_revoked'
export const CHECK_KINDS: readonly CheckKind[] = ['verify_revoked', 'refresh_revoked']
export const CROSS_CHECK_DELAY_MS = 1000

/** The mix, in fortieths (2.5 % each). */
export const MIX: ReadonlyArray<readonly [Kind, number]> = [
  ['client_credentials', 16],
  ['refresh_token', 6],
  ['verify', 10],
  ['introspect', 4],
  ['revoke', 2],
  ['jwks', 1],
  ['discovery', 1]
]
export const MIX_TOTAL = MIX.reduce((sum, [, weight]) => sum + weight, 0)
export const KINDS = MIX.map(([kind]) => kind)
/** every kind of request the generator sends: the mix, then the checks */
export const RECORDED_KINDS: readonly Kind[] = [...KINDS, ...CHECK_KINDS]

export const REQUEST_TIMEOUT_MS = 10_000
/** Access tokens kept for verify, introspect and revoke: the most recent ones. */
export const ACCESS_POOL_SIZE = 2000
export const FORM = 'application/x-www-form-urlencoded'

export function round (value: number, digits = 1): number {
  const factor = 10 ** digits
  return Math.round(value * factor) / factor
}

/** Latencies in log buckets 1 % wide: constant memory however long the soak. */
export class Histogram {
  private static readonly floor = 0.01
  private static readonly step = Math.log(1.01)
  private readonly buckets = new Map<number, number>()
  count = 0
  max = 0

  record (ms: number): void {
    const bucket = ms <= Histogram.floor ? 0 : Math.ceil(Math.log(ms / Histogram.floor) / Histogram.step)
    this.buckets.set(bucket, (this.buckets.get(bucket) ?? 0) + 1)
    this.count++
    if (ms > this.max) this.max = ms
  }

  /** The p-th percentile in ms (at most 1 % above the true value); null without values. */
  percentile (p: number): number | null {
    if (this.count === 0) return null
    const rank = Math.max(1, Math.ceil(this.count * p / 100))
    let seen = 0
    for (const [bucket, count] of [...this.buckets.entries()].sort((a, b) => a[0] - b[0])) {
      seen += count
      if (seen >= rank) return round(Math.min(Histogram.floor * Math.exp(bucket * Histogram.step), this.max), 2)
    }
    return round(this.max, 2)
  }
}

// ---- messages between the two processes -------------------------------------

export interface GeneratorSettings {
  /** one per instance; requests go to them in turn */
  urls: string[]
  rate: number
  seconds: number
  interval: number
  clientId: string
  clientSecret: string
}

export interface IntervalReport {
  index: number
  /** seconds since the start of the soak */
  from: number
  to: number
  sent: number
  /** answered (or failed) in the interval */
  requests: number
  rps: number
  errors: number
  errorsByLabel: Record<string, number>
  p50: number | null
  p99: number | null
  max: number | null
  ccRequests: number
  ccP50: number | null
  ccP99: number | null
  byKind: Record<string, number>
  /** the most a request was sent after its time (the generator's own lag) */
  lagMs: number
  /** requests in flight at the end of the interval */
  inFlight: number
  /** answered (or failed) in the interval, per instance in the order of the urls */
  byInstance: InstanceCount[]
}

export interface InstanceCount {
  requests: number
  errors: number
}

export interface KindTotals {
  requests: number
  errors: number
  p50: number | null
  p99: number | null
  max: number | null
}

export interface ErrorSample {
  at: number
  kind: Kind
  /** which instance answered, in the order of the urls */
  instance: number
  label: string
  body: string
}

export interface GeneratorTotals {
  seconds: number
  sent: number
  requests: number
  errors: number
  unfinished: number
  errorsByLabel: Record<string, number>
  errorSamples: ErrorSample[]
  p50: number | null
  p99: number | null
  max: number | null
  byKind: Record<string, KindTotals>
  /** requests of another kind sent as client_credentials for want of a token */
  substituted: number
  /** cross-instance checks sent (on top of `sent`, which is the paced mix) */
  crossChecks: number
  byInstance: InstanceCount[]
}

export type GeneratorMessage = { type: 'interval', report: IntervalReport } | { type: 'done', totals: GeneratorTotals }
