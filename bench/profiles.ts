// A CPU profile of the service for one round of a scenario: a fresh service
// process under node --cpu-prof, a warm-up round and the measured round,
// then the summary of where its time went in the measured round
// (bench/profile-summary.ts), on stderr and next to the profile.
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { formatSummary, summarise } from './profile-summary.ts'
import { runLoad, startService, stop } from './processes.ts'
import type { RoundSettings, ScenarioPlan } from './rounds.ts'

export interface ProfileContext {
  env: Record<string, string>
  cwd: string
  settings: RoundSettings
  log: (line: string) => void
}

export async function profileScenarios (plans: ScenarioPlan[], context: ProfileContext): Promise<void> {
  for (const plan of plans) {
    const directory = join(context.cwd, 'profiles', plan.name.replace(/[^a-z0-9]+/gi, '-'))
    mkdirSync(directory, { recursive: true })
    // No shutdown delay: its idle seconds would end the profile.
    const service = await startService({ ...context.env, SHUTDOWN_DELAY: '0' }, context.cwd, ['--cpu-prof', `--cpu-prof-dir=${directory}`])
    const load = { ...plan.request, ...plan.serviceOnly, url: service.url, path: plan.servicePath, connections: context.settings.connections }
    try {
      await runLoad({ ...load, duration: context.settings.warmUpSeconds })
      await runLoad({ ...load, duration: context.settings.seconds })
    } finally {
      await stop(service.child)
    }
    // Worker threads (the secret hashing) write profiles of their own; the main thread's is the largest.
    const file = readdirSync(directory)
      .filter((name) => name.endsWith('.cpuprofile'))
      .sort((a, b) => statSync(join(directory, b)).size - statSync(join(directory, a)).size)[0]
    if (file === undefined) {
      context.log(`${plan.name}: no profile was written in ${directory}`)
      continue
    }
    const summary = formatSummary(summarise(JSON.parse(readFileSync(join(directory, file), 'utf8')), 15, context.settings.seconds))
    writeFileSync(join(directory, 'summary.txt'), summary)
    context.log(`profile of the service, ${plan.name} (${join(directory, file)}):\n${summary}`)
  }
}
