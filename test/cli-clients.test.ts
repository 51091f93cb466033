// The operator's command line against a PostgreSQL server, run in this
// process through main(argv, io): what the operator sees (exit codes, stdout
// and stderr, the JSON it prints), what is stored, and that the running app
// honours each change at once (the CLI announces it through Redis).
import { readdirSync } from 'node:fs'
import { setTimeout as sleep } from 'node:timers/promises'
import { test, type Test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { backends, build, decodeJwt, sql, TEST_REDIS_URL, tokenRequest } from './helper.ts'
import { assertTokenError, basic, cli, CLIENT_CREDENTIALS, failed, GENERATED_SECRET, parsed, succeeded } from './helpers/cli.ts'

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
const ISO_TIME = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/
const BCRYPT_HASH = /\$2[aby]\$\d\d\$/
/** The fields of a client as `clients show --json` and `clients list --json` print them. */
const VIEW_FIELDS = ['audiences', 'authentication', 'claims', 'client_id', 'created_at', 'default_scopes', 'dpop_bound_access_tokens', 'grant_types', 'jwks_uri', 'may_exchange', 'name', 'previous_secret_expires_at', 'rate_limit', 'scopes', 'status', 'updated_at']

const needsServers = !backends.postgres
  ? 'needs a PostgreSQL server (none answers)'
  : !backends.redis ? 'needs a Redis server (none answers): changes reach the app through its pub/sub' : false

/**
 * Token requests until one answers `status`, for up to about a second: a
 * change made with the CLI is to reach the running app at once (the
 * announcement travels through Redis, so it may take a few milliseconds).
 */
async function answersWithin (service: FastifyInstance, headers: Record<string, string>, status: number, fields: Record<string, string> = {}): Promise<LightMyRequestResponse> {
  const deadline = Date.now() + 1000
  for (;;) {
    const res = await tokenRequest(service, { ...CLIENT_CREDENTIALS, ...fields }, headers)
    if (res.statusCode === status || Date.now() > deadline) return res
    await sleep(20)
  }
}

/** list, as a table and as JSON, and show: the client as created, and never its secret or hash. */
async function assertListedAndShown (t: Test, options: { env: Record<string, string>, cwd: string }, id: string, secret: string, view: Record<string, unknown>): Promise<void> {
  const [table, listed, shown] = await Promise.all([
    cli(t, ['clients', 'list'], options),
    cli(t, ['clients', 'list', '--json'], options),
    cli(t, ['clients', 'show', id], options)
  ])
  let res = table
  succeeded(t, res, 'clients list')
  const lines = res.stdout.trimEnd().split('\n')
  t.equal(lines.length, 2, 'the table: a header and one client')
  t.match(lines[0], /^CLIENT_ID\s+STATUS\s+NAME\s+SCOPES\s+AUDIENCES$/, 'the table header')
  t.match(lines[1], new RegExp(`^${id}\\s+enabled\\s+x\\s+read write\\s+other$`), 'the client\'s row')
  t.notOk(res.stdout.includes(secret), 'the list shows no secret')

  res = listed
  succeeded(t, res, 'clients list --json')
  t.strictSame(parsed(t, res, 'clients list --json'), [view], 'list --json: the client as created, without its secret')

  res = shown
  succeeded(t, res, 'clients show')
  t.match(res.stdout, new RegExp(`^client_id:\\s+${id}$`, 'm'), 'show: the id')
  t.match(res.stdout, /^name:\s+x$/m, 'show: the name')
  t.match(res.stdout, /^status:\s+enabled$/m, 'show: the status')
  t.match(res.stdout, /^scopes:\s+read write$/m, 'show: the scopes')
  t.match(res.stdout, /^default_scopes:\s+read$/m, 'show: the default scope')
  t.match(res.stdout, /^audiences:\s+other$/m, 'show: the audience')
  t.match(res.stdout, /^rate_limit:\s+5$/m, 'show: the rate limit')
  t.match(res.stdout, /^authentication:\s+client_secret$/m, 'show: how it authenticates')
  t.notOk(res.stdout.includes(secret), 'show prints no secret')
  t.notMatch(res.stdout, /secret:|hash/i, 'show prints no secret or hash field')
  t.notMatch(res.stdout, BCRYPT_HASH, 'show prints no bcrypt hash')
}

test('PostgreSQL: a client created, rotated, disabled, enabled and deleted with the CLI; the running app follows each step at once', { skip: needsServers }, async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t)
  const cwd = t.testdir({})
  const env = { DATABASE_URL: databaseUrl, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: redisPrefix }

  // create
  let res = await cli(t, ['clients', 'create', '--name', 'x', '--scope', 'read write', '--default-scope', 'read', '--audience', 'other', '--rate-limit', '5', '--json'], { env, cwd })
  succeeded(t, res, 'clients create --json')
  const created = parsed<Record<string, unknown>>(t, res, 'clients create --json')
  t.strictSame(Object.keys(created).sort(), [...VIEW_FIELDS, 'client_secret'].sort(), 'create prints the client and its secret, nothing else')
  t.match(created.client_id, UUID, 'without --id, the client id is a UUID')
  t.match(created.client_secret, GENERATED_SECRET, 'the secret is 43 base64url characters (32 random bytes)')
  t.match(created, {
    name: 'x',
    status: 'enabled',
    scopes: ['read', 'write'],
    default_scopes: ['read'],
    audiences: ['other'],
    rate_limit: 5,
    authentication: ['client_secret'],
    created_at: ISO_TIME,
    updated_at: ISO_TIME
  }, 'the settings as given')
  t.notMatch(res.stdout, /hash/i, 'no hash field printed')
  t.notMatch(res.stdout, BCRYPT_HASH, 'no bcrypt hash printed')
  const id = String(created.client_id)
  const secret = String(created.client_secret)
  const { client_secret: _shownOnce, ...view } = created

  const [stored] = await sql<{ client_secret_hash: string }>(databaseUrl, 'SELECT client_secret_hash FROM clients WHERE client_id = $1', [id])
  t.match(stored?.client_secret_hash, /^\$2[aby]\$12\$/, 'only a bcrypt hash of the secret is stored')

  // the secret works, with the settings given
  let token = await tokenRequest(app, CLIENT_CREDENTIALS, basic(id, secret))
  t.equal(token.statusCode, 200, 'the printed secret gets a token (Basic)', { body: token.body })
  t.equal(decodeJwt(token.json().access_token).payload.scope, 'read', 'a request naming no scope gets the --default-scope')
  t.equal(token.headers['x-ratelimit-limit'], '5', 'the --rate-limit applies to the client')

  await assertListedAndShown(t, { env, cwd }, id, secret, view)

  // rotate-secret: the old secret is refused at once, the new one works
  res = await cli(t, ['clients', 'rotate-secret', id, '--json'], { env, cwd })
  succeeded(t, res, 'clients rotate-secret --json')
  const rotated = parsed<Record<string, unknown>>(t, res, 'clients rotate-secret --json')
  t.strictSame(Object.keys(rotated).sort(), ['client_id', 'client_secret', 'previous_secret_expires_at'], 'rotate-secret prints the id, the new secret and the end of the grace period')
  t.equal(rotated.previous_secret_expires_at, null, 'without --grace there is no grace period')
  t.equal(rotated.client_id, id, 'the client rotated')
  t.match(rotated.client_secret, GENERATED_SECRET, 'the new secret is 43 base64url characters')
  t.not(rotated.client_secret, secret, 'the new secret differs from the old one')
  const newSecret = String(rotated.client_secret)
  token = await answersWithin(app, basic(id, secret), 401)
  assertTokenError(t, token, 401, 'invalid_client', 'the old secret, right after rotate-secret')
  token = await tokenRequest(app, CLIENT_CREDENTIALS, basic(id, newSecret))
  t.equal(token.statusCode, 200, 'the new secret gets a token', { body: token.body })

  // disable, enable
  res = await cli(t, ['clients', 'disable', id], { env, cwd })
  succeeded(t, res, 'clients disable')
  t.equal(res.stdout, `client ${id} disabled\n`, 'disable says what it did')
  token = await answersWithin(app, basic(id, newSecret), 400)
  assertTokenError(t, token, 400, 'unauthorized_client', 'a token request right after disable')

  res = await cli(t, ['clients', 'enable', id, '--json'], { env, cwd })
  succeeded(t, res, 'clients enable --json')
  t.strictSame(parsed(t, res, 'clients enable --json'), { client_id: id, status: 'enabled' }, 'enable --json: the id and the new status')
  token = await answersWithin(app, basic(id, newSecret), 200, { audience: 'other' })
  t.equal(token.statusCode, 200, 'a token request right after enable gets a token', { body: token.body })
  t.equal(decodeJwt(token.json().access_token).payload.aud, 'other', 'the --audience given at creation is granted')

  // delete
  res = await cli(t, ['clients', 'delete', id], { env, cwd })
  succeeded(t, res, 'clients delete')
  t.equal(res.stdout, `client ${id} deleted\n`, 'delete says what it did')
  token = await answersWithin(app, basic(id, newSecret), 401)
  assertTokenError(t, token, 401, 'invalid_client', 'a token request right after delete')
  res = await cli(t, ['clients', 'show', id], { env, cwd })
  t.equal(failed(t, res, 1, 'clients show of a deleted client'), `session-service: no client "${id}"`, 'show: no such client')

  t.strictSame(readdirSync(cwd), [], 'nothing written into the working folder')
})

