// The operator's commands on signing keys kept in the database
// (KEY_STORE=database), run in this process through main(argv, io): against
// a PostgreSQL server beside a running app, whose JWKS and tokens follow each
// change once it reads the keys; and against the embedded database, through
// the running service's control socket or opened by the CLI itself.
import { createPublicKey, randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { createConnection } from 'node:net'
import { userInfo } from 'node:os'
import { join } from 'node:path'
import { test, type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { build, decodeJwt, insertClient, issueTokens, needs } from './helper.ts'
import { cli, failed, parsed, succeeded, type CliRun } from './helpers/cli.ts'
import { createClient, jwksKids, migratedDataDir, start } from './embedded/apps.ts'

const KEK = randomBytes(32).toString('base64')
const STORED = { KEY_STORE: 'database', KEY_ENCRYPTION_KEY: KEK }
const ISO_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/
const KID = /^[A-Za-z0-9_-]{43}$/
const ACTOR = `cli:${userInfo().username}`
const SECRET = 'stored-keys-client-secret'
const POLL_NOTE = 'session-service: running instances serve the change within a second (each reads the keys twice a second)\n'
const VIEW_FIELDS = ['activate_after', 'activated_at', 'algorithm', 'created_at', 'kid', 'public_jwk', 'public_key_pem', 'remove_after', 'retired_at', 'state']

interface KeyView {
  kid: string
  algorithm: string
  state: string
  created_at: string
  activate_after: string | null
  activated_at: string | null
  retired_at: string | null
  remove_after: string | null
  public_jwk: Record<string, string>
  public_key_pem: string
}

interface Service {
  app: FastifyInstance
  keyPublishAheadMs: number
  env: Record<string, string>
  cwd: string
  run: (args: string[], env?: Record<string, string>) => Promise<CliRun>
}

/** The app with its keys in a database of its own (read only when refresh() is called), a client, and the CLI on the same settings. */
async function storedKeysService (t: Test): Promise<Service> {
  const { app, config, databaseUrl } = await build(t, { env: STORED, unset: ['JWT_PRIVATE_KEY', 'JWT_PUBLIC_KEY'], keyPollMs: 0 })
  await insertClient(databaseUrl, { id: 'svc', secret: SECRET })
  const env = { DATABASE_URL: databaseUrl, ...STORED }
  const cwd = t.testdir({})
  return { app, keyPublishAheadMs: config.keyPublishAhead * 1000, env, cwd, run: async (args, other = env) => await cli(t, args, { env: other, cwd }) }
}

const signingKid = async (app: FastifyInstance): Promise<unknown> => decodeJwt((await issueTokens(app, 'svc', SECRET)).access_token).header.kid

async function listed (t: Test, run: Service['run']): Promise<KeyView[]> {
  const res = await run(['keys', 'list', '--json'])
  succeeded(t, res, 'keys list --json')
  return parsed<KeyView[]>(t, res, 'keys list --json')
}

/** The ISO time printed after `marker` on the first line that has it. */
function timeAfter (text: string, marker: string): number {
  const match = new RegExp(`${marker} (\\S+?)(?:[,;\\s]|$)`, 'm').exec(text)
  return Date.parse(match?.[1] ?? '')
}

test('PostgreSQL: list shows the key the service signs with; rotate publishes a next key, and rotating again reuses it', { skip: needs.postgres }, async (t) => {
  const { app, keyPublishAheadMs, run } = await storedKeysService(t)
  const current = app.keys.kid
  t.equal(await signingKid(app), current, 'the service signs with its stored key')

  let res = await run(['keys', 'list'])
  succeeded(t, res, 'keys list')
  let lines = res.stdout.trimEnd().split('\n')
  t.match(lines[0], /^KID\s+ALG\s+STATE\s+CREATED\s+WHEN$/, 'the header')
  t.equal(lines.length, 2, 'one stored key')
  t.match(lines[1], new RegExp(`^${current}\\s+RS256\\s+current\\s+\\S+Z\\s+signing since \\S+Z$`), 'the current key, since when it signs')

  const [key] = await listed(t, run)
  t.strictSame(Object.keys(key ?? {}).sort(), VIEW_FIELDS, 'list --json: the fields of a key')
  t.match(key, { kid: current, algorithm: 'RS256', state: 'current', created_at: ISO_TIME, activated_at: ISO_TIME, activate_after: null, retired_at: null, remove_after: null })
  const published = (await app.inject('/.well-known/jwks.json')).json().keys[0]
  t.strictSame(key?.public_jwk, published, 'its public JWK is the one the JWKS publishes')
  const fromPem = createPublicKey(key?.public_key_pem ?? '').export({ format: 'jwk' })
  t.equal(fromPem.n, published.n, 'public_key_pem is the same public key (SPKI PEM)')
  t.notMatch(JSON.stringify(key), /PRIVATE|"d":/, 'no private part')

  const before = Date.now()
  res = await run(['keys', 'rotate'])
  const after = Date.now()
  t.equal(res.code, 0, 'keys rotate: exit 0', { stderr: res.stderr })
  const next = /^key (\S+) \(RS256\) made and published from now; it signs from \S+, once published KEY_PUBLISH_AHEAD \(10800s\)$/m.exec(res.stdout)?.[1] ?? ''
  t.match(next, KID, 'rotate names the new key', { stdout: res.stdout })
  const signsFrom = timeAfter(res.stdout, 'signs from')
  t.ok(signsFrom >= before + keyPublishAheadMs - 1 && signsFrom <= after + keyPublishAheadMs, 'it signs once published KEY_PUBLISH_AHEAD', { stdout: res.stdout })
  t.equal(res.stderr, POLL_NOTE, 'says when running instances see it')

  await app.keyRing?.refresh()
  t.ok((await jwksKids(app)).includes(next), 'the app publishes the next key')
  t.equal(await signingKid(app), current, 'and still signs with the current one')

  res = await run(['keys', 'list'])
  lines = res.stdout.trimEnd().split('\n')
  t.equal(lines.length, 3, 'two stored keys')
  t.match(lines[2], new RegExp(`^${next}\\s+RS256\\s+next\\s+\\S+Z\\s+signs from ${new Date(signsFrom).toISOString()}$`), 'the next key, from when it signs')

  res = await run(['keys', 'rotate', '--json'])
  t.equal(res.code, 0, 'a second keys rotate: exit 0')
  t.strictSame(parsed(t, res, 'keys rotate --json'), {
    kid: next, algorithm: 'RS256', state: 'next', created: false, activate_after: new Date(signsFrom).toISOString(), retired: null, retired_remove_after: null
  }, 'the waiting key is reused, on its schedule')
  t.strictSame((await listed(t, run)).map((stored) => [stored.kid, stored.state]), [[current, 'current'], [next, 'next']], 'no second next key')

  res = await run(['keys', 'rotate', '--algorithm', 'ES256'])
  t.match(failed(t, res, 1, 'rotate to another algorithm while a next key waits'), new RegExp(`^session-service: the next key ${next} \\(RS256\\) is waiting to sign; retire it first`), 'says to retire it first')
  res = await run(['keys', 'rotate', '--algorithm', 'HS256'])
  t.equal(failed(t, res, 2, 'keys rotate --algorithm HS256'), 'session-service: --algorithm must be one of RS256, ES256, EdDSA (see session-service keys rotate --help)')
})

test('PostgreSQL: rotate --now signs at once and retires the current key; retire refuses what the life cycle forbids; history names the operator', { skip: needs.postgres }, async (t) => {
  const { app, run } = await storedKeysService(t)
  const old = app.keys.kid

  let res = await run(['keys', 'rotate', '--now'])
  t.equal(res.code, 0, 'keys rotate --now: exit 0', { stderr: res.stderr })
  const lines = res.stdout.trimEnd().split('\n')
  const now = /^key (\S+) \(RS256\) signs from now$/.exec(lines[0] ?? '')?.[1] ?? ''
  t.match(now, KID, 'says which key signs now', { stdout: res.stdout })
  t.match(lines[1], new RegExp(`^key ${old} retired: published until \\S+Z, when the last token it signed has expired$`), 'and which retired, until when')
  t.equal(res.stderr, `session-service: gateways that cached the JWKS before ${now} was published refuse its tokens until they fetch it again\n${POLL_NOTE}`, 'warns of the gateways\' caches')

  await app.keyRing?.refresh()
  t.equal(await signingKid(app), now, 'the app signs with the new key')
  t.strictSame((await jwksKids(app)).sort(), [old, now].sort(), 'and still publishes the retired one')
  const keys = await listed(t, run)
  t.match(keys, [{ kid: now, state: 'current' }, { kid: old, state: 'retired', retired_at: ISO_TIME, remove_after: ISO_TIME }], 'list: the new current key, the old one retired')

  res = await run(['keys', 'retire', '--', now])
  t.match(failed(t, res, 1, 'retire the current key'), new RegExp(`^session-service: ${now} is the signing key; a rotation makes another key sign first \\(at once with now: \`keys rotate --now\``), 'refused: rotate instead')
  res = await run(['keys', 'retire', '--', old])
  t.match(failed(t, res, 1, 'retire a retired key without --now'), new RegExp(`^session-service: ${old} is retired already and leaves the JWKS at \\S+Z, once its last token has expired; retiring it with now \\(\`--now\`, \\{"now":true\\}\\) removes it at once`), 'refused: it leaves by itself')
  await app.keyRing?.refresh()
  t.ok((await jwksKids(app)).includes(old), 'the refused retirement changed nothing')

  // A kid may start with "-": written after "--", it is not taken for an option.
  const unknown = `-${'A'.repeat(42)}`
  res = await run(['keys', 'retire', '--', unknown])
  t.equal(failed(t, res, 1, 'retire an unknown kid'), `session-service: no signing key ${unknown}`)
  res = await run(['keys', 'retire', 'not-a-kid'])
  t.equal(failed(t, res, 2, 'retire a malformed kid'), 'session-service: a kid is 43 base64url characters, as `keys list` shows (see session-service keys retire --help)')

  res = await run(['keys', 'retire', '--now', '--json', '--', old])
  t.equal(res.code, 0, 'keys retire --now: exit 0', { stderr: res.stderr })
  t.strictSame(parsed(t, res, 'keys retire --json'), { kid: old, outcome: 'removed', remove_after: null })
  await app.keyRing?.refresh()
  t.strictSame(await jwksKids(app), [now], 'the removed key is gone from the JWKS')

  res = await run(['keys', 'history'])
  succeeded(t, res, 'keys history')
  const rows = res.stdout.trimEnd().split('\n')
  t.match(rows[0], /^AT\s+KID\s+ACTION\s+ACTOR\s+DETAILS$/, 'the header')
  t.match(rows[1], new RegExp(`^\\S+Z\\s+${old}\\s+removed\\s+${ACTOR}\\s+reason=removed before its tokens expired`), 'the removal, by the operator')
  res = await run(['keys', 'history', '--json'])
  const events = parsed<Array<{ kid: string, action: string, actor: string, at: string }>>(t, res, 'keys history --json')
  t.strictSame(events.map((event) => [event.action, event.kid, event.actor]), [
    ['removed', old, ACTOR], ['activated', now, ACTOR], ['retired', old, ACTOR], ['created', now, ACTOR],
    ['activated', old, 'scheduler'], ['created', old, 'scheduler']
  ], 'each step, newest first, with who took it')
  t.ok(events.every((event) => ISO_TIME.test(event.at)), 'ISO times')
  res = await run(['keys', 'history', '--limit', '2', '--json'])
  t.equal(parsed<unknown[]>(t, res, 'keys history --limit 2').length, 2, '--limit bounds the events')
})

test('PostgreSQL: the commands refuse with KEY_STORE=settings; rotate needs the service\'s KEY_ENCRYPTION_KEY only to make a key', { skip: needs.postgres }, async (t) => {
  const { app, env, run } = await storedKeysService(t)
  const settingsMode = { DATABASE_URL: env.DATABASE_URL ?? '' }
  for (const args of [['keys', 'list'], ['keys', 'rotate'], ['keys', 'retire', '--', app.keys.kid], ['keys', 'history']]) {
    const res = await run(args, settingsMode)
    t.equal(failed(t, res, 1, `${args.slice(0, 2).join(' ')} with KEY_STORE=settings`),
      `session-service: KEY_STORE is settings: keys come from JWT_PRIVATE_KEY (or the data directory) in this mode, and \`${args.slice(0, 2).join(' ')}\` works on keys kept in the database; set KEY_STORE=database (see the README's section on key rotation)`)
  }

  const noKek = { DATABASE_URL: env.DATABASE_URL ?? '', KEY_STORE: 'database' }
  let res = await run(['keys', 'list'], noKek)
  succeeded(t, res, 'keys list without KEY_ENCRYPTION_KEY')
  res = await run(['keys', 'rotate'], noKek)
  t.equal(failed(t, res, 1, 'keys rotate without KEY_ENCRYPTION_KEY'),
    'session-service: KEY_ENCRYPTION_KEY: is required to make a signing key (or a path in KEY_ENCRYPTION_KEY_FILE): give the key-encryption key the service seals its keys with')
  res = await run(['keys', 'rotate'], { ...noKek, KEY_ENCRYPTION_KEY: randomBytes(32).toString('base64') })
  t.equal(failed(t, res, 1, 'keys rotate with another KEY_ENCRYPTION_KEY'),
    `session-service: KEY_ENCRYPTION_KEY: does not decrypt the stored signing key ${app.keys.kid}; a key sealed with it would not open where the service runs: give the key-encryption key the service uses`)
  t.equal((await listed(t, run)).length, 1, 'no key was made')
  res = await run(['keys', 'rotate', '--json'], { ...noKek, KEY_ENCRYPTION_KEY: randomBytes(32).toString('base64'), KEY_ENCRYPTION_KEY_PREVIOUS: KEK })
  t.equal(res.code, 0, 'while the key-encryption key changes, the previous one opening the stored keys is enough', { stderr: res.stderr })
  await run(['keys', 'retire', '--', String(parsed(t, res, 'keys rotate during a change of key-encryption key').kid)])

  res = await run(['keys', 'rotate', '--json'])
  const next = String(parsed(t, res, 'keys rotate').kid)
  res = await run(['keys', 'rotate', '--now', '--json'], noKek)
  t.equal(res.code, 0, 'with a next key waiting, rotate --now needs no KEY_ENCRYPTION_KEY', { stderr: res.stderr })
  t.match(parsed(t, res, 'keys rotate --now --json'), { kid: next, state: 'current', created: false, retired: app.keys.kid })
  await app.keyRing?.refresh()
  t.equal(await signingKid(app), next, 'the app signs with it')
})

/** One line to the control socket and its answer. */
async function controlLine (path: string, line: unknown): Promise<Record<string, unknown>> {
  const socket = createConnection(path)
  socket.setEncoding('utf8')
  socket.write(`${JSON.stringify(line)}\n`)
  let text = ''
  for await (const chunk of socket) {
    text += chunk as string
    if (text.includes('\n')) break
  }
  socket.destroy()
  return JSON.parse(text) as Record<string, unknown>
}

test('embedded, service running: keys rotate --now goes through the control socket, and the service serves the new key when the command returns', async (t) => {
  // A short folder name: a Unix socket path is limited to about 100 bytes.
  t.testdirName = join(import.meta.dirname, '..', '.tap', 'fixtures', `keys-run-${process.pid}`)
  const dataDir = await migratedDataDir(t)
  const service = await start(t, dataDir, undefined, STORED)
  const client = await createClient(service, 'svc')
  const old = service.keys.kid
  // The data directory itself: the commands write nothing where they run.
  const cwd = dataDir
  // No KEY_ENCRYPTION_KEY: the service makes the key with its own.
  const env = { DATA_DIR: dataDir, KEY_STORE: 'database' }

  const socket = join(dataDir, 'control.sock')
  for (const [line, error] of [
    [{ id: 1, op: 'rotate-keys', immediately: 'yes', actor: 'x' }, 'rotate-keys: immediately must be true or false'],
    [{ id: 2, op: 'rotate-keys', immediately: true, actor: 'x', algorithm: 'HS256' }, 'rotate-keys: algorithm is not a signing algorithm'],
    [{ id: 3, op: 'rotate-keys', immediately: true, actor: '' }, 'rotate-keys: actor must be 1 to 255 characters'],
    [{ id: 4, op: 'rotate-keys', immediately: true, actor: 'x', kid: old }, 'rotate-keys: unexpected field kid'],
    [{ id: 5, op: 'retire-key', immediately: true, actor: 'x', kid: "x' OR 1=1" }, 'retire-key: kid must be 43 base64url characters']
  ] as const) {
    t.strictSame(await controlLine(socket, line), { id: line.id, error }, `a malformed ${line.op} line is refused: ${error}`)
  }
  t.strictSame(await jwksKids(service), [old], 'and changes nothing')

  const res = await cli(t, ['keys', 'rotate', '--now', '--json'], { env, cwd })
  t.equal(res.code, 0, 'keys rotate --now: exit 0', { stderr: res.stderr })
  const rotation = parsed(t, res, 'keys rotate --now --json')
  t.match(rotation, { kid: KID, state: 'current', created: true, retired: old, retired_remove_after: ISO_TIME })
  t.equal(res.stderr, `session-service: gateways that cached the JWKS before ${String(rotation.kid)} was published refuse its tokens until they fetch it again\n`, 'the warning, and no note about polls: the service serves it already')
  t.strictSame((await jwksKids(service)).sort(), [old, String(rotation.kid)].sort(), 'the JWKS right after the command: the new key and the retired one')
  const token = await issueTokens(service, client.id, client.secret)
  t.equal(decodeJwt(token.access_token).header.kid, rotation.kid, 'the next token is signed with the new key')

  const retire = await cli(t, ['keys', 'retire', '--', String(rotation.kid)], { env, cwd })
  t.match(failed(t, retire, 1, 'retire the current key through the socket'), /is the signing key; a rotation makes another key sign first \(at once with now: `keys rotate --now`/, 'the life cycle\'s refusal, as from a PostgreSQL server')
  const history = await cli(t, ['keys', 'history', '--json'], { env, cwd })
  t.strictSame(parsed<Array<{ action: string, actor: string }>>(t, history, 'keys history').slice(0, 3).map((event) => [event.action, event.actor]),
    [['activated', ACTOR], ['retired', ACTOR], ['created', ACTOR]], 'recorded with the operator\'s name')
})

test('embedded, no service running: the CLI opens the database itself, and the service started later signs with the key it made', async (t) => {
  const dataDir = await migratedDataDir(t)
  const cwd = dataDir
  const env = { DATA_DIR: dataDir, ...STORED }
  let res = await cli(t, ['keys', 'list'], { env, cwd })
  succeeded(t, res, 'keys list of a database without keys')
  t.equal(res.stdout, 'no stored keys: the service makes one when it starts with KEY_STORE=database\n')

  res = await cli(t, ['keys', 'rotate', '--now', '--algorithm', 'ES256', '--json'], { env, cwd })
  t.equal(res.code, 0, 'keys rotate --now with the embedded database opened by the CLI: exit 0', { stderr: res.stderr })
  const rotation = parsed(t, res, 'keys rotate --json')
  t.match(rotation, { kid: KID, algorithm: 'ES256', state: 'current', created: true, retired: null })
  t.equal(res.stderr, `session-service: gateways that cached the JWKS before ${String(rotation.kid)} was published refuse its tokens until they fetch it again\n`, 'the warning only: no instance runs')
  t.notOk(existsSync(join(dataDir, 'service.lock')), 'the lock on DATA_DIR is released when the command ends')

  const service = await start(t, dataDir, undefined, STORED)
  t.equal(service.keys.kid, rotation.kid, 'the service signs with the key the CLI made')
  t.equal(service.keys.algorithm, 'ES256', 'of the algorithm asked for')
})
