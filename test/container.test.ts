// The container image, replayed without a Docker engine. Each stage of the
// Dockerfile is rebuilt in a temporary folder from its own COPY, ENV and RUN
// lines (the build context filtered by .dockerignore); then the final stage
// runs the way docker-compose.yml runs it: the migrate command once, the CMD
// as the service, the HEALTHCHECK against it, and SIGTERM as `docker stop`
// sends it. A Dockerfile that leaves out a file the built code needs, or lets
// a dev dependency into the image, fails here.
import { createPublicKey, verify as verifySignature, type JsonWebKey } from 'node:crypto'
import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t, { type Test } from 'tap'
import { basicAuth, createDatabase, createRedisPrefix, decodeJwt, freePort, insertClient, needs, PROJECT_DIR, TEST_REDIS_URL, testKeys, waitForHealth } from './helper.ts'
import { MIGRATE_COMMAND, readDockerfile, splitOptions, execForm, instructions, buildImage, ContainerProcess, type Image } from './container/image.ts'

// The production install can take a minute on a cold npm cache.
t.setTimeout(300_000)

const stages = readDockerfile(readFileSync(join(PROJECT_DIR, 'Dockerfile'), 'utf8'))
const finalStage = stages.at(-1)

t.test('the Dockerfile: multi-stage on the Node.js LTS, non-root, exec-form CMD, a HEALTHCHECK on /live', async (t) => {
  t.ok(stages.length >= 2, `multi-stage (${stages.map((stage) => stage.name).join(', ')})`)
  const bases = new Set(stages.map((stage) => stage.base))
  t.equal(bases.size, 1, `one Node.js image for building and running (${[...bases].join(', ')})`)
  const base = /^node:(lts|\d+)[\w.-]*$/.exec(finalStage?.base ?? '')
  t.ok(base !== null && (base[1] === 'lts' || Number(base[1]) >= 24), `the current Node.js LTS (${finalStage?.base ?? 'none'})`)
  t.match(finalStage?.base, /slim/, 'a slim image')

  const user = instructions(finalStage, 'USER').at(-1)?.args
  t.ok(user !== undefined && !/^(root|0)(:|$)/.test(user), `runs as a user other than root (${user ?? 'none'})`)

  const cmd = instructions(finalStage, 'CMD').at(-1)?.args ?? ''
  t.strictSame(execForm(cmd), ['node', 'dist/server.js'], 'exec-form CMD: node itself receives SIGTERM')
  t.strictSame(instructions(finalStage, 'ENTRYPOINT'), [], 'no ENTRYPOINT (and so no shell) in front of the CMD')

  const healthcheck = splitOptions(instructions(finalStage, 'HEALTHCHECK').at(-1)?.args ?? '').rest
  t.match(healthcheck, /^CMD\s+\[/, 'a HEALTHCHECK in exec form')
  t.match(healthcheck, /\/live\b/, 'that asks /live, which depends on neither PostgreSQL nor Redis')
  t.match(healthcheck, /ADMIN_PORT/, 'on the admin port')
})

/** The image holds the production dependencies and the built code, and nothing else. */
async function checkContents (t: Test, image: Image): Promise<void> {
  await t.test('holds the production dependencies only', async (t) => {
    t.notOk(existsSync(join(image.dir, 'node_modules', 'tap')), 'no node_modules/tap')
    t.notOk(existsSync(join(image.dir, 'node_modules', 'typescript')), 'no node_modules/typescript')
    const lock = JSON.parse(readFileSync(join(PROJECT_DIR, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> }
    const devInstalled = Object.entries(lock.packages)
      .filter(([path, entry]) => path.startsWith('node_modules/') && entry.dev === true && existsSync(join(image.dir, path)))
      .map(([path]) => path)
    t.strictSame(devInstalled, [], 'no package that the lock file marks dev-only')
    const pkg = JSON.parse(readFileSync(join(PROJECT_DIR, 'package.json'), 'utf8')) as { dependencies: Record<string, string> }
    const missing = Object.keys(pkg.dependencies).filter((name) => !existsSync(join(image.dir, 'node_modules', name, 'package.json')))
    t.strictSame(missing, [], 'every production dependency')
  })

  await t.test('holds what the built code loads at run time, and nothing of the source tree', async (t) => {
    for (const path of ['package.json', 'dist/server.js', 'dist/app.js', 'dist/cli/migrate.js', 'dist/workers/bcrypt.js']) {
      t.ok(existsSync(join(image.dir, path)), path)
    }
    const migrations = readdirSync(join(PROJECT_DIR, 'migrations')).sort()
    t.strictSame(existsSync(join(image.dir, 'migrations')) ? readdirSync(join(image.dir, 'migrations')).sort() : [], migrations,
      'migrations/ beside package.json, where the built code looks for it')
    for (const path of ['test', 'bench', 'keys', 'data', '.env', '.git', 'plugins', 'tsconfig.json']) {
      t.notOk(existsSync(join(image.dir, path)), `no ${path}`)
    }
  })
}

/** A client inserted by SQL gets an RS256 token, naming `issuer`, that the published key verifies. */
async function checkTokens (t: Test, base: string, databaseUrl: string, issuer: string): Promise<void> {
  const clientId = 'svc-container'
  const secret = 'container secret'
  await insertClient(databaseUrl, { id: clientId, secret })
  const tokenRes = await fetch(`${base}/oauth/token`, {
    method: 'POST',
    headers: { authorization: basicAuth(clientId, secret), 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'client_credentials' }).toString()
  })
  t.equal(tokenRes.status, 200, 'client_credentials answers 200 (the secret checked on the bcrypt worker from dist/workers)')
  const { access_token: accessToken } = await tokenRes.json() as { access_token: string }
  const { header, payload } = decodeJwt(accessToken)
  t.equal(header.alg, 'RS256', 'the access token is RS256')
  t.type(header.kid, 'string', 'with a kid')
  t.match(payload, { sub: clientId, iss: issuer, aud: 'api' })

  const jwksRes = await fetch(`${base}/.well-known/jwks.json`)
  t.equal(jwksRes.status, 200, 'the JWKS answers 200')
  const jwks = await jwksRes.json() as { keys: Array<JsonWebKey & { kid?: string }> }
  const jwk = jwks.keys.find((key) => key.kid === header.kid)
  t.ok(jwk, 'the JWKS publishes the token\'s kid')
  if (jwk !== undefined) {
    const publicKey = createPublicKey({ key: jwk, format: 'jwk' })
    const [signedHeader = '', signedPayload = '', signature = ''] = accessToken.split('.')
    t.ok(verifySignature('RSA-SHA256', Buffer.from(`${signedHeader}.${signedPayload}`), publicKey, Buffer.from(signature, 'base64url')),
      'the published key verifies the signature')
    t.ok(publicKey.export({ type: 'spki', format: 'der' }).equals(createPublicKey(testKeys.privateKey).export({ type: 'spki', format: 'der' })),
      'and is the public half of JWT_PRIVATE_KEY')
  }
}

t.test('the image, replayed: migrate, serve tokens as the CMD, answer the HEALTHCHECK, exit 0 on SIGTERM', { skip: needs.postgres || needs.redis }, async (t) => {
  const started = Date.now()
  const root = await mkdtemp(join(tmpdir(), 'session-service-image-'))
  t.teardown(async () => await rm(root, { recursive: true, force: true }))
  const image = await buildImage(root, stages)
  t.comment(`image built in ${Date.now() - started} ms`)

  await checkContents(t, image)

  const databaseUrl = await createDatabase(t, { empty: true })
  const port = await freePort()
  const adminPort = await freePort()
  const base = `http://127.0.0.1:${port}`
  // The container's whole environment: the image's ENV and what compose sets.
  const containerEnv = {
    PATH: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin',
    HOME: root,
    ...image.env,
    NODE_ENV: 'production',
    DATABASE_URL: databaseUrl
  }
  t.equal(image.env.NODE_ENV, 'production', 'the image sets NODE_ENV=production')

  const migrate = new ContainerProcess(t, image, MIGRATE_COMMAND, containerEnv)
  const migrated = await migrate.exitWithin(30_000)
  t.strictSame(migrated, { code: 0, signal: null }, `the migrate command exits 0 (${migrate.stderr})`)
  t.match(migrate.stdout, /migrate: applied \d+/, 'and applies the migrations')

  const serviceEnv = {
    ...containerEnv,
    REDIS_URL: TEST_REDIS_URL,
    REDIS_KEY_PREFIX: createRedisPrefix(t),
    JWT_PRIVATE_KEY: testKeys.privateKey,
    SERVER_HOST: '127.0.0.1',
    SERVER_PORT: String(port),
    ADMIN_PORT: String(adminPort),
    // docker-compose.yml: the migrate service has done it.
    MIGRATE_ON_START: 'false'
  }
  const service = new ContainerProcess(t, image, image.cmd, serviceEnv)

  const healthStatus = await waitForHealth(base, () => service.running, 30_000)
  t.equal(healthStatus, 200, `GET /health answers 200 (stderr: ${service.stderr})`)
  if (healthStatus !== 200) return

  const healthy = new ContainerProcess(t, image, image.healthcheck, serviceEnv)
  t.strictSame(await healthy.exitWithin(10_000), { code: 0, signal: null }, 'the HEALTHCHECK command exits 0')

  // No JWT_ISSUER nor PUBLIC_URL: the default issuer.
  await checkTokens(t, base, databaseUrl, `http://localhost:${port}`)
  t.match(service.logLines().find((line) => typeof line.createClient === 'string'), {
    createClient: 'node dist/cli/index.js clients create --name demo --scope read',
    // The image's ADMIN_HOST is 0.0.0.0: loopback is one of its addresses.
    apiDocs: `http://localhost:${adminPort}/docs`
  }, 'the start guide names the image\'s CLI')

  const stoppedAt = Date.now()
  service.child.kill('SIGTERM')
  const exit = await service.exitWithin(15_000)
  t.strictSame(exit, { code: 0, signal: null }, `exit code 0 ${Date.now() - stoppedAt} ms after SIGTERM (stderr: ${service.stderr})`)
  t.ok(service.logLines().some((line) => line.msg === 'shutting down' && line.signal === 'SIGTERM'), 'a graceful "shutting down" log line')

  const unhealthy = new ContainerProcess(t, image, image.healthcheck, serviceEnv)
  t.match(await unhealthy.exitWithin(10_000), { code: 1 }, 'the HEALTHCHECK command fails once the service is gone')
  t.comment(`image replayed in ${Date.now() - started} ms`)
})
