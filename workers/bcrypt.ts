// A bcrypt worker thread: compares secrets with hashes, and hashes secrets,
// so that the CPU each costs (~75 ms at cost 10, ~260 ms at cost 12) is spent
// off the event loop. It runs one job at a time; the queue is the caller's.
import { parentPort } from 'node:worker_threads'
import bcrypt from 'bcryptjs'

export type BcryptJob =
  | { id: number, op: 'compare', secret: string, hash: string }
  | { id: number, op: 'hash', secret: string, cost: number }

export interface BcryptResult {
  id: number
  /** compare: true or false; null when the hash is not a bcrypt hash */
  matches?: boolean | null
  /** hash: the new hash */
  hash?: string
  /** how long the work itself took, milliseconds */
  ms: number
}

/** Runs one job; shared by the worker and the main-thread mode. */
export async function runBcryptJob (job: BcryptJob): Promise<BcryptResult> {
  const started = performance.now()
  if (job.op === 'hash') {
    const hash = await bcrypt.hash(job.secret, job.cost)
    return { id: job.id, hash, ms: performance.now() - started }
  }
  let matches: boolean | null
  try {
    matches = await bcrypt.compare(job.secret, job.hash)
  } catch {
    matches = null
  }
  return { id: job.id, matches, ms: performance.now() - started }
}

parentPort?.on('message', (job: BcryptJob) => {
  const started = performance.now()
  // Synchronous in the worker: nothing else runs on this thread.
  let result: BcryptResult
  if (job.op === 'hash') {
    result = { id: job.id, hash: bcrypt.hashSync(job.secret, job.cost), ms: 0 }
  } else {
    let matches: boolean | null
    try {
      matches = bcrypt.compareSync(job.secret, job.hash)
    } catch {
      matches = null
    }
    result = { id: job.id, matches, ms: 0 }
  }
  result.ms = performance.now() - started
  parentPort?.postMessage(result)
})
