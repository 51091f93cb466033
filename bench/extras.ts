// Checks of the benchmark that have no ceiling: a burst of wrong secrets
// must not stall the service, and the resident size must not grow with the
// number of requests served.
import { readFileSync } from 'node:fs'
import type { LoadResult, Scenario } from './load.ts'
import { runLoad } from './processes.ts'

type Request = Omit<Scenario, 'url' | 'connections' | 'duration'>

export interface BurstResult {
  verifyAlone: LoadResult
  verifyDuringBurst: LoadResult
  /** the 300 wrong secrets: non2xx counts the 401, 429 and 503 answers they should all get */
  burst: LoadResult
}

export interface MemoryResult {
  afterRequests: number
  rssMiB: number
  afterAllRequests: number
  rssAfterAllMiB: number
  growth: number
}

/**
 * 300 requests at once, each on its own connection with a different wrong
 * secret for one client (hashed at the service's cost), while verify is
 * measured for the seconds the burst takes to be answered; verify alone over
 * the same window is the reference. The burst leaves the load generator's
 * address throttled for a minute: the caller clears the counters after.
 */
export async function burstOfWrongSecrets (url: string, verify: Request, wrongSecrets: Request, connections: number): Promise<BurstResult> {
  const window = { url, connections, duration: 3 }
  const verifyAlone = await runLoad({ ...verify, ...window })
  const [burst, verifyDuringBurst] = await Promise.all([
    runLoad({ ...wrongSecrets, url, connections: 300, duration: 0, amount: 300 }),
    runLoad({ ...verify, ...window })
  ])
  return { verifyAlone, verifyDuringBurst, burst }
}

/** Resident set size of a process, in MiB (Linux). */
function rssMiB (pid: number | undefined): number {
  const status = readFileSync(`/proc/${pid ?? 0}/status`, 'utf8')
  const kib = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0)
  return Math.round(kib / 1024 * 10) / 10
}

/** Resident size after a tenth of `requests` token requests, then after all of them. */
export async function memoryGrowth (url: string, pid: number | undefined, token: Request, requests: number, connections: number): Promise<MemoryResult> {
  const tenth = Math.round(requests / 10)
  // autocannon refuses more connections than requests.
  connections = Math.max(1, Math.min(connections, tenth))
  await runLoad({ ...token, url, connections, duration: 0, amount: tenth })
  const rssAfterTenth = rssMiB(pid)
  await runLoad({ ...token, url, connections, duration: 0, amount: requests - tenth })
  const rssAfterAll = rssMiB(pid)
  return {
    afterRequests: tenth,
    rssMiB: rssAfterTenth,
    afterAllRequests: requests,
    rssAfterAllMiB: rssAfterAll,
    growth: Math.round((rssAfterAll / rssAfterTenth - 1) * 1000) / 1000
  }
}
