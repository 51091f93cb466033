import { createPublicKey, generateKeyPairSync } from 'node:crypto'
import { existsSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'tap'
import { ensureDataDirSigningKey, loadConfig, loadSettings, type Config } from '../plugins/config.ts'
import { generateRsaKeyPair, testKeys } from './helper.ts'
import { configError } from './helpers/config-error.ts'

// The smallest environment loadConfig accepts.
function minimalEnv (extra: Record<string, string> = {}): Record<string, string> {
  return {
    DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/postgres',
    REDIS_URL: 'redis://127.0.0.1:6379',
    JWT_PRIVATE_KEY: testKeys.privateKey,
    ...extra
  }
}

function spki (key: Config['publicKey']): string {
  if (key === undefined) throw new Error('no public key')
  return key.export({ type: 'spki', format: 'der' }).toString('base64')
}

function pkcs8 (key: Config['privateKey']): string {
  if (key === undefined) throw new Error('no private key')
  return key.export({ type: 'pkcs8', format: 'der' }).toString('base64')
}

test('defaults', async (t) => {
  const config = loadConfig(minimalEnv())
  t.equal(config.issuer, 'http://localhost:8080', 'the issuer is the public URL, itself made of SERVER_PORT')
  t.equal(config.issuerSource, 'default')
  t.equal(config.publicUrl, 'http://localhost:8080')
  t.equal(config.shutdownDelayMs, 5000, 'with a PostgreSQL server, a delay for load balancers')
  t.equal(config.audience, 'api')
  t.equal(config.algorithm, 'RS256')
  t.equal(config.accessTokenTtl, 3600)
  t.equal(config.refreshTokenTtl, 604800)
  t.equal(config.refreshTokenBytes, 32)
  t.equal(config.refreshTokenClientAuth, 'required')
  t.equal(config.dpopProofMaxAge, 60, 'a DPoP proof may be a minute old')
  t.equal(config.dpopNonceRequired, false, 'DPoP nonces are not required')
  t.equal(config.port, 8080)
  t.equal(config.databaseUrl, 'postgres://postgres@127.0.0.1:5432/postgres')
  t.equal(config.redisUrl, 'redis://127.0.0.1:6379')
  t.equal(spki(config.publicKey), spki(createPublicKey(testKeys.publicKey)), 'public key derived from the private key')
})

test('without JWT_ISSUER the issuer is the public URL: PUBLIC_URL, else http://localhost:SERVER_PORT', async (t) => {
  t.match(loadConfig(minimalEnv({ SERVER_PORT: '3000' })), { issuer: 'http://localhost:3000', publicUrl: 'http://localhost:3000', issuerSource: 'default' })
  t.match(loadConfig(minimalEnv({ PUBLIC_URL: 'https://auth.example.com/' })), { issuer: 'https://auth.example.com', publicUrl: 'https://auth.example.com', issuerSource: 'PUBLIC_URL' },
    'no trailing slash: the issuer is compared byte for byte')
  t.match(loadConfig(minimalEnv({ JWT_ISSUER: 'session-service', PUBLIC_URL: 'https://auth.example.com' })), { issuer: 'session-service', publicUrl: 'https://auth.example.com', issuerSource: 'JWT_ISSUER' },
    'JWT_ISSUER wins, as the original service\'s deployments set it')
})

test('SHUTDOWN_DELAY: 5 s with a PostgreSQL server, none on the embedded database (no other instance can take over)', async (t) => {
  t.equal(loadConfig(minimalEnv()).shutdownDelayMs, 5000)
  const { DATABASE_URL: _unused, ...embedded } = minimalEnv()
  t.equal(loadSettings(embedded).shutdownDelayMs, 0)
  t.equal(loadSettings({ ...embedded, SHUTDOWN_DELAY: '2s' }).shutdownDelayMs, 2000, 'a value set is kept')
  t.throws(() => loadSettings({ SHUTDOWN_DELAY: 'soon' }), { name: 'ConfigError', message: /^SHUTDOWN_DELAY: / })
})

test('an explicit environment is the only source: process.env is not read', async (t) => {
  // loadConfig(env) is documented as a function of env; a variable that only
  // the test process happens to have must not change the result.
  const saved = { JWT_ISSUER: process.env.JWT_ISSUER, JWT_EXPIRY: process.env.JWT_EXPIRY }
  process.env.JWT_ISSUER = 'from-process-env'
  process.env.JWT_EXPIRY = '5s'
  t.teardown(() => {
    for (const [name, value] of Object.entries(saved)) {
      if (value === undefined) Reflect.deleteProperty(process.env, name)
      else process.env[name] = value
    }
  })
  const config = loadConfig(minimalEnv())
  t.equal(config.issuer, 'http://localhost:8080')
  t.equal(config.accessTokenTtl, 3600)
})

test('durations are read as seconds', async (t) => {
  const cases: Array<[string, number]> = [
    ['3600s', 3600],
    ['15m', 900],
    ['1h', 3600],
    ['7d', 604800],
    ['90', 90]
  ]
  for (const [value, seconds] of cases) {
    t.equal(loadConfig(minimalEnv({ JWT_EXPIRY: value })).accessTokenTtl, seconds, `JWT_EXPIRY=${value}`)
    t.equal(loadConfig(minimalEnv({ REFRESH_TOKEN_EXPIRY: value })).refreshTokenTtl, seconds, `REFRESH_TOKEN_EXPIRY=${value}`)
  }
})

test('an invalid duration names JWT_EXPIRY', async (t) => {
  for (const value of ['1 hour', '-5s', '0s', 'abc']) {
    const err = configError(minimalEnv({ JWT_EXPIRY: value }))
    t.equal(err.variable, 'JWT_EXPIRY', `JWT_EXPIRY=${value}: variable`)
    t.match(err.message, /^JWT_EXPIRY: /, `JWT_EXPIRY=${value}: message`)
  }
})

test('with DATABASE_URL, a missing JWT_PRIVATE_KEY is named first in the message', async (t) => {
  const env = minimalEnv()
  Reflect.deleteProperty(env, 'JWT_PRIVATE_KEY')
  const err = configError(env)
  t.equal(err.variable, 'JWT_PRIVATE_KEY')
  t.ok(err.message.startsWith('JWT_PRIVATE_KEY: '), `message starts with the name (${err.message})`)
  t.match(err.message, /keys generate/, 'and says how to make one')
})

/** What a starting service does: the data directory's key step, then loadConfig. */
function startConfig (env: Record<string, string>): Config {
  return loadConfig(env, { dataDirKey: ensureDataDirSigningKey(env) })
}

test('without DATABASE_URL and REDIS_URL: the embedded mode, with a key generated once in DATA_DIR', async (t) => {
  const dataDir = join(t.testdir({}), 'data')
  const notYet = configError({ DATA_DIR: dataDir })
  t.equal(notYet.variable, 'DATA_DIR', 'loadConfig alone reads: a data directory without a key is refused')
  t.notOk(existsSync(dataDir), 'and loadConfig writes nothing, not even the folder')
  const first = startConfig({ DATA_DIR: dataDir, DATABASE_URL: '', REDIS_URL: '  ' })
  t.equal(first.databaseUrl, undefined, 'an empty DATABASE_URL means none')
  t.equal(first.redisUrl, undefined, 'a blank REDIS_URL means none')
  t.equal(first.dataDir, dataDir)
  t.same(first.signingKeySource, { kind: 'data-dir', path: join(dataDir, 'signing-key.pem'), generated: true })
  t.equal(statSync(dataDir).mode & 0o777, 0o700, 'the data directory is owner-only')
  t.equal(statSync(join(dataDir, 'signing-key.pem')).mode & 0o777, 0o600, 'the key file is owner-only')
  t.equal(first.privateKey?.asymmetricKeyDetails?.modulusLength, 2048, 'an RSA 2048 key for RS256')

  const second = startConfig({ DATA_DIR: dataDir })
  t.same(second.signingKeySource, { kind: 'data-dir', path: join(dataDir, 'signing-key.pem'), generated: false }, 'reused, not generated again')
  t.equal(pkcs8(second.privateKey), pkcs8(first.privateKey), 'the same key')

  const err = configError({ DATA_DIR: dataDir, JWT_ALGORITHM: 'ES256' })
  t.match(err.message, /ES256 needs an EC P-256 key/, 'a saved key of another algorithm is refused, not replaced')

  const es = startConfig({ DATA_DIR: join(dataDir, 'es'), JWT_ALGORITHM: 'ES256' })
  t.equal(es.privateKey?.asymmetricKeyDetails?.namedCurve, 'prime256v1', 'ES256 gets a P-256 key')
  const configured = startConfig({ DATA_DIR: join(dataDir, 'configured'), JWT_PRIVATE_KEY: testKeys.privateKey })
  t.same(configured.signingKeySource, { kind: 'environment' }, 'a configured key wins')
  t.notOk(existsSync(join(dataDir, 'configured', 'signing-key.pem')), 'and nothing is written')
})

test('PEM text with literal \\n sequences is accepted', async (t) => {
  const flatPrivate = testKeys.privateKey.replace(/\n/g, '\\n')
  const flatPublic = testKeys.publicKey.replace(/\n/g, '\\n')
  t.notMatch(flatPrivate, /\n/, 'the flattened key has no newline')
  const config = loadConfig(minimalEnv({ JWT_PRIVATE_KEY: flatPrivate, JWT_PUBLIC_KEY: flatPublic }))
  const reference = loadConfig(minimalEnv())
  t.equal(pkcs8(config.privateKey), pkcs8(reference.privateKey))
  t.equal(spki(config.publicKey), spki(reference.publicKey))
})

test('a .env file in the working directory is read, signing key included', async (t) => {
  // server.ts calls loadConfig(process.env, { dotenv: true }); .env.example
  // documents putting the PEM (with literal \n) in .env.
  const dir = t.testdir({
    '.env': [
      'DATABASE_URL=postgres://postgres@127.0.0.1:5432/from_dotenv',
      'REDIS_URL=redis://127.0.0.1:6379',
      'JWT_ISSUER=from-dotenv',
      `JWT_PRIVATE_KEY=${testKeys.privateKey.trim().replace(/\n/g, '\\n')}`
    ].join('\n') + '\n'
  })
  t.chdir(dir)
  const config = loadConfig({}, { dotenv: true })
  t.equal(config.databaseUrl, 'postgres://postgres@127.0.0.1:5432/from_dotenv')
  t.equal(config.issuer, 'from-dotenv')
  t.equal(pkcs8(config.privateKey), pkcs8(loadConfig(minimalEnv()).privateKey))
})

test('loadSettings: the same schema without keys, .env and DATA_DIR taken from the folder given (the CLI\'s working folder)', async (t) => {
  const dir = t.testdir({ '.env': 'DATA_DIR=state\nBCRYPT_COST=11\nJWT_ALGORITHM=EdDSA\n' })
  const settings = loadSettings({ CLIENT_CACHE_TTL: '1m' }, { dotenv: true, cwd: dir })
  t.equal(settings.dataDir, join(dir, 'state'), 'a relative DATA_DIR starts at that folder')
  t.equal(settings.bcryptCost, 11, 'BCRYPT_COST from .env')
  t.equal(settings.algorithm, 'EdDSA', 'JWT_ALGORITHM from .env')
  t.equal(settings.clientCacheTtl, 60, 'the environment besides .env')
  t.notOk(existsSync(join(dir, 'state')), 'no key, so nothing written')
  t.equal(loadSettings({}).bcryptCost, 12, 'BCRYPT_COST: 12 by default')
  t.throws(() => loadSettings({ JWT_ALGORITHM: 'HS256' }), { name: 'ConfigError', message: 'JWT_ALGORITHM: must be one of RS256, ES256, EdDSA' }, 'the algorithm list of the schema')
  t.throws(() => loadSettings({ BCRYPT_COST: '9' }), { name: 'ConfigError', message: /^BCRYPT_COST: / }, 'a bad value names its variable')
})

test('keys are read from the files named by *_FILE', async (t) => {
  const dir = t.testdir({ 'private.pem': testKeys.privateKey, 'public.pem': testKeys.publicKey })
  const env = minimalEnv({ JWT_PRIVATE_KEY_FILE: join(dir, 'private.pem'), JWT_PUBLIC_KEY_FILE: join(dir, 'public.pem') })
  Reflect.deleteProperty(env, 'JWT_PRIVATE_KEY')
  const config = loadConfig(env)
  const reference = loadConfig(minimalEnv())
  t.equal(pkcs8(config.privateKey), pkcs8(reference.privateKey))
  t.equal(spki(config.publicKey), spki(reference.publicKey))
})

test('JWT_PRIVATE_KEY and JWT_PRIVATE_KEY_FILE together are refused', async (t) => {
  const dir = t.testdir({ 'private.pem': testKeys.privateKey })
  const err = configError(minimalEnv({ JWT_PRIVATE_KEY_FILE: join(dir, 'private.pem') }))
  t.equal(err.variable, 'JWT_PRIVATE_KEY')
  t.match(err.message, /^JWT_PRIVATE_KEY: /)
  t.match(err.message, /JWT_PRIVATE_KEY_FILE/)
})

test('an unreadable key file names JWT_PRIVATE_KEY_FILE', async (t) => {
  const dir = t.testdir({})
  const env = minimalEnv({ JWT_PRIVATE_KEY_FILE: join(dir, 'does-not-exist.pem') })
  Reflect.deleteProperty(env, 'JWT_PRIVATE_KEY')
  const err = configError(env)
  t.equal(err.variable, 'JWT_PRIVATE_KEY_FILE')
  t.match(err.message, /^JWT_PRIVATE_KEY_FILE: /)
})

test('a public key of another pair is refused', async (t) => {
  const other = generateRsaKeyPair()
  const err = configError(minimalEnv({ JWT_PUBLIC_KEY: other.publicKey }))
  t.equal(err.variable, 'JWT_PUBLIC_KEY')
  t.equal(err.message, 'JWT_PUBLIC_KEY: does not match JWT_PRIVATE_KEY')
})

test('key text that is not PEM is refused', async (t) => {
  const privateErr = configError(minimalEnv({ JWT_PRIVATE_KEY: 'not a key at all' }))
  t.equal(privateErr.variable, 'JWT_PRIVATE_KEY')
  t.match(privateErr.message, /^JWT_PRIVATE_KEY: /)
  const publicErr = configError(minimalEnv({ JWT_PUBLIC_KEY: '-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n' }))
  t.equal(publicErr.variable, 'JWT_PUBLIC_KEY')
  t.match(publicErr.message, /^JWT_PUBLIC_KEY: /)
})

test('an EC key with the default RS256 is refused', async (t) => {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const err = configError(minimalEnv({ JWT_PRIVATE_KEY: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() }))
  t.equal(err.variable, 'JWT_PRIVATE_KEY')
  t.match(err.message, /^JWT_PRIVATE_KEY: /)
})

test('a 1024-bit RSA key is refused', async (t) => {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 1024 })
  const err = configError(minimalEnv({ JWT_PRIVATE_KEY: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() }))
  t.equal(err.variable, 'JWT_PRIVATE_KEY')
  t.match(err.message, /^JWT_PRIVATE_KEY: /)
})

