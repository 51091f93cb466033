// A bcrypt worker thread: compares secrets with hashes so that the ~65 ms of
// CPU each compare costs (cost 10) is spent off the event loop.
import { parentPort } from 'node:worker_threads'
import bcrypt from 'bcryptjs'

export interface CompareRequest {
  id: number
  secret: string
  hash: string
}

export interface CompareResult {
  id: number
  /** true or false; null when the hash is not a bcrypt hash */
  matches: boolean | null
}

parentPort?.on('message', (request: CompareRequest) => {
  let matches: boolean | null
  try {
    matches = bcrypt.compareSync(request.secret, request.hash)
  } catch {
    matches = null
  }
  parentPort?.postMessage({ id: request.id, matches } satisfies CompareResult)
})
