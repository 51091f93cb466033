// One scenario of the benchmark: a warm-up round of its ceiling and of the
// service, then rounds that alternate ceiling and service (so that whatever
// else the machine does falls on both alike), then a fixed-rate run of the
// service at 70 % of its median rate for the latency target.
import type { LoadResult, Scenario } from './load.ts'
import { runLoad, runLoadOn, type Server } from './processes.ts'

type Round = LoadResult & { serverCpu: number }

export interface ScenarioPlan {
  name: string
  /** the ratio to its ceiling that the service should reach */
  target: number
  /** the requests, the same bytes for the service and for its ceiling */
  request: Omit<Scenario, 'url' | 'path' | 'connections' | 'duration'>
  servicePath: string
  ceilingPath: string
  /** settings for the service's runs only (such as where the refresh tokens left go) */
  serviceOnly?: Partial<Scenario>
}

export interface RoundSettings {
  seconds: number
  warmUpSeconds: number
  connections: number
  rounds: number
  /** share of the median maximum rate offered in the fixed-rate run */
  fixedRateShare: number
  /** the target for the p99 of the fixed-rate run, in ms */
  p99TargetMs: number
}

export interface Spread {
  median: number
  min: number
  max: number
}

export interface ScenarioResult {
  name: string
  service: Spread
  ceiling: Spread
  /** median(service) / median(ceiling) */
  ratio: number
  ratioTarget: number
  ratioMet: boolean
  fixedRate: { offered: number, achieved: number, p50: number, p99: number }
  p99Met: boolean
  /** errors, timeouts and non-2xx answers of the service over every run of the scenario */
  errors: number
  /** the ceiling's, for the record: a ceiling that errs is no ceiling */
  ceilingErrors: number
  /**
   * Medians over the rounds of the CPU used, in seconds per second: by the
   * server measured (1 = its core saturated) and by the load generator. A
   * server below 1 was not the bottleneck of its rounds.
   */
  cpu: { service: number, ceiling: number, loadOnService: number, loadOnCeiling: number }
  rounds: { service: Round[], ceiling: Round[] }
}

export function spread (values: number[]): Spread {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  const median = sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2
  return { median, min: sorted[0] ?? 0, max: sorted[sorted.length - 1] ?? 0 }
}

export function failures (result: LoadResult): number {
  return result.errors + result.timeouts + result.non2xx
}

const round2 = (value: number): number => Math.round(value * 100) / 100

function cpuMedians (rounds: ScenarioResult['rounds']): ScenarioResult['cpu'] {
  const median = (values: number[]): number => spread(values).median
  return {
    service: median(rounds.service.map((round) => round.serverCpu)),
    ceiling: median(rounds.ceiling.map((round) => round.serverCpu)),
    loadOnService: median(rounds.service.map((round) => round.cpu)),
    loadOnCeiling: median(rounds.ceiling.map((round) => round.cpu))
  }
}

export async function measureScenario (plan: ScenarioPlan, servers: { service: Server, ceiling: Server }, settings: RoundSettings, log: (line: string) => void): Promise<ScenarioResult> {
  const base = { ...plan.request, connections: settings.connections, duration: settings.seconds }
  const onCeiling = { ...base, url: servers.ceiling.url, path: plan.ceilingPath }
  const onService = { ...base, ...plan.serviceOnly, url: servers.service.url, path: plan.servicePath }
  await runLoad({ ...onCeiling, duration: settings.warmUpSeconds })
  const warmUp = await runLoad({ ...onService, duration: settings.warmUpSeconds })
  const rounds: ScenarioResult['rounds'] = { service: [], ceiling: [] }
  for (let round = 1; round <= settings.rounds; round++) {
    const ceiling = await runLoadOn(servers.ceiling, onCeiling)
    const service = await runLoadOn(servers.service, onService)
    rounds.ceiling.push(ceiling)
    rounds.service.push(service)
    log(`  ${plan.name}, round ${round}: ceiling ${Math.round(ceiling.rps)} req/s (cpu ${ceiling.serverCpu}, load ${ceiling.cpu}, failures ${failures(ceiling)}), ` +
      `service ${Math.round(service.rps)} req/s (cpu ${service.serverCpu}, load ${service.cpu}, p99 ${service.p99} ms, failures ${failures(service)})`)
  }
  const service = spread(rounds.service.map((result) => result.rps))
  const ceiling = spread(rounds.ceiling.map((result) => result.rps))
  const offered = Math.round(service.median * settings.fixedRateShare)
  const fixed = await runLoad({ ...onService, overallRate: offered })
  log(`  ${plan.name}, fixed rate ${offered} req/s: p50 ${fixed.p50} ms, p99 ${fixed.p99} ms, failures ${failures(fixed)}`)
  const ratio = round2(service.median / ceiling.median)
  return {
    name: plan.name,
    service,
    ceiling,
    ratio,
    ratioTarget: plan.target,
    ratioMet: ratio >= plan.target,
    fixedRate: { offered, achieved: round2(fixed.rps), p50: fixed.p50, p99: fixed.p99 },
    p99Met: fixed.p99 < settings.p99TargetMs,
    errors: [warmUp, ...rounds.service, fixed].reduce((sum, result) => sum + failures(result), 0),
    ceilingErrors: rounds.ceiling.reduce((sum, result) => sum + failures(result), 0),
    cpu: cpuMedians(rounds),
    rounds
  }
}