test('out-of-range or invalid settings name their variable', async (t) => {
  const cases: Array<[string, string]> = [
    ['REFRESH_TOKEN_LENGTH', '8'],
    ['REFRESH_TOKEN_CLIENT_AUTH', 'maybe'],
    ['SERVER_PORT', 'abc']
  ]
  for (const [name, value] of cases) {
    const err = configError(minimalEnv({ [name]: value }))
    t.equal(err.variable, name, `${name}=${value}: variable`)
    t.ok(err.message.startsWith(`${name}: `), `${name}=${value}: message starts with the name (${err.message})`)
  }
})

test('DPoP settings: the proof age as a duration of at most an hour, nonces on or off', async (t) => {
  const config = loadConfig(minimalEnv({ DPOP_PROOF_MAX_AGE: '2m', DPOP_NONCE_REQUIRED: 'true' }))
  t.equal(config.dpopProofMaxAge, 120)
  t.equal(config.dpopNonceRequired, true)
  t.equal(configError(minimalEnv({ DPOP_PROOF_MAX_AGE: '2h' })).message, 'DPOP_PROOF_MAX_AGE: must be at most 3600s')
  t.equal(configError(minimalEnv({ DPOP_PROOF_MAX_AGE: '0' })).variable, 'DPOP_PROOF_MAX_AGE')
  t.equal(configError(minimalEnv({ DPOP_NONCE_REQUIRED: 'maybe' })).variable, 'DPOP_NONCE_REQUIRED')
})

test('the admin listener: loopback port 9090 by default, never the public port, a scope of RFC 6749 syntax', async (t) => {
  const defaults = loadSettings({})
  t.equal(defaults.adminHost, '127.0.0.1')
  t.equal(defaults.adminPort, 9090)
  t.equal(defaults.adminScope, 'session-service:admin')
  t.equal(loadSettings({ ADMIN_PORT: '0', SERVER_PORT: '0' }).adminPort, 0, 'both 0: two ports the system picks')
  t.throws(() => loadSettings({ ADMIN_PORT: '8080' }), { name: 'ConfigError', message: 'ADMIN_PORT: must differ from SERVER_PORT (8080)' })
  t.throws(() => loadSettings({ ADMIN_PORT: '70000' }), { name: 'ConfigError', message: /^ADMIN_PORT: / })
  t.throws(() => loadSettings({ ADMIN_SCOPE: 'two scopes' }), { name: 'ConfigError', message: /^ADMIN_SCOPE: "two scopes" is not a valid scope/ })
})
