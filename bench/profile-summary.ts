// Where a CPU profile (node --cpu-prof) spends its self time: the share of
// idle time, then the busy time by function and by origin (a package,
// Node.js itself, our code, garbage collection).
//   node dist/bench/profile-summary.js <file.cpuprofile> [top] [last seconds]
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

interface ProfileNode {
  id: number
  callFrame: { functionName: string, url: string, lineNumber: number }
}

interface CpuProfile {
  /** microseconds, on the clock of the samples' time deltas */
  endTime: number
  startTime: number
  nodes: ProfileNode[]
  samples: number[]
  timeDeltas: number[]
}

export interface SelfTime {
  name: string
  share: number
}

/** node_modules/<package>, node:<module>, our folder, or the pseudo-frame's own name. */
function origin (url: string, functionName: string): string {
  if (url === '') return functionName === '' ? '(anonymous)' : functionName
  const dependency = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (dependency !== null) return dependency[1]!
  if (url.startsWith('node:')) return 'node:' + (url.slice(5).split('/')[1] ?? url.slice(5))
  const ours = /\/dist\/([^/]+)\//.exec(url)
  return ours === null ? url : `service ${ours[1]!}/`
}

function ranked (totals: Map<string, number>, all: number, top: number): SelfTime[] {
  return [...totals.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, top)
    .map(([name, time]) => ({ name, share: Math.round(time / all * 1000) / 10 }))
}

export interface ProfileSummary {
  /** share of the profile's time spent waiting (the event loop idle) */
  idle: number
  /** shares of the busy time */
  functions: SelfTime[]
  origins: SelfTime[]
}

/**
 * `lastSeconds`: only the samples of the profile's last seconds (the measured
 * round, without the start and the warm-up before it).
 */
export function summarise (profile: CpuProfile, top = 15, lastSeconds = Infinity): ProfileSummary {
  const windowStart = profile.endTime - lastSeconds * 1e6
  const byId = new Map(profile.nodes.map((node) => [node.id, node]))
  const functions = new Map<string, number>()
  const origins = new Map<string, number>()
  let all = 0
  let idle = 0
  let at = profile.startTime
  for (const [index, id] of profile.samples.entries()) {
    const frame = byId.get(id)?.callFrame
    const delta = profile.timeDeltas[index] ?? 0
    at += delta
    if (frame === undefined || at < windowStart) continue
    all += delta
    if (frame.functionName === '(idle)') {
      idle += delta
      continue
    }
    const file = frame.url.split('/').slice(-2).join('/')
    const name = `${frame.functionName === '' ? '(anonymous)' : frame.functionName} ${file}${file === '' ? '' : `:${frame.lineNumber + 1}`}`
    functions.set(name, (functions.get(name) ?? 0) + delta)
    const from = origin(frame.url, frame.functionName)
    origins.set(from, (origins.get(from) ?? 0) + delta)
  }
  const busy = all - idle
  return { idle: Math.round(idle / all * 1000) / 10, functions: ranked(functions, busy, top), origins: ranked(origins, busy, top) }
}

export function formatSummary (summary: ProfileSummary): string {
  const lines = [`idle ${summary.idle.toFixed(1)} % of the time; shares of the busy time by function:`, ...summary.functions.map((entry) => `  ${entry.share.toFixed(1).padStart(5)} %  ${entry.name}`)]
  lines.push('by origin:', ...summary.origins.map((entry) => `  ${entry.share.toFixed(1).padStart(5)} %  ${entry.name}`))
  return lines.join('\n') + '\n'
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const file = process.argv[2]
  if (file === undefined) throw new Error('usage: profile-summary <file.cpuprofile> [top]')
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile
  process.stdout.write(formatSummary(summarise(profile, Number(process.argv[3] ?? 15), Number(process.argv[4] ?? Infinity))))
}
