// The control socket of the embedded mode. The embedded database admits one
// process, so while the service runs, the CLI does not open the files: it
// sends its statements to the service over a Unix socket in the data
// directory (owner-only, like the database files themselves), one JSON object
// per line each way. Changes of signing keys need a transaction, which the
// socket does not carry: the service makes them itself.
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import { rmSync } from 'node:fs'
import { iso } from '../schemas/keys.ts'
import { isKid } from '../signing-keys/kid.ts'
import { isSigningAlgorithm, type SigningAlgorithm } from '../signing-keys/algorithms.ts'
import { KeyNotFoundError, KeyRuleError, type RetirementResult, type RotationResult } from '../signing-keys/stored.ts'
import type { Database, Queryable } from './database.ts'

export type ControlRequest =
  | { id: number, op: 'query', text: string, values?: unknown[] }
  | { id: number, op: 'exec', script: string }
  | { id: number, op: 'migrate' }
  | { id: number, op: 'forget', clientId: string }
  | { id: number, op: 'rotate-keys', immediately: boolean, algorithm?: string, actor: string }
  | { id: number, op: 'retire-key', kid: string, immediately: boolean, actor: string }

/** A rotation's result as it crosses the socket: times as ISO 8601 text. */
type RotationAnswer = Omit<RotationResult, 'activateAfter' | 'retired'> & { activateAfter: string | null, retired: string | null }
type RetirementAnswer = Omit<RetirementResult, 'removeAfter'> & { removeAfter: string | null }

/** Why the life cycle of the keys refused a change (signing-keys/stored.ts), kept across the socket. */
type KeyRefusal = 'key_rule' | 'key_not_found'

export type ControlResponse =
  | { id: number, rows: unknown[] }
  | { id: number, applied: string[] }
  | { id: number, done: true }
  | { id: number, rotation: RotationAnswer }
  | { id: number, retirement: RetirementAnswer }
  | { id: number, error: string, code?: string, refusal?: KeyRefusal }

export interface KeyChangeOptions {
  immediately: boolean
  actor: string
}

/** The key changes of `keys rotate` and `keys retire`, made by the service with its own database and key-encryption key. */
export interface ControlKeyChanges {
  rotate: (options: KeyChangeOptions & { algorithm?: SigningAlgorithm }) => Promise<RotationResult>
  retire: (kid: string, options: KeyChangeOptions) => Promise<RetirementResult>
}

export interface ControlHandlers {
  db: Database
  migrate: () => Promise<string[]>
  /** a client record changed: drop what is cached of it */
  forget: (clientId: string) => Promise<void>
  /** KEY_STORE=database only: changes of the stored keys, served by the service at once */
  keys?: ControlKeyChanges
}

/** Longest request line accepted, bytes. */
const MAX_LINE = 1024 * 1024
/** Unix socket paths are limited to about 104 bytes (108 on Linux). */
export const MAX_SOCKET_PATH = 100

type FieldType = 'string' | 'string?' | 'boolean' | 'array?'

// What each operation carries besides `id` and `op`, and of which type. A
// line with a field missing, of another type, or not listed is refused.
const FIELDS = {
  query: { text: 'string', values: 'array?' },
  exec: { script: 'string' },
  migrate: {},
  forget: { clientId: 'string' },
  'rotate-keys': { immediately: 'boolean', algorithm: 'string?', actor: 'string' },
  'retire-key': { kid: 'string', immediately: 'boolean', actor: 'string' }
} as const satisfies Record<ControlRequest['op'], Record<string, FieldType>>

/** The length bounds of an actor (signing_key_events.actor). */
const MAX_ACTOR = 255

