// Reading /metrics in tests: the scrape, and the value of one sample line.
import type { FastifyInstance } from 'fastify'
import { injectAdmin } from './http.ts'

/** The Prometheus text of GET /metrics on the admin listener; fails the caller unless it is a 200. */
export async function scrapeMetrics (app: FastifyInstance): Promise<string> {
  const res = await injectAdmin(app, '/metrics')
  if (res.statusCode !== 200) throw new Error(`GET /metrics answered ${res.statusCode}`)
  return res.body
}

/** The value of one sample line (`name{labels} value`), or undefined if absent. */
export function sample (text: string, series: string): number | undefined {
  const line = text.split('\n').find((candidate) => candidate.startsWith(series + ' '))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

/** The sample lines of one metric name (any labels). */
export function samplesOf (text: string, name: string): string[] {
  return text.split('\n').filter((line) => line.startsWith(name + '{') || line.startsWith(name + ' '))
}