test('PostgreSQL: --secret-stdin takes a secret of at most 72 bytes, all of which count', { skip: needsServers }, async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t)
  const cwd = t.testdir({})
  const env = { DATABASE_URL: databaseUrl, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: redisPrefix }
  const secret72 = 'Aa0-'.repeat(18)

  let res = await cli(t, ['clients', 'create', '--name', 'too long', '--id', 'svc-73', '--secret-stdin', '--json'], { env, cwd, stdin: `${secret72}x\n` })
  const refusal = failed(t, res, 2, 'a 73-byte secret on stdin')
  t.match(refusal, /\b73 bytes\b/, 'the message gives the secret\'s length')
  t.match(refusal, /\b72\b/, 'and the limit of 72 bytes')
  t.strictSame(await sql(databaseUrl, 'SELECT client_id FROM clients'), [], 'no client was created')

  res = await cli(t, ['clients', 'create', '--name', 'stdin', '--id', 'svc-72', '--secret-stdin', '--json'], { env, cwd, stdin: `${secret72}\n` })
  succeeded(t, res, 'a 72-byte secret on stdin (and its newline)')
  const created = parsed<Record<string, unknown>>(t, res, 'clients create --secret-stdin --json')
  t.equal(created.client_id, 'svc-72', 'the --id given')
  t.notOk('client_secret' in created, 'a secret the operator gave is not printed back')
  t.notOk(res.stdout.includes(secret72), 'nowhere in the output')

  let token = await tokenRequest(app, CLIENT_CREDENTIALS, basic('svc-72', secret72))
  t.equal(token.statusCode, 200, 'the 72-byte secret gets a token', { body: token.body })
  token = await tokenRequest(app, CLIENT_CREDENTIALS, basic('svc-72', `${secret72.slice(0, 71)}!`))
  assertTokenError(t, token, 401, 'invalid_client', 'the secret with its 72nd byte changed')
})