/** The values of the key operations' fields, beyond their types. */
function keyFieldsProblem (op: string, value: Record<string, unknown>): string | undefined {
  if (op !== 'rotate-keys' && op !== 'retire-key') return undefined
  const actor = value.actor as string
  if (actor.length === 0 || actor.length > MAX_ACTOR) return `${op}: actor must be 1 to ${MAX_ACTOR} characters`
  if (op === 'rotate-keys' && value.algorithm !== undefined && !isSigningAlgorithm(value.algorithm as string)) return `${op}: algorithm is not a signing algorithm`
  if (op === 'retire-key' && !isKid(value.kid as string)) return `${op}: kid must be 43 base64url characters`
  return undefined
}

function fieldProblem (op: string, name: string, type: FieldType, field: unknown): string | undefined {
  if (type === 'string' && typeof field !== 'string') return `${op}: ${name} must be a string`
  if (type === 'string?' && field !== undefined && typeof field !== 'string') return `${op}: ${name} must be a string`
  if (type === 'boolean' && typeof field !== 'boolean') return `${op}: ${name} must be true or false`
  if (type === 'array?' && field !== undefined && !Array.isArray(field)) return `${op}: ${name} must be an array`
  return undefined
}

const isRecord = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value)

/** The id to answer a refused line with: its own when it has a usable one, else 0 (no request has it). */
function answerId (value: unknown): number {
  return isRecord(value) && Number.isSafeInteger(value.id) ? value.id as number : 0
}

/** The request a parsed line holds, or why it is not one. */
export function parseControlRequest (value: unknown): { request: ControlRequest } | { error: string } {
  if (!isRecord(value)) return { error: 'a request is a JSON object' }
  if (!Number.isSafeInteger(value.id)) return { error: 'id must be an integer' }
  const op = value.op
  if (typeof op !== 'string' || !Object.hasOwn(FIELDS, op)) return { error: `op must be one of ${Object.keys(FIELDS).join(', ')}` }
  const fields: Record<string, FieldType> = FIELDS[op as ControlRequest['op']]
  for (const name of Object.keys(value)) {
    if (name !== 'id' && name !== 'op' && !Object.hasOwn(fields, name)) return { error: `${op}: unexpected field ${name}` }
  }
  for (const [name, type] of Object.entries(fields)) {
    const problem = fieldProblem(op, name, type, value[name])
    if (problem !== undefined) return { error: problem }
  }
  const problem = keyFieldsProblem(op, value)
  if (problem !== undefined) return { error: problem }
  return { request: value as unknown as ControlRequest }
}

function answer (socket: Socket, response: ControlResponse): void {
  if (!socket.destroyed) socket.write(`${JSON.stringify(response)}\n`)
}

const dateOrNull = (text: string | null): Date | null => text === null ? null : new Date(text)

/** The service keeps its keys in the settings: nothing here to change. */
const NO_STORED_KEYS = 'the running service does not keep its signing keys in the database (its KEY_STORE is settings)'

async function changeKeys (request: Extract<ControlRequest, { op: 'rotate-keys' | 'retire-key' }>, keys: ControlKeyChanges | undefined): Promise<ControlResponse> {
  if (keys === undefined) throw new KeyRuleError(NO_STORED_KEYS)
  const options = { immediately: request.immediately, actor: request.actor }
  if (request.op === 'retire-key') {
    const retirement = await keys.retire(request.kid, options)
    return { id: request.id, retirement: { ...retirement, removeAfter: iso(retirement.removeAfter) } }
  }
  const algorithm = request.algorithm as SigningAlgorithm | undefined
  const rotation = await keys.rotate(algorithm === undefined ? options : { ...options, algorithm })
  return { id: request.id, rotation: { ...rotation, activateAfter: iso(rotation.activateAfter), retired: rotation.retired ?? null } }
}

async function handle (request: ControlRequest, handlers: ControlHandlers): Promise<ControlResponse> {
  switch (request.op) {
    case 'query': {
      const { rows } = await handlers.db.query(request.text, request.values ?? [])
      return { id: request.id, rows }
    }
    case 'exec':
      await handlers.db.exec(request.script)
      return { id: request.id, done: true }
    case 'migrate':
      return { id: request.id, applied: await handlers.migrate() }
    case 'forget':
      await handlers.forget(request.clientId)
      return { id: request.id, done: true }
    case 'rotate-keys':
    case 'retire-key':
      return await changeKeys(request, handlers.keys)
  }
}

