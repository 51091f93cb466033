// What the soak prints and keeps: a line per interval as it goes, then a
// summary of the whole soak (latency, errors, the resident size's trend, the
// service's exit).
import type { GeneratorTotals, IntervalReport } from './soak-messages.ts'
import { KINDS, round } from './soak-messages.ts'
import type { ServiceExit } from './soak-service.ts'

export interface IntervalRow extends IntervalReport {
  rssMiB: number | null
  /** the service's CPU over the interval, % of one core */
  cpuPercent: number | null
  generatorCpuPercent: number | null
  load1: number
}

export const fmt = (value: number | null, digits = 1): string => value === null ? '-' : value.toFixed(digits)

const HEADER = ['time s', 'requests', 'req/s', 'errors', 'p50 ms', 'p99 ms', 'max ms', 'cc p50', 'cc p99', 'RSS MiB', 'CPU %', 'load']
const WIDTHS = [7, 9, 8, 7, 7, 7, 8, 7, 7, 8, 6, 5]
const tableLine = (cells: string[]): string => cells.map((cell, column) => cell.padStart(WIDTHS[column] ?? 0)).join('  ')

export const intervalHeader = (): string => tableLine(HEADER)

/** One interval's line of the table, with its errors and the generator's lag when there are any. */
export function intervalLine (row: IntervalRow): string {
  const errors = Object.entries(row.errorsByLabel).map(([label, count]) => `${label}: ${count}`).join(', ')
  return tableLine([
    row.to.toFixed(0), String(row.requests), row.rps.toFixed(1), String(row.errors), fmt(row.p50, 2), fmt(row.p99, 2), fmt(row.max, 1),
    fmt(row.ccP50, 2), fmt(row.ccP99, 2), fmt(row.rssMiB), fmt(row.cpuPercent, 0), row.load1.toFixed(2)
  ]) + (errors === '' ? '' : `  [${errors}]`) + (row.lagMs > 100 ? `  [generator ${row.lagMs} ms late]` : '')
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

export function summarize (rows: IntervalRow[], totals: GeneratorTotals, rate: number, rssBefore: number | null, exit: ServiceExit): Summary {
  const defined = (values: Array<number | null>): number[] => values.filter((value): value is number => value !== null)
  const rss = defined(rows.map((row) => row.rssMiB))
  const secondHalf = rows.slice(Math.floor(rows.length / 2)).filter((row) => row.rssMiB !== null)
  const perSecond = slope(secondHalf.map((row) => [row.to, row.rssMiB!]))
  return {
    seconds: totals.seconds,
    offeredRate: rate,
    sent: totals.sent,
    requests: totals.requests,
    errors: totals.errors,
    p50: totals.p50,
    p99: totals.p99,
    max: totals.max,
    maxPerInterval: rows.length === 0 ? null : Math.max(...rows.map((row) => row.max ?? 0)),
    p99PerInterval: range(defined(rows.map((row) => row.p99))),
    ccP99PerInterval: range(defined(rows.map((row) => row.ccP99))),
    rssMiB: { beforeSoak: rssBefore, first: rss[0] ?? null, last: rss[rss.length - 1] ?? null, max: rss.length === 0 ? null : Math.max(...rss) },
    rssTrendMiBPerHour: perSecond === null ? null : round(perSecond * 3600, 2),
    rssTrendIntervals: secondHalf.length,
    rssTrendSpanSeconds: secondHalf.length < 2 ? 0 : round(secondHalf[secondHalf.length - 1]!.to - secondHalf[0]!.to),
    serviceExit: exit,
    serviceExitedCleanly: !exit.early && !exit.killed && exit.code === 0
  }
}

export interface Summary {
  seconds: number
  offeredRate: number
  sent: number
  requests: number
  errors: number
  p50: number | null
  p99: number | null
  max: number | null
  maxPerInterval: number | null
  p99PerInterval: { min: number | null, max: number | null }
  ccP99PerInterval: { min: number | null, max: number | null }
  rssMiB: { beforeSoak: number | null, first: number | null, last: number | null, max: number | null }
  rssTrendMiBPerHour: number | null
  rssTrendIntervals: number
  rssTrendSpanSeconds: number
  serviceExit: ServiceExit
  serviceExitedCleanly: boolean
}

export interface SummaryContext {
  /** how the rate was chosen, for the first line */
  rateFrom: string
  interrupted: boolean
  intervals: number
  serviceLog: Map<string, { count: number }>
  /** seconds after its start, when the service exited on its own */
  exitedEarlyAt: number | undefined
}

/** The summary, as text. */
export function summaryLines (summary: Summary, totals: GeneratorTotals, context: SummaryContext): string[] {
  const exit = summary.serviceExit
  const trend = summary.rssTrendMiBPerHour
  const lines = [
    '',
    `summary: ${totals.seconds} s at ${summary.offeredRate} req/s offered${context.rateFrom}${context.interrupted ? ', ended early' : ''}`,
    `  requests: ${totals.sent} sent, ${totals.requests} answered, ${totals.errors} errors${totals.unfinished > 0 ? ` (${totals.unfinished} without an answer at the end)` : ''}; p50 ${fmt(totals.p50, 2)} ms, p99 ${fmt(totals.p99, 2)} ms, max ${fmt(totals.max, 1)} ms over the whole soak`
  ]
  if (totals.errors > 0) lines.push(`  errors: ${Object.entries(totals.errorsByLabel).map(([label, count]) => `${label}: ${count}`).join(', ')}`)
  lines.push(
    `  p99 per interval: all endpoints min ${fmt(summary.p99PerInterval.min, 2)} ms, max ${fmt(summary.p99PerInterval.max, 2)} ms; client_credentials min ${fmt(summary.ccP99PerInterval.min, 2)} ms, max ${fmt(summary.ccP99PerInterval.max, 2)} ms`,
    `  resident size: ${fmt(summary.rssMiB.beforeSoak)} MiB before the soak; first ${fmt(summary.rssMiB.first)}, last ${fmt(summary.rssMiB.last)}, max ${fmt(summary.rssMiB.max)} MiB; trend ${trend === null ? `- (the second half has ${summary.rssTrendIntervals} of ${context.intervals} intervals; 2 are needed)` : `${trend >= 0 ? '+' : ''}${trend.toFixed(2)} MiB/h (least squares over the last ${summary.rssTrendIntervals} of ${context.intervals} intervals, ${summary.rssTrendSpanSeconds} s apart)`}`,
    '  per endpoint:'
  )
  for (const kind of KINDS) {
    const figures = totals.byKind[kind]
    if (figures === undefined) continue
    lines.push(`    ${kind.padEnd(18)} ${String(figures.requests).padStart(8)} requests  ${String(figures.errors).padStart(5)} errors  p50 ${fmt(figures.p50, 2).padStart(7)} ms  p99 ${fmt(figures.p99, 2).padStart(7)} ms  max ${fmt(figures.max, 1).padStart(7)} ms`)
  }
  if (totals.substituted > 0) lines.push(`    (${totals.substituted} requests sent as client_credentials while there was no token yet to use)`)
  const logged = [...context.serviceLog.entries()]
  lines.push(`  service log (warn and above): ${logged.length === 0 ? 'nothing' : logged.map(([key, { count }]) => `${count} × "${key}"`).join(', ')}`)
  lines.push(exit.early
    ? `  service: EXITED ON ITS OWN during the soak (code ${exit.code}, signal ${exit.signal}, ${context.exitedEarlyAt ?? '?'} s after start)`
    : `  service: ${summary.serviceExitedCleanly ? 'exited 0' : `DID NOT EXIT CLEANLY: code ${exit.code}, signal ${exit.signal}${exit.killed ? ', killed after 30 s' : ''}`} ${exit.seconds} s after SIGTERM`)
  return lines
}