test('PostgreSQL: --secret-stdin never prints the secret back, as text or JSON, on create and on rotate-secret', { skip: needsServers }, async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t)
  const cwd = t.testdir({})
  const env = { DATABASE_URL: databaseUrl, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: redisPrefix }
  const [first, second, third] = ['first-own-secret-0001', 'second-own-secret-002', 'third-own-secret-0003']

  let res = await cli(t, ['clients', 'create', '--name', 'own', '--id', 'svc-own', '--secret-stdin'], { env, cwd, stdin: `${first}\n` })
  succeeded(t, res, 'clients create --secret-stdin')
  t.match(res.stdout, /^client_secret:\s+\(read from standard input, not shown\)$/m, 'create: the secret line says where it came from')
  t.notOk(res.stdout.includes(first), 'create: the secret is not printed back')
  t.notMatch(res.stdout, /shown this once/, 'create: no reminder to store a secret it did not show')
  t.equal((await tokenRequest(app, CLIENT_CREDENTIALS, basic('svc-own', first))).statusCode, 200, 'the secret read gets a token')

  res = await cli(t, ['clients', 'rotate-secret', 'svc-own', '--grace', '24h', '--secret-stdin'], { env, cwd, stdin: `${second}\n` })
  succeeded(t, res, 'clients rotate-secret --secret-stdin')
  t.match(res.stdout, /^client_id:\s+svc-own\nclient_secret:\s+\(read from standard input, not shown\)\nprevious_secret_expires_at:\s+\S+Z$/m, 'rotate-secret: the same line, among the fields')
  t.notOk(res.stdout.includes(second), 'rotate-secret: the new secret is not printed back')
  t.notMatch(res.stdout, /shown this once/, 'rotate-secret: no reminder to store it')
  t.match(res.stdout, /The previous secret works until /, 'rotate-secret: the grace period, as without --secret-stdin')

  res = await cli(t, ['clients', 'rotate-secret', 'svc-own', '--secret-stdin', '--json'], { env, cwd, stdin: third })
  succeeded(t, res, 'clients rotate-secret --secret-stdin --json')
  t.strictSame(parsed(t, res, 'rotate-secret --secret-stdin --json'), { client_id: 'svc-own', previous_secret_expires_at: null }, 'rotate-secret --json: the id and the grace period, no client_secret')
  t.notOk(res.stdout.includes(third), 'rotate-secret --json: the secret is not printed back')
  t.equal((await answersWithin(app, basic('svc-own', third), 200)).statusCode, 200, 'the last secret read gets a token')
  assertTokenError(t, await answersWithin(app, basic('svc-own', second), 401), 401, 'invalid_client', 'the one before it, rotated without grace')
})

