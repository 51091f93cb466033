// What the soak prints and keeps: a line per interval as it goes, then a
// summary of the whole soak (latency, errors, the resident size's trend, the
// service's exit).
import type { GeneratorTotals, IntervalReport } from './soak-messages.ts'
import { KINDS, RECORDED_KINDS, round } from './soak-messages.ts'
import type { ServiceExit } from './soak-service.ts'

export interface IntervalRow extends IntervalReport {
  /** per instance, in the order of the urls */
  instances: InstanceSample[]
  generatorCpuPercent: number | null
  load1: number
}

export interface InstanceSample {
  rssMiB: number | null
  /** the instance's CPU over the interval, % of one core */
  cpuPercent: number | null
}

export const fmt = (value: number | null, digits = 1): string => value === null ? '-' : value.toFixed(digits)

// The per-instance columns hold one figure per instance, separated by '/'.
const HEADER = ['time s', 'requests', 'req/s', 'errors', 'p50 ms', 'p99 ms', 'max ms', 'cc p50', 'cc p99', 'RSS MiB', 'CPU %', 'requests per instance', 'load']
const WIDTHS = [7, 9, 8, 7, 7, 7, 8, 7, 7, 6, 4, 7, 5]
const PER_INSTANCE = new Set([9, 10, 11])
const width = (column: number, instances: number): number =>
  (WIDTHS[column] ?? 0) * (PER_INSTANCE.has(column) ? instances : 1) + (PER_INSTANCE.has(column) ? instances - 1 : 0)
const tableLine = (cells: string[], instances: number): string => cells.map((cell, column) => cell.padStart(width(column, instances))).join('  ')

export const intervalHeader = (instances: number): string => tableLine(HEADER, instances)

/** One interval's line of the table, with its errors and the generator's lag when there are any. */
export function intervalLine (row: IntervalRow): string {
  const errors = Object.entries(row.errorsByLabel).map(([label, count]) => `${label}: ${count}`).join(', ')
  const each = (values: string[]): string => values.join('/')
  return tableLine([
    row.to.toFixed(0), String(row.requests), row.rps.toFixed(1), String(row.errors), fmt(row.p50, 2), fmt(row.p99, 2), fmt(row.max, 1),
    fmt(row.ccP50, 2), fmt(row.ccP99, 2),
    each(row.instances.map((instance) => fmt(instance.rssMiB))),
    each(row.instances.map((instance) => fmt(instance.cpuPercent, 0))),
    each(row.byInstance.map((instance) => String(instance.requests))),
    row.load1.toFixed(2)
  ], row.instances.length) + (errors === '' ? '' : `  [${errors}]`) + (row.lagMs > 100 ? `  [generator ${row.lagMs} ms late]` : '')
}

/** Least-squares slope of y over x. */
function slope (points: Array<[number, number]>): number | null {
  if (points.length < 2) return null
  const meanX = points.reduce((sum, [x]) => sum + x, 0) / points.length
  const meanY = points.reduce((sum, [, y]) => sum + y, 0) / points.length
  let numerator = 0
  let denominator = 0
  for (const [x, y] of points) {
    numerator += (x - meanX) * (y - meanY)
    denominator += (x - meanX) ** 2
  }
  return denominator === 0 ? null : numerator / denominator
}

const range = (values: number[]): { min: number | null, max: number | null } =>
  ({ min: values.length === 0 ? null : Math.min(...values), max: values.length === 0 ? null : Math.max(...values) })

/** What the summary needs to know of one instance besides the intervals. */
export interface InstanceRun {
  name: string
  port: number
  rssBefore: number | null
  exit: ServiceExit
  /** seconds after its start, when it exited on its own */
  exitedEarlyAt: number | undefined
  logFile: string
  serviceLog: Map<string, { count: number }>
}

export interface InstanceSummary {
  name: string
  port: number
  requests: number
  errors: number
  rssMiB: { beforeSoak: number | null, first: number | null, last: number | null, max: number | null }
  rssTrendMiBPerHour: number | null
  serviceExit: ServiceExit
  serviceExitedCleanly: boolean
  logFile: string
  serviceLog: Record<string, number>
}

const defined = (values: Array<number | null>): number[] => values.filter((value): value is number => value !== null)

function summarizeInstance (rows: IntervalRow[], totals: GeneratorTotals, index: number, run: InstanceRun): InstanceSummary {
  const rss = defined(rows.map((row) => row.instances[index]?.rssMiB ?? null))
  const secondHalf = rows.slice(Math.floor(rows.length / 2))
    .map((row): [number, number | null] => [row.to, row.instances[index]?.rssMiB ?? null])
    .filter((point): point is [number, number] => point[1] !== null)
  const perSecond = slope(secondHalf)
  const { exit } = run
  return {
    name: run.name,
    port: run.port,
    requests: totals.byInstance[index]?.requests ?? 0,
    errors: totals.byInstance[index]?.errors ?? 0,
    rssMiB: { beforeSoak: run.rssBefore, first: rss[0] ?? null, last: rss[rss.length - 1] ?? null, max: rss.length === 0 ? null : Math.max(...rss) },
    rssTrendMiBPerHour: perSecond === null ? null : round(perSecond * 3600, 2),
    serviceExit: exit,
    serviceExitedCleanly: !exit.early && !exit.killed && exit.code === 0,
    logFile: run.logFile,
    serviceLog: Object.fromEntries([...run.serviceLog].map(([key, { count }]) => [key, count]))
  }
}