/** The answer to a request that failed: its message, PostgreSQL's SQLSTATE, or which refusal of the keys' life cycle. */
function failure (id: number, err: unknown): ControlResponse {
  const refusal: KeyRefusal | undefined = err instanceof KeyNotFoundError ? 'key_not_found' : err instanceof KeyRuleError ? 'key_rule' : undefined
  const code = (err as { code?: unknown } | null)?.code
  return {
    id,
    error: err instanceof Error ? err.message : String(err),
    ...(typeof code === 'string' ? { code } : {}),
    ...(refusal === undefined ? {} : { refusal })
  }
}

/** Answers one line: a refused line gets an error and changes nothing. */
function serveLine (socket: Socket, line: string, handlers: ControlHandlers): void {
  let value: unknown
  try {
    value = JSON.parse(line)
  } catch {
    answer(socket, { id: 0, error: 'not JSON' })
    return
  }
  const parsed = parseControlRequest(value)
  if ('error' in parsed) {
    answer(socket, { id: answerId(value), error: parsed.error })
    return
  }
  const { request } = parsed
  handle(request, handlers).then(
    (response) => answer(socket, response),
    (err: unknown) => answer(socket, failure(request.id, err))
  )
}

/**
 * Listens on `path` (replacing a stale socket file), owner-only from the
 * start: the socket file is created by bind() under the umask, so the umask
 * is 0177 for that call (bind happens synchronously within listen() when the
 * server is exclusive), and the file never exists with a wider mode. It also
 * sits in DATA_DIR, which is owner-only.
 */
export async function startControlServer (path: string, handlers: ControlHandlers): Promise<Server> {
  rmSync(path, { force: true })
  const server = createServer((socket) => {
    let buffered = ''
    // After a line longer than MAX_LINE: its rest is dropped up to the next newline.
    let skipping = false
    socket.setEncoding('utf8')
    socket.on('error', () => socket.destroy())
    socket.on('data', (chunk: string) => {
      buffered += chunk
      let newline: number
      while ((newline = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, newline)
        buffered = buffered.slice(newline + 1)
        if (skipping) {
          skipping = false
          continue
        }
        if (line.length > MAX_LINE) {
          answer(socket, { id: 0, error: 'request too large' })
          continue
        }
        serveLine(socket, line, handlers)
      }
      if (buffered.length > MAX_LINE) {
        if (!skipping) answer(socket, { id: 0, error: 'request too large' })
        skipping = true
        buffered = ''
      }
    })
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    const umask = process.umask(0o177)
    try {
      server.listen({ path, exclusive: true }, () => { server.off('error', reject); resolve() })
    } finally {
      process.umask(umask)
    }
  })
  return server
}

/** An error the service's database reported, with PostgreSQL's SQLSTATE when there is one. */
export class RemoteDatabaseError extends Error {
  readonly code: string | undefined
  constructor (message: string, code: string | undefined) {
    super(message)
    this.name = 'RemoteDatabaseError'
    this.code = code
  }
}

/** The running service's database, through its control socket. */
export interface ControlClient extends Database {
  migrate: () => Promise<string[]>
  forget: (clientId: string) => Promise<void>
  /** KeyRuleError and KeyNotFoundError come back as themselves */
  rotateKeys: ControlKeyChanges['rotate']
  retireKey: ControlKeyChanges['retire']
}

/** The error of a failed answer: the keys' own refusals as their classes, anything else as the database's. */
function answerError (response: { error: string, code?: string, refusal?: KeyRefusal }, kid: string | undefined): Error {
  if (response.refusal === 'key_not_found') return new KeyNotFoundError(kid ?? '')
  if (response.refusal === 'key_rule') return new KeyRuleError(response.error)
  return new RemoteDatabaseError(response.error, response.code)
}