test('PostgreSQL: creating a client with an id that exists fails and leaves the first one alone', { skip: needsServers }, async (t) => {
  const { app, redisPrefix, databaseUrl } = await build(t)
  const cwd = t.testdir({})
  const env = { DATABASE_URL: databaseUrl, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: redisPrefix }

  let res = await cli(t, ['clients', 'create', '--name', 'first', '--id', 'svc-dup', '--json'], { env, cwd })
  succeeded(t, res, 'the first create')
  const secret = String(parsed(t, res, 'clients create --json').client_secret)

  res = await cli(t, ['clients', 'create', '--name', 'second', '--id', 'svc-dup', '--json'], { env, cwd })
  t.equal(failed(t, res, 1, 'the second create with the same --id'), 'session-service: a client "svc-dup" already exists', 'the message: the id is taken')

  t.strictSame(await sql(databaseUrl, 'SELECT name FROM clients'), [{ name: 'first' }], 'the first client is unchanged')
  const token = await tokenRequest(app, CLIENT_CREDENTIALS, basic('svc-dup', secret))
  t.equal(token.statusCode, 200, 'the first client\'s secret still gets a token', { body: token.body })
})

test('PostgreSQL: update changes only the options given, show prints every field but secrets, events tell who did what', { skip: needsServers }, async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t)
  const cwd = t.testdir({})
  const env = { DATABASE_URL: databaseUrl, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: redisPrefix }
  let res = await cli(t, ['clients', 'create', '--name', 'before', '--id', 'svc-upd', '--scope', 'read', '--rate-limit', '5', '--json'], { env, cwd })
  succeeded(t, res, 'clients create')
  const secret = String(parsed(t, res, 'clients create --json').client_secret)
  t.equal((await tokenRequest(app, CLIENT_CREDENTIALS, basic('svc-upd', secret))).statusCode, 200, 'a token before the update (the record is now cached)')

  res = await cli(t, ['clients', 'update', 'svc-upd', '--name', 'after', '--scopes', 'read,write', '--default-scopes', 'write', '--audiences', 'other',
    '--claims', '{"tier":"gold"}', '--jwks-uri', 'https://keys.example/jwks.json', '--grant-types', 'client_credentials'], { env, cwd })
  succeeded(t, res, 'clients update')
  t.match(res.stdout, /^name:\s+after$/m, 'update prints the client')
  res = await cli(t, ['clients', 'show', 'svc-upd', '--json'], { env, cwd })
  succeeded(t, res, 'clients show --json')
  const shown = parsed(t, res, 'clients show --json')
  t.strictSame(Object.keys(shown).sort(), VIEW_FIELDS, 'every field of the view')
  t.match(shown, {
    client_id: 'svc-upd',
    name: 'after',
    scopes: ['read', 'write'],
    default_scopes: ['write'],
    audiences: ['other'],
    rate_limit: 5,
    claims: { tier: 'gold' },
    jwks_uri: 'https://keys.example/jwks.json',
    grant_types: ['client_credentials'],
    authentication: ['client_secret', 'private_key_jwt'],
    previous_secret_expires_at: null
  }, 'the options given changed, the rate limit did not')
  res = await cli(t, ['clients', 'show', 'svc-upd'], { env, cwd })
  t.match(res.stdout, /^claims:\s+\{"tier":"gold"\}$/m, 'show as text: the claims as JSON')
  t.match(res.stdout, /^grant_types:\s+client_credentials$/m, 'show as text: the grant types')
  t.notMatch(res.stdout, BCRYPT_HASH, 'show prints no hash')
  const token = await answersWithin(app, basic('svc-upd', secret), 200)
  t.equal(decodeJwt(token.json().access_token).payload.scope, 'write', 'the running app uses the new default scope at once')

  res = await cli(t, ['clients', 'update', 'svc-upd', '--rate-limit', 'default', '--json'], { env, cwd })
  t.equal(parsed(t, res, 'clients update --rate-limit default').rate_limit, null, '"default" clears the rate limit')

  res = await cli(t, ['clients', 'events', 'svc-upd'], { env, cwd })
  succeeded(t, res, 'clients events')
  const lines = res.stdout.trimEnd().split('\n')
  t.equal(lines.length, 3, 'one line per change')
  t.match(lines[0], /^\d+\s+\S+Z\s+updated\s+cli:\S+\s+rate_limit: 5 -> null$/, 'the newest first, with what changed')
  t.match(lines[1], /updated\s+cli:\S+\s+.*name: "before" -> "after"/, 'the first update')
  t.match(lines[2], /created\s+cli:\S+$/, 'the creation')
  t.notOk(res.stdout.includes(secret), 'no secret in the history')
})

