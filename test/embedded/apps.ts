// What the embedded-mode tests share: apps on data directories of their own,
// their log lines, and the requests the tests make of them.
import { chmodSync, statSync } from 'node:fs'
import { cp } from 'node:fs/promises'
import { join } from 'node:path'
import { Writable } from 'node:stream'
import type { Test } from 'tap'
import Fastify, { type FastifyInstance, type LightMyRequestResponse } from 'fastify'
import serviceApp, { options } from '../../app.ts'
import { ensureDataDirSigningKey, loadConfig } from '../../plugins/config.ts'
import { insertClientRow } from '../../plugins/clients.ts'
import { PGDATA } from '../../storage/data-dir.ts'
import { embeddedTemplate } from '../backends.ts'
import { basicAuth, form, FORM } from '../helper.ts'

export type LogLine = Record<string, unknown>

// pino's numeric levels
export const INFO = 30
export const WARN = 40

/** A collector of the app's log lines (pino writes one JSON object a line). */
export function logCollector (): { stream: Writable, lines: LogLine[] } {
  const lines: LogLine[] = []
  const stream = new Writable({
    write (chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString().split('\n')) {
        if (line.trim() !== '') lines.push(JSON.parse(line) as LogLine)
      }
      callback()
    }
  })
  return { stream, lines }
}

// Apps started by each test, closed at its teardown if the test did not.
export const openApps = new WeakMap<Test, Set<FastifyInstance>>()

/**
 * A data directory of the test's own (t.testdir). The teardown that closes
 * the test's apps is registered before the folder is made: tap removes a
 * test's folders after all of its teardowns, so the apps let go of the folder
 * (and its lock) before it is removed.
 */
export function testDataDir (t: Test, content: Record<string, string> = {}): string {
  const apps = new Set<FastifyInstance>()
  openApps.set(t, apps)
  t.teardown(async () => {
    for (const app of apps) await app.close()
  })
  // Owner-only, as the service requires of an existing DATA_DIR.
  const dir = t.testdir(content)
  chmodSync(dir, 0o700)
  return dir
}

/**
 * A data directory whose database is a copy of the migrated template (see
 * embeddedTemplate()): creating one (initdb in WebAssembly, then the
 * migrations) takes seconds on a busy machine, a copy a fraction of that. For
 * the tests that are not about a first start.
 */
export async function migratedDataDir (t: Test, content: Record<string, string> = {}): Promise<string> {
  const dir = testDataDir(t, content)
  await cp(await embeddedTemplate(), join(dir, PGDATA), { recursive: true })
  return dir
}

/** The app as the server builds it, on `dir` with nothing but DATA_DIR set (and `settings`, when given). */
export async function start (t: Test, dir: string, stream?: Writable, settings: Record<string, string> = {}, appOptions: { clock?: () => number, keyPollMs?: number } = {}): Promise<FastifyInstance> {
  const apps = openApps.get(t)
  if (apps === undefined) throw new Error('call testDataDir(t) first')
  const env = { ...settings, DATA_DIR: dir, LOG_LEVEL: 'silent' }
  const config = loadConfig(env, { dataDirKey: ensureDataDirSigningKey(env) })
  const app = Fastify({ ...options, logger: stream === undefined ? false : { level: 'info', stream } })
  apps.add(app)
  app.addHook('onClose', async () => { apps.delete(app) })
  await app.register(serviceApp, { config, ...appOptions })
  await app.ready()
  return app
}

/** A client with a secret, created in the app's embedded database (bcrypt cost 10: fast). */
export async function createClient (app: FastifyInstance, id: string, extra: { scopes?: string[], rateLimit?: number } = {}): Promise<{ id: string, secret: string, authorization: string }> {
  const secret = `${id}-secret`
  await insertClientRow(app.db, { id, secret, ...extra }, 10)
  return { id, secret, authorization: basicAuth(id, secret) }
}

export interface TokenBody {
  access_token: string
  refresh_token: string
  token_type: string
  expires_in: number
}

export function tokens (t: Test, res: LightMyRequestResponse, what: string): TokenBody {
  t.equal(res.statusCode, 200, `${what}: 200`, { body: res.body })
  return res.json() as TokenBody
}

export async function revoke (app: FastifyInstance, authorization: string, token: string): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/oauth/revoke', headers: { ...FORM, authorization }, payload: form({ token }) })
}

export async function introspect (app: FastifyInstance, authorization: string, token: string): Promise<LightMyRequestResponse> {
  return await app.inject({ method: 'POST', url: '/oauth/introspect', headers: { ...FORM, authorization }, payload: form({ token }) })
}

export async function jwksKids (app: FastifyInstance): Promise<string[]> {
  const res = await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })
  return (res.json() as { keys: Array<{ kid: string }> }).keys.map((key) => key.kid)
}

export const mode = (path: string): string => (statSync(path).mode & 0o777).toString(8)
