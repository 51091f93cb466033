// A Redis Cluster as a managed one is run: six nodes that speak TLS only
// (clients, replication and the cluster bus), a certificate from a CA of this
// test, and the service's ACL user (docs/security.md, plus cluster|slots, cluster|info and readonly) on
// every node. The token flow, the revocations and the CLI's announcement go
// through it; Redis refuses nothing; a CA that the nodes' certificate does not
// chain to stops the start with one line naming REDIS_URL. In the cluster run
// only (`npm run test:cluster`): it starts a cluster of its own.
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { test } from 'tap'
import { Redis } from 'ioredis'
import { backends, basicAuth, build, form, FORM, insertClient, issueTokens, needs, runEntry, tokenRequest, verify } from './helper.ts'
import { PrivateRedisCluster } from './helpers/redis-cluster.ts'
import { makeTestCertificates, SERVICE_REDIS_COMMANDS } from './helpers/tls.ts'

const PASSWORD = `pw-${randomBytes(12).toString('hex')}`
const PREFIX = `ss-cluster-tls:${process.pid}:${randomBytes(4).toString('hex')}:`
const CLIENT = { id: 'svc-cluster-tls', secret: 'cluster-tls-secret' }
const AUTH = { authorization: basicAuth(CLIENT.id, CLIENT.secret) }

/** Runs `command` on every node of the cluster, each through a connection of its own; returns the answers. */
async function onEveryNode (cluster: PrivateRedisCluster, ...command: string[]): Promise<unknown[]> {
  return await Promise.all(cluster.ports.map(async (port) => {
    const node = new Redis({ host: '127.0.0.1', port, ...cluster.redisOptions, maxRetriesPerRequest: 0 })
    try {
      return await node.call(command[0] ?? '', ...command.slice(1))
    } finally {
      node.disconnect()
    }
  }))
}

test('Redis Cluster over TLS with an ACL user: tokens, refresh, revocations and the CLI', { skip: needs.postgres }, async (t) => {
  const certificateDir = mkdtempSync(join(tmpdir(), 'ss-cluster-tls-'))
  t.teardown(() => rmSync(certificateDir, { recursive: true, force: true }))
  const certificates = makeTestCertificates(certificateDir)
  const { caFile, certFile, keyFile } = certificates
  // Fixed ports: a node's cluster bus listens on its port + 10000.
  const cluster = new PrivateRedisCluster(t, 7500, { tls: { caFile, certFile, keyFile } })
  await cluster.start()
  const admin = await cluster.connect()
  t.teardown(() => admin.disconnect())
  await onEveryNode(cluster, 'ACL', 'SETUSER', 'svc', 'on', `>${PASSWORD}`, 'resetkeys', `~${PREFIX}*`, 'resetchannels', `&${PREFIX}*`,
    '-@all', ...SERVICE_REDIS_COMMANDS.map((command) => `+${command}`), '+cluster|slots', '+cluster|info', '+readonly')
  const firstPort = cluster.ports[0] ?? 0
  const env = {
    REDIS_URL: `rediss://svc:${PASSWORD}@127.0.0.1:${firstPort}`,
    REDIS_CLUSTER_NODES: cluster.nodes,
    REDIS_TLS_CA_FILE: caFile,
    REDIS_KEY_PREFIX: PREFIX
  }

  const wrongCa = await build(t, { redisPrefix: PREFIX, env: { ...env, REDIS_TLS_CA_FILE: certificates.otherCaFile } }).then(() => '', (err: Error) => err.message)
  t.match(wrongCa, /^REDIS_URL: [^\n]*certificate[^\n]*$/, `a CA the nodes' certificate does not chain to stops the start (${wrongCa})`)
  t.notMatch(wrongCa, PASSWORD, 'without the password')

  await onEveryNode(cluster, 'ACL', 'SETUSER', 'svc-no-cluster', 'on', `>${PASSWORD}`, 'resetkeys', `~${PREFIX}*`, 'resetchannels', `&${PREFIX}*`,
    '-@all', ...SERVICE_REDIS_COMMANDS.map((command) => `+${command}`))
  const started = Date.now()
  const noClusterCommands = await build(t, { redisPrefix: PREFIX, env: { ...env, REDIS_URL: `rediss://svc-no-cluster:${PASSWORD}@127.0.0.1:${firstPort}` } })
    .then(() => '', (err: Error) => err.message)
  t.match(noClusterCommands, /^REDIS_URL: the Redis user may not run a command the service needs [^\n]*NOPERM[^\n]*$/,
    `a user without CLUSTER INFO and SLOTS stops the start with one line (${noClusterCommands})`)
  t.ok(Date.now() - started < 8000, 'at once, not after the 10 s wait for Redis')
  await onEveryNode(cluster, 'ACL', 'LOG', 'RESET')

  const { app, databaseUrl } = await build(t, { redisPrefix: PREFIX, env })
  await insertClient(databaseUrl, CLIENT)
  const tokens = await issueTokens(app, CLIENT.id, CLIENT.secret)
  t.equal((await verify(app, tokens.access_token)).json().valid, true, 'the access token verifies')
  const refreshed = await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token }, AUTH)
  t.equal(refreshed.statusCode, 200, 'the refresh token is exchanged', { body: refreshed.body })
  const revoked = await app.inject({ method: 'POST', url: '/oauth/revoke', headers: { ...FORM, ...AUTH }, payload: form({ token: refreshed.json().refresh_token }) })
  t.equal(revoked.statusCode, 200, 'the new session is revoked by its refresh token')
  t.same((await verify(app, refreshed.json().access_token)).json(), { valid: false, error: 'revoked' }, 'and its access token reads revoked')
  const reused = await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: tokens.refresh_token }, AUTH)
  t.equal(reused.json().error, 'invalid_grant', 'the used refresh token is refused')

  const keys = (await Promise.all(admin.nodes('master').map(async (node) => await node.keys('*')))).flat()
  t.ok(keys.some((key) => key.startsWith(`${PREFIX}{revocations}`)), 'the revocations carry their hash tag')
  t.ok(keys.every((key) => key.startsWith(PREFIX)), 'everything the service wrote is under REDIS_KEY_PREFIX')
  const clients = (await onEveryNode(cluster, 'CLIENT', 'LIST')).join('\n')
  t.match(clients, /name=session-service .*user=svc/, 'the service is connected as the ACL user')
  t.match(clients, /name=session-service-revocations .*user=svc/, 'and so is its subscriber')

  if (backends.postgres) {
    const cli = await runEntry('cli/index.ts', ['clients', 'disable', CLIENT.id], { env: { DATABASE_URL: databaseUrl, ...env }, cwd: t.testdir({}) })
    t.equal(cli.code, 0, 'clients disable succeeds', { stderr: cli.stderr })
    t.equal(cli.stderr, '', 'and reaches the cluster (no note about Redis)')
    let res = await tokenRequest(app, { grant_type: 'client_credentials' }, AUTH)
    for (let i = 0; i < 20 && res.statusCode !== 400; i++) {
      await sleep(50)
      res = await tokenRequest(app, { grant_type: 'client_credentials' }, AUTH)
    }
    t.equal(res.json().error, 'unauthorized_client', 'the running instance refuses the disabled client within a second')
  }
  t.same((await onEveryNode(cluster, 'ACL', 'LOG')).flat(), [], 'no node refused anything: the documented commands, keys and channels suffice')
})