test('PostgreSQL: rotate-secret --grace keeps the old secret working until the time it prints', { skip: needsServers }, async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t)
  const cwd = t.testdir({})
  const env = { DATABASE_URL: databaseUrl, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: redisPrefix }
  let res = await cli(t, ['clients', 'create', '--name', 'x', '--id', 'svc-grace', '--json'], { env, cwd })
  const secret = String(parsed(t, res, 'clients create --json').client_secret)
  res = await cli(t, ['clients', 'rotate-secret', 'svc-grace', '--grace', '24h'], { env, cwd })
  succeeded(t, res, 'clients rotate-secret --grace 24h')
  const newSecret = /^client_secret:\s+(\S+)$/m.exec(res.stdout)?.[1] ?? ''
  t.match(newSecret, GENERATED_SECRET, 'the new secret, printed once')
  const end = /^previous_secret_expires_at:\s+(\S+)$/m.exec(res.stdout)?.[1] ?? ''
  t.ok(Math.abs(Date.parse(end) - Date.now() - 86_400_000) < 60_000, 'the old secret works for 24 hours', { end })
  t.match(res.stdout, /The previous secret works until /, 'and says so')
  t.equal((await answersWithin(app, basic('svc-grace', secret), 200)).statusCode, 200, 'the old secret after the rotation')
  t.equal((await tokenRequest(app, CLIENT_CREDENTIALS, basic('svc-grace', newSecret))).statusCode, 200, 'the new secret')
  const [row] = await sql<{ previous_secret_hash: string }>(databaseUrl, 'SELECT previous_secret_hash FROM clients WHERE client_id = $1', ['svc-grace'])
  t.match(row?.previous_secret_hash, BCRYPT_HASH, 'the old secret is kept only as its hash')

  res = await cli(t, ['clients', 'rotate-secret', 'svc-grace', '--grace', 'none', '--json'], { env, cwd })
  succeeded(t, res, 'clients rotate-secret --grace none')
  t.equal(parsed(t, res, 'rotate-secret --grace none').previous_secret_expires_at, null, 'no grace period')
  assertTokenError(t, await answersWithin(app, basic('svc-grace', newSecret), 401), 401, 'invalid_client', 'the previous secret at once')
})

