// Waiting for a condition rather than for a fixed time, so that a test is as
// fast as the machine allows and as patient as its deadline says.
import { setTimeout as sleep } from 'node:timers/promises'

/** Calls `probe` every `intervalMs` until `done` accepts its answer or `timeoutMs` passes; the last answer. */
export async function pollUntil<T> (probe: () => Promise<T>, done: (answer: T) => boolean, timeoutMs: number, intervalMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let answer = await probe()
  while (!done(answer) && Date.now() < deadline) {
    await sleep(intervalMs)
    answer = await probe()
  }
  return answer
}

/**
 * The status of `GET <base>/health` once it is 200, or the last one seen (0:
 * no answer) when the server stops running or `timeoutMs` passes.
 */
export async function waitForHealth (base: string, running: () => boolean, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs
  let status = 0
  while (status !== 200 && running() && Date.now() < deadline) {
    try {
      status = (await fetch(`${base}/health`, { signal: AbortSignal.timeout(2000) })).status
    } catch {
      // not listening yet
    }
    if (status !== 200) await sleep(100)
  }
  return status
}
