// A deployment of the original service moves here with its .env unchanged:
// the same variable names (and the issuer it had by default), and clients
// inserted with its plain SQL.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'tap'
import { decodeJwt } from 'jose'
import {
  basicAuth, createDatabase, createRedisPrefix, freePort, insertClient, needs, PROJECT_DIR, runnerEnv,
  SPAWNED_SERVICE_DEFAULTS, TEST_REDIS_URL, TestProcess, testKeys, waitForHealth
} from './helper.ts'

/** A .env value on one line: PEM newlines as literal \n, which the service reads back. */
const oneLine = (pem: string): string => pem.trim().replace(/\n/g, '\\n')

test('the original service\'s .env, names and values as they were, starts the service and issues its tokens', { skip: needs.postgres || needs.redis }, async (t) => {
  const databaseUrl = await createDatabase(t)
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), 'session-service-original-env-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  writeFileSync(join(dir, '.env'), [
    `DATABASE_URL=${databaseUrl}`,
    `REDIS_URL=${TEST_REDIS_URL}`,
    `JWT_PRIVATE_KEY=${oneLine(testKeys.privateKey)}`,
    `JWT_PUBLIC_KEY=${oneLine(testKeys.publicKey)}`,
    'JWT_ISSUER=session-service',
    'JWT_AUDIENCE=api',
    'JWT_EXPIRY=3600s',
    'REFRESH_TOKEN_EXPIRY=604800s',
    'REFRESH_TOKEN_LENGTH=32',
    `SERVER_PORT=${port}`,
    'LOG_LEVEL=info'
  ].join('\n') + '\n')
  // Beside the .env, only what keeps test files apart: their own Redis keys, an admin port of the system's choice.
  const env = { ...runnerEnv(), ...SPAWNED_SERVICE_DEFAULTS, REDIS_KEY_PREFIX: createRedisPrefix(t) }
  const server = new TestProcess(t, process.execPath, [...process.execArgv, join(PROJECT_DIR, 'server.ts')], { cwd: dir, env })
  const base = `http://127.0.0.1:${port}`
  t.equal(await waitForHealth(base, () => server.running, 60_000), 200, `GET /health answers 200 (stderr: ${server.stderr})`)

  // The original service's operators' SQL, with a bcrypt hash.
  await insertClient(databaseUrl, { id: 'billing-service', secret: 'billing secret', rateLimit: 100 })
  const res = await fetch(`${base}/oauth/token`, {
    method: 'POST',
    headers: { authorization: basicAuth('billing-service', 'billing secret'), 'content-type': 'application/x-www-form-urlencoded' },
    body: 'grant_type=client_credentials'
  })
  t.equal(res.status, 200, 'a client_credentials token for the client inserted with plain SQL')
  const body = await res.json() as { access_token: string, refresh_token: string, expires_in: number }
  const claims = decodeJwt(body.access_token)
  t.match(claims, { iss: 'session-service', aud: 'api', sub: 'billing-service' }, 'the claims the original service issued')
  t.equal((claims.exp ?? 0) - (claims.iat ?? 0), 3600, 'JWT_EXPIRY')
  t.equal(body.expires_in, 3600)
  t.equal(Buffer.from(body.refresh_token, 'base64url').length, 32, 'REFRESH_TOKEN_LENGTH random bytes')

  const discovery = await (await fetch(`${base}/.well-known/openid-configuration`)).json() as { issuer: string, token_endpoint: string }
  t.equal(discovery.issuer, 'session-service', 'discovery names the configured issuer')
  t.equal(discovery.token_endpoint, `http://localhost:${port}/oauth/token`, 'endpoints on http://localhost:SERVER_PORT, SERVER_PORT from .env')

  server.child.kill('SIGINT')
  t.strictSame(await server.exitWithin(20_000), { code: 0, signal: null }, 'stops cleanly')
})