test('PostgreSQL: --require-dpop on create, --no-require-dpop and --require-dpop on update; the app follows at once', { skip: needsServers }, async (t) => {
  const { app, databaseUrl, redisPrefix } = await build(t)
  const cwd = t.testdir({})
  const env = { DATABASE_URL: databaseUrl, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: redisPrefix }
  let res = await cli(t, ['clients', 'create', '--name', 'dpop', '--id', 'svc-dpop', '--require-dpop', '--json'], { env, cwd })
  succeeded(t, res, 'clients create --require-dpop')
  const created = parsed(t, res, 'clients create --json')
  t.equal(created.dpop_bound_access_tokens, true, 'created requiring DPoP')
  const secret = String(created.client_secret)
  assertTokenError(t, await tokenRequest(app, CLIENT_CREDENTIALS, basic('svc-dpop', secret)), 400, 'invalid_dpop_proof', 'a token request without a proof')

  res = await cli(t, ['clients', 'update', 'svc-dpop', '--no-require-dpop'], { env, cwd })
  succeeded(t, res, 'clients update --no-require-dpop')
  t.match(res.stdout, /^dpop_bound_access_tokens:\s+false$/m, 'update prints the setting')
  t.equal((await answersWithin(app, basic('svc-dpop', secret), 200)).statusCode, 200, 'bearer tokens again, at once')
  res = await cli(t, ['clients', 'update', 'svc-dpop', '--require-dpop', '--json'], { env, cwd })
  t.equal(parsed(t, res, 'clients update --require-dpop').dpop_bound_access_tokens, true, 'required again')
  t.equal((await answersWithin(app, basic('svc-dpop', secret), 400)).statusCode, 400, 'and enforced at once')
  t.match(failed(t, await cli(t, ['clients', 'update', 'svc-dpop', '--require-dpop', '--no-require-dpop'], { env, cwd }), 2, 'both'), /contradict/)
  t.match(failed(t, await cli(t, ['clients', 'create', '--name', 'x', '--no-require-dpop'], { env, cwd }), 2, '--no-require-dpop on create'), /unknown option/)
})

test('PostgreSQL: update and rotate-secret refuse bad input with exit 2, and a rule against the stored client with exit 1', { skip: needsServers }, async (t) => {
  const { databaseUrl, redisPrefix } = await build(t)
  const cwd = t.testdir({})
  const env = { DATABASE_URL: databaseUrl, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: redisPrefix }
  succeeded(t, await cli(t, ['clients', 'create', '--name', 'x', '--id', 'svc-bad', '--scope', 'read', '--json'], { env, cwd }), 'clients create')
  const usageCases: Array<[string[], RegExp]> = [
    [['clients', 'update', 'svc-bad'], /give at least one field to change/],
    [['clients', 'update', 'svc-bad', '--claims', '{"sub":"root"}'], /"sub" is a registered claim/],
    [['clients', 'update', 'svc-bad', '--claims', '[1]'], /--claims must be a JSON object/],
    [['clients', 'update', 'svc-bad', '--jwks-uri', 'http://keys.example/jwks.json'], /jwks_uri: must be an https URL/],
    [['clients', 'update', 'svc-bad', '--grant-types', 'password'], /grant_types/],
    [['clients', 'update', 'svc-bad', '--grant-type', 'password'], /grant_types/],
    [['clients', 'update', 'svc-bad', '--may-exchange', 'caf\u00e9'], /may_exchange\.0: must be client ids/],
    [['clients', 'update', 'svc-bad', '--scopes', 'a', '--default-scopes', 'b'], /"b" is not among scopes/],
    [['clients', 'update', 'svc-bad', '--scopes', 'bad"scope'], /scope tokens/],
    [['clients', 'update', 'svc-bad', '--rate-limit', '0'], /--rate-limit/],
    [['clients', 'rotate-secret', 'svc-bad', '--grace', 'soon'], /--grace must be a duration/],
    [['clients', 'create', '--name', 'x', '--claims', '{"aud":"x"}'], /"aud" is a registered claim/]
  ]
  for (const [args, message] of usageCases) {
    t.match(failed(t, await cli(t, args, { env, cwd }), 2, args.join(' ')), message, args.join(' '))
  }
  t.match(failed(t, await cli(t, ['clients', 'rotate-secret', 'svc-bad', '--secret-stdin'], { env, cwd, stdin: `${'x'.repeat(73)}\n` }), 2, 'a 73-byte secret'), /73 bytes.*72/)
  t.equal(failed(t, await cli(t, ['clients', 'update', 'svc-bad', '--default-scopes', 'write'], { env, cwd }), 1, 'a default scope outside the stored scopes'),
    'session-service: the default scopes must be among the client\'s scopes')
  t.equal(failed(t, await cli(t, ['clients', 'update', 'svc-none', '--name', 'y'], { env, cwd }), 1, 'an unknown client'), 'session-service: no client "svc-none"')
  t.equal(failed(t, await cli(t, ['clients', 'events', 'svc-bad', '--limit', 'x'], { env, cwd }), 2, 'a bad --limit'),
    'session-service: --limit must be a whole number, at least 1 (see session-service clients events --help)')
  t.strictSame(await sql(databaseUrl, 'SELECT action FROM client_events WHERE client_id = $1', ['svc-bad']), [{ action: 'created' }], 'nothing refused was recorded')
})

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange'