export function summarize (rows: IntervalRow[], totals: GeneratorTotals, rate: number, redisMode: 'single' | 'cluster', instances: InstanceRun[]): Summary {
  const secondHalf = rows.slice(Math.floor(rows.length / 2))
  return {
    seconds: totals.seconds,
    offeredRate: rate,
    instances: instances.length,
    redisMode,
    sent: totals.sent,
    crossChecks: totals.crossChecks,
    requests: totals.requests,
    errors: totals.errors,
    p50: totals.p50,
    p99: totals.p99,
    max: totals.max,
    maxPerInterval: rows.length === 0 ? null : Math.max(...rows.map((row) => row.max ?? 0)),
    p99PerInterval: range(defined(rows.map((row) => row.p99))),
    ccP99PerInterval: range(defined(rows.map((row) => row.ccP99))),
    rssTrendIntervals: secondHalf.length,
    rssTrendSpanSeconds: secondHalf.length < 2 ? 0 : round(secondHalf[secondHalf.length - 1]!.to - secondHalf[0]!.to),
    perInstance: instances.map((run, index) => summarizeInstance(rows, totals, index, run))
  }
}

export interface Summary {
  seconds: number
  offeredRate: number
  instances: number
  redisMode: 'single' | 'cluster'
  sent: number
  crossChecks: number
  requests: number
  errors: number
  p50: number | null
  p99: number | null
  max: number | null
  maxPerInterval: number | null
  p99PerInterval: { min: number | null, max: number | null }
  ccP99PerInterval: { min: number | null, max: number | null }
  rssTrendIntervals: number
  rssTrendSpanSeconds: number
  perInstance: InstanceSummary[]
}

export interface SummaryContext {
  /** how the rate was chosen, for the first line */
  rateFrom: string
  interrupted: boolean
  intervals: number
  /** the instances' exits early, by name */
  exitedEarlyAt: Array<number | undefined>
}

/** The summary, as text. */
export function summaryLines (summary: Summary, totals: GeneratorTotals, context: SummaryContext): string[] {
  const lines = [
    '',
    `summary: ${totals.seconds} s at ${summary.offeredRate} req/s offered${context.rateFrom}${context.interrupted ? ', ended early' : ''}; ${summary.instances} instance${summary.instances === 1 ? '' : 's'}, Redis ${summary.redisMode === 'cluster' ? 'Cluster' : 'single server'}`,
    `  requests: ${totals.sent} sent and ${totals.crossChecks} cross-instance checks, ${totals.requests} answered, ${totals.errors} errors${totals.unfinished > 0 ? ` (${totals.unfinished} without an answer at the end)` : ''}; p50 ${fmt(totals.p50, 2)} ms, p99 ${fmt(totals.p99, 2)} ms, max ${fmt(totals.max, 1)} ms over the whole soak`
  ]
  if (totals.errors > 0) lines.push(`  errors: ${Object.entries(totals.errorsByLabel).map(([label, count]) => `${label}: ${count}`).join(', ')}`)
  lines.push(
    `  p99 per interval: all endpoints min ${fmt(summary.p99PerInterval.min, 2)} ms, max ${fmt(summary.p99PerInterval.max, 2)} ms; client_credentials min ${fmt(summary.ccP99PerInterval.min, 2)} ms, max ${fmt(summary.ccP99PerInterval.max, 2)} ms`,
    summary.rssTrendIntervals < 2
      ? `  resident size trend: none (the second half has ${summary.rssTrendIntervals} of ${context.intervals} intervals; 2 are needed)`
      : `  resident size trend: least squares over the last ${summary.rssTrendIntervals} of ${context.intervals} intervals, ${summary.rssTrendSpanSeconds} s apart`
  )
  summary.perInstance.forEach((instance, index) => lines.push(...instanceLines(instance, context.exitedEarlyAt[index])))
  lines.push('  per endpoint:')
  for (const kind of RECORDED_KINDS) {
    const figures = totals.byKind[kind]
    if (figures === undefined || (figures.requests === 0 && !KINDS.includes(kind))) continue
    lines.push(`    ${kind.padEnd(18)} ${String(figures.requests).padStart(8)} requests  ${String(figures.errors).padStart(5)} errors  p50 ${fmt(figures.p50, 2).padStart(7)} ms  p99 ${fmt(figures.p99, 2).padStart(7)} ms  max ${fmt(figures.max, 1).padStart(7)} ms`)
  }
  if (totals.substituted > 0) lines.push(`    (${totals.substituted} requests sent as client_credentials while there was no token yet to use)`)
  return lines
}

function instanceLines (instance: InstanceSummary, exitedEarlyAt: number | undefined): string[] {
  const exit = instance.serviceExit
  const trend = instance.rssTrendMiBPerHour
  const logged = Object.entries(instance.serviceLog)
  const rss = instance.rssMiB
  return [
    `  ${instance.name} (port ${instance.port}): ${instance.requests} requests, ${instance.errors} errors; resident size ${fmt(rss.beforeSoak)} MiB before the soak, first ${fmt(rss.first)}, last ${fmt(rss.last)}, max ${fmt(rss.max)} MiB, trend ${trend === null ? '-' : `${trend >= 0 ? '+' : ''}${trend.toFixed(2)} MiB/h`}`,
    `    log (warn and above, in ${instance.logFile}): ${logged.length === 0 ? 'nothing' : logged.map(([key, count]) => `${count} × "${key}"`).join(', ')}`,
    exit.early
      ? `    EXITED ON ITS OWN during the soak (code ${exit.code}, signal ${exit.signal}, ${exitedEarlyAt ?? '?'} s after start)`
      : `    ${instance.serviceExitedCleanly ? 'exited 0' : `DID NOT EXIT CLEANLY: code ${exit.code}, signal ${exit.signal}${exit.killed ? ', killed after 30 s' : ''}`} ${exit.seconds} s after SIGTERM`
  ]
}