/** A request without its id: the channel numbers them. */
type UnnumberedRequest = ControlRequest extends infer R ? R extends ControlRequest ? Omit<R, 'id'> : never : never

/**
 * Requests over a connected socket, one JSON line each way: each gets an id,
 * its answer within `timeoutMs`, and every pending one fails when the
 * connection does. An error answer throws.
 */
function requestChannel (socket: Socket, timeoutMs: number): (request: UnnumberedRequest) => Promise<ControlResponse> {
  const pending = new Map<number, { resolve: (response: ControlResponse) => void, reject: (err: Error) => void }>()
  let nextId = 1
  let buffered = ''
  const failAll = (err: Error): void => {
    for (const waiter of pending.values()) waiter.reject(err)
    pending.clear()
  }
  socket.on('error', (err) => failAll(err))
  socket.on('close', () => failAll(new Error('the service closed the control connection')))
  socket.on('data', (chunk: string) => {
    buffered += chunk
    let newline: number
    while ((newline = buffered.indexOf('\n')) >= 0) {
      const response = JSON.parse(buffered.slice(0, newline)) as ControlResponse
      buffered = buffered.slice(newline + 1)
      const waiter = pending.get(response.id)
      pending.delete(response.id)
      waiter?.resolve(response)
    }
  })

  return async (request) => {
    const id = nextId++
    const response = await new Promise<ControlResponse>((resolve, reject) => {
      const timer = setTimeout(() => {
        pending.delete(id)
        reject(new Error(`the service did not answer within ${timeoutMs} ms`))
      }, timeoutMs)
      pending.set(id, {
        resolve: (value) => { clearTimeout(timer); resolve(value) },
        reject: (err) => { clearTimeout(timer); reject(err) }
      })
      socket.write(`${JSON.stringify({ ...request, id })}\n`)
    })
    if ('error' in response) throw answerError(response, 'kid' in request ? request.kid : undefined)
    return response
  }
}

/** Connects to the control socket; rejects when nothing listens there. */
export async function connectControl (path: string, timeoutMs = 5000): Promise<ControlClient> {
  const socket = createConnection(path)
  socket.setEncoding('utf8')
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve)
    socket.once('error', reject)
  })
  const send = requestChannel(socket, timeoutMs)

  const queryable: Queryable = {
    query: async <R>(text: string, values?: unknown[]) => {
      const response = await send({ op: 'query', text, values: values ?? [] })
      return { rows: ('rows' in response ? response.rows : []) as R[] }
    },
    exec: async (script: string) => { await send({ op: 'exec', script }) }
  }
  return {
    kind: 'embedded',
    ...queryable,
    // Each statement commits on its own on the service's side: the CLI's
    // changes are single statements, and a transaction held open across a
    // socket would stall the service's single database connection.
    transaction: async () => { throw new Error('transactions are not available through the control socket') },
    migrate: async () => {
      const response = await send({ op: 'migrate' })
      return 'applied' in response ? response.applied : []
    },
    forget: async (clientId) => { await send({ op: 'forget', clientId }) },
    rotateKeys: async (options) => {
      const response = await send({ op: 'rotate-keys', ...options })
      if (!('rotation' in response)) throw new Error('the service answered a rotation without its result')
      const { rotation } = response
      return { ...rotation, activateAfter: dateOrNull(rotation.activateAfter), retired: rotation.retired ?? undefined }
    },
    retireKey: async (kid, options) => {
      const response = await send({ op: 'retire-key', kid, ...options })
      if (!('retirement' in response)) throw new Error('the service answered a retirement without its result')
      return { ...response.retirement, removeAfter: dateOrNull(response.retirement.removeAfter) }
    },
    close: async () => {
      await new Promise<void>((resolve) => {
        if (socket.destroyed) { resolve(); return }
        socket.once('close', () => resolve())
        socket.end()
      })
    }
  }
}