/** Token exchanges of `subject` until one answers `status`, for up to about a second (as answersWithin). */
async function exchangeAnswersWithin (service: FastifyInstance, headers: Record<string, string>, subject: string, status: number): Promise<LightMyRequestResponse> {
  const deadline = Date.now() + 1000
  for (;;) {
    const res = await tokenRequest(service, { grant_type: TOKEN_EXCHANGE, subject_token: subject, subject_token_type: 'urn:ietf:params:oauth:token-type:access_token' }, headers)
    if (res.statusCode === status || Date.now() > deadline) return res
    await sleep(20)
  }
}

test('PostgreSQL: --grant-type and --may-exchange enable token exchange, and the running app follows', { skip: needsServers }, async (t) => {
  const { app, redisPrefix, databaseUrl } = await build(t)
  const cwd = t.testdir({})
  const env = { DATABASE_URL: databaseUrl, REDIS_URL: TEST_REDIS_URL, REDIS_KEY_PREFIX: redisPrefix }
  let res = await cli(t, ['clients', 'create', '--name', 'owner', '--id', 'svc-owner', '--json'], { env, cwd })
  const owner = parsed(t, res, 'clients create svc-owner')
  t.strictSame(owner.grant_types, ['client_credentials', 'refresh_token'], 'by default, no token exchange')
  t.strictSame(owner.may_exchange, [], 'and no one\'s tokens')
  res = await cli(t, ['clients', 'create', '--name', 'gateway', '--id', 'svc-gateway', '--grant-type', 'client_credentials', '--grant-type', TOKEN_EXCHANGE,
    '--may-exchange', 'svc-owner', '--json'], { env, cwd })
  const gateway = parsed(t, res, 'clients create --grant-type --may-exchange')
  t.strictSame(gateway.grant_types, ['client_credentials', TOKEN_EXCHANGE], 'the repeated --grant-type')
  t.strictSame(gateway.may_exchange, ['svc-owner'])

  const subject = await tokenRequest(app, CLIENT_CREDENTIALS, basic('svc-owner', String(owner.client_secret)))
  const gatewayAuth = basic('svc-gateway', String(gateway.client_secret))
  const exchanged = await exchangeAnswersWithin(app, gatewayAuth, subject.json().access_token, 200)
  t.equal(exchanged.statusCode, 200, 'the exchange works', { body: exchanged.body })
  t.equal(decodeJwt(exchanged.json().access_token).payload.sub, 'svc-owner')

  res = await cli(t, ['clients', 'show', 'svc-gateway'], { env, cwd })
  t.match(res.stdout, /^may_exchange:\s+svc-owner$/m, 'show as text: may_exchange')
  res = await cli(t, ['clients', 'update', 'svc-gateway', '--may-exchange', '', '--json'], { env, cwd })
  t.strictSame(parsed(t, res, 'update --may-exchange ""').may_exchange, [], '"" empties it')
  assertTokenError(t, await exchangeAnswersWithin(app, gatewayAuth, subject.json().access_token, 400), 400, 'invalid_request', 'the running app refuses at once')

  res = await cli(t, ['clients', 'update', 'svc-gateway', '--may-exchange', 'svc-a,svc-b', '--may-exchange', 'svc-c', '--json'], { env, cwd })
  t.strictSame(parsed(t, res, 'update --may-exchange, repeated and listed').may_exchange, ['svc-a', 'svc-b', 'svc-c'])
  res = await cli(t, ['clients', 'update', 'svc-gateway', '--grant-types', 'client_credentials', '--grant-type', 'refresh_token', '--json'], { env, cwd })
  t.strictSame(parsed(t, res, 'update --grant-types and --grant-type').grant_types, ['client_credentials', 'refresh_token'], 'both options together make the new list')
  assertTokenError(t, await exchangeAnswersWithin(app, gatewayAuth, subject.json().access_token, 400), 400, 'unauthorized_client', 'the grant is no longer allowed')
})
