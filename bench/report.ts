// The benchmark's results: bench/results.json keeps one run per Redis mode
// (a new run replaces the one of its mode), and a Markdown table sets the
// modes side by side, as docs/performance.md shows it.
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import type { BurstResult, MemoryResult } from './extras.ts'
import type { ScenarioResult } from './rounds.ts'

export type RedisMode = 'single' | 'cluster'

export interface BenchRun {
  redis: RedisMode
  date: string
  machine: { cpus: number, model: string, memoryGiB: number, node: string }
  /** the machine's 1-minute load average when the run began and ended: above 2 on 2 cores, others were competing */
  loadAverage: { start: number, end: number }
  settings: Record<string, unknown>
  scenarios: ScenarioResult[]
  burst?: BurstResult
  memory?: MemoryResult
}

export interface BenchResults {
  runs: BenchRun[]
}

/** The file's runs with `run` in place of the earlier run of its mode; a file of another layout is replaced. */
export function mergeRun (file: string, run: BenchRun): BenchResults {
  const earlier = existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) as Partial<BenchResults> : {}
  const others = Array.isArray(earlier.runs) ? earlier.runs.filter((other) => other.redis !== run.redis) : []
  const results = { runs: [...others, run].sort((a, b) => a.redis.localeCompare(b.redis) * -1) }
  writeFileSync(file, JSON.stringify(results, null, 2) + '\n')
  return results
}

const met = (ok: boolean): string => ok ? 'met' : 'not met'
const rate = (spread: { median: number, min: number, max: number }): string =>
  `${Math.round(spread.median)} (${Math.round(spread.min)}–${Math.round(spread.max)})`

function cells (result: ScenarioResult | undefined): string[] {
  if (result === undefined) return ['', '', '', '', '', '']
  return [
    rate(result.service),
    rate(result.ceiling),
    `${result.ratio.toFixed(2)} ${met(result.ratioMet)}`,
    `${result.fixedRate.p99} ms at ${result.fixedRate.offered}/s ${met(result.p99Met)}`,
    `${result.errors} ${met(result.errors === 0)}`,
    `${result.cpu.service.toFixed(2)} / ${result.cpu.ceiling.toFixed(2)}`
  ]
}

/**
 * One row per scenario; for each Redis mode: service and ceiling req/s
 * (median, min–max), ratio, p99 at 70 %, errors, and the cores that the
 * service and its ceiling kept busy (median).
 */
export function markdownTable (results: BenchResults): string {
  const runs = results.runs
  const header = ['scenario', 'target']
  for (const run of runs) header.push(...['req/s', 'ceiling req/s', 'ratio', 'p99 at 70 %', 'errors', 'core busy, service / ceiling'].map((title) => `${title} (${run.redis})`))
  const names = [...new Set(runs.flatMap((run) => run.scenarios.map((scenario) => scenario.name)))]
  const lines = [header, header.map((_, column) => column < 2 ? '---' : '---:')]
  for (const name of names) {
    const target = runs.flatMap((run) => run.scenarios).find((scenario) => scenario.name === name)?.ratioTarget ?? 0
    lines.push([name, `≥ ${target.toFixed(2)}`, ...runs.flatMap((run) => cells(run.scenarios.find((scenario) => scenario.name === name)))])
  }
  return lines.map((line) => `| ${line.join(' | ')} |`).join('\n') + '\n'
}
