// The bcrypt work of the service: the executors (worker threads, or the main
// thread with BCRYPT_WORKERS=0) and the bounded queue in front of them, served
// round-robin by lane. plugins/secrets.ts decides what is compared and when.
import { Worker } from 'node:worker_threads'
import { OAuthError } from '../plugins/errors.ts'
import { runBcryptJob, type BcryptJob, type BcryptResult } from './bcrypt.ts'

/** One compare: from enqueue to start on a worker, and the compare itself, seconds. */
export interface CompareTiming {
  waitSeconds: number
  compareSeconds: number
}

/** The lane of background work (renewals, rehashes): it never evicts a request. */
export const BACKGROUND_LANE = '\0background'

/** What the queue counts (the secrets plugin's stats). */
export interface QueueStats {
  compares: number
  refused: number
  dropped: number
}

const busy = (): OAuthError => new OAuthError(503, 'temporarily_unavailable', 'too many client authentications are waiting; retry shortly', { 'retry-after': '1' })

type JobSpec = BcryptJob extends infer J ? J extends BcryptJob ? Omit<J, 'id'> : never : never

interface Executor {
  busy: boolean
  run: (job: JobSpec) => Promise<BcryptResult>
  close: () => Promise<void>
}

export function mainThreadExecutor (): Executor {
  let nextId = 0
  return {
    busy: false,
    run: async (job) => await runBcryptJob({ ...job, id: nextId++ } as BcryptJob),
    close: async () => {}
  }
}

// Worker threads are shared by every app in the process (the tests build
// many; starting a thread costs far more than a compare), started at their
// first job and unref'd, so that an idle one never keeps the process alive.
// Each app's executor uses one of them as if it were its own: in a service
// process there is one app, so one job at a time runs on each thread.
interface SharedWorker {
  worker: Worker
  pending: Map<number, { resolve: (result: BcryptResult) => void, reject: (err: Error) => void }>
}
const sharedWorkers: Array<SharedWorker | undefined> = []
let nextJobId = 0

function sharedWorker (index: number): SharedWorker {
  const existing = sharedWorkers[index]
  if (existing !== undefined) return existing
  // The worker module sits beside this one's directory, with this module's
  // extension (.ts under the test loader, .js when built).
  const extension = import.meta.url.endsWith('.ts') ? '.ts' : '.js'
  const worker = new Worker(new URL(`./bcrypt${extension}`, import.meta.url))
  const entry: SharedWorker = { worker, pending: new Map() }
  worker.on('message', (result: BcryptResult) => {
    const waiter = entry.pending.get(result.id)
    entry.pending.delete(result.id)
    waiter?.resolve(result)
  })
  const fail = (err: Error): void => {
    // A thread that died is replaced at the next job; its jobs fail.
    if (sharedWorkers[index] === entry) sharedWorkers[index] = undefined
    for (const waiter of entry.pending.values()) waiter.reject(err)
    entry.pending.clear()
  }
  worker.on('error', fail)
  worker.on('exit', () => fail(new Error('the bcrypt worker stopped')))
  // After the listeners: adding a 'message' listener refs the thread again.
  worker.unref()
  sharedWorkers[index] = entry
  return entry
}

export function workerExecutor (index: number): Executor {
  return {
    busy: false,
    run: async (job) => {
      const { worker, pending } = sharedWorker(index)
      const id = nextJobId++
      return await new Promise<BcryptResult>((resolve, reject) => {
        pending.set(id, { resolve, reject })
        worker.postMessage({ ...job, id })
      })
    },
    close: async () => {}
  }
}

interface Queued {
  job: JobSpec
  lane: string
  isGone: (() => boolean) | undefined
  resolve: (result: BcryptResult) => void
  reject: (err: Error) => void
  /** performance.now() when it was submitted */
  submittedAt: number
}

/** bcrypt work for the executors, queued by lane with a bound. */
export class BcryptQueue {
  private readonly lanes = new Map<string, Queued[]>()
  private queued = 0
  /** the lane of the compare started last: it waits behind every other lane */
  private lastServed: string | undefined

  private readonly executors: Executor[]
  private readonly limit: number
  private readonly stats: QueueStats
  private readonly observeCompare: (timing: CompareTiming) => void

  // Fields assigned by hand rather than as parameter properties: Node's type
  // stripping runs only syntax that erases to plain JavaScript.
  constructor (executors: Executor[], limit: number, stats: QueueStats, observeCompare: (timing: CompareTiming) => void) {
    this.executors = executors
    this.limit = limit
    this.stats = stats
    this.observeCompare = observeCompare
  }

  get length (): number {
    return this.queued
  }

  async submit (job: JobSpec, lane: string, isGone?: () => boolean): Promise<BcryptResult> {
    return await new Promise<BcryptResult>((resolve, reject) => {
      const entry: Queued = { job, lane, isGone, resolve, reject, submittedAt: performance.now() }
      const idle = this.executors.find((executor) => !executor.busy)
      if (idle !== undefined && this.queued === 0) {
        this.start(idle, entry)
        return
      }
      if (this.queued >= this.limit && !this.makeRoom(lane)) {
        this.stats.refused++
        reject(busy())
        return
      }
      const entries = this.lanes.get(lane)
      if (entries === undefined) this.lanes.set(lane, [entry])
      else entries.push(entry)
      this.queued++
    })
  }

  // A full queue takes a newcomer only from a lane shorter than the longest
  // by two or more: the longest lane's newest entry gives way (refused).
  // Background work never pushes out a request.
  private makeRoom (lane: string): boolean {
    if (lane === BACKGROUND_LANE) return false
    let longest: Queued[] | undefined
    for (const entries of this.lanes.values()) if (longest === undefined || entries.length > longest.length) longest = entries
    const mine = this.lanes.get(lane)?.length ?? 0
    if (longest === undefined || longest.length <= mine + 1) return false
    const evicted = longest.pop() as Queued
    this.queued--
    if (longest.length === 0) this.lanes.delete(evicted.lane)
    this.stats.refused++
    evicted.reject(busy())
    return true
  }

  // Round-robin over lanes: each lane's first entry in turn; a lane served
  // goes to the back.
  private next (): Queued | undefined {
    const recent = this.lastServed === undefined ? undefined : this.lanes.get(this.lastServed)
    if (recent !== undefined && this.lanes.size > 1) {
      this.lanes.delete(this.lastServed as string)
      this.lanes.set(this.lastServed as string, recent)
    }
    for (;;) {
      const first = this.lanes.entries().next()
      if (first.done === true) return undefined
      const [lane, entries] = first.value
      const entry = entries.shift() as Queued
      this.queued--
      this.lanes.delete(lane)
      if (entries.length > 0) this.lanes.set(lane, entries)
      if (entry.isGone?.() === true) {
        this.stats.dropped++
        entry.reject(new OAuthError(503, 'temporarily_unavailable', 'the request went away before its turn'))
        continue
      }
      return entry
    }
  }

  private start (executor: Executor, entry: Queued): void {
    if (entry.job.op === 'compare') this.stats.compares++
    this.lastServed = entry.lane
    executor.busy = true
    const waitSeconds = (performance.now() - entry.submittedAt) / 1000
    executor.run(entry.job).then((result) => {
      if (entry.job.op === 'compare') this.observeCompare({ waitSeconds, compareSeconds: result.ms / 1000 })
      entry.resolve(result)
    }, entry.reject).finally(() => {
      executor.busy = false
      const following = this.next()
      if (following !== undefined) this.start(executor, following)
    })
  }
}
