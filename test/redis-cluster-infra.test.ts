// The cluster run's own tools: a private Redis Cluster starts with three
// masters, loses one to SIGKILL, and serves every key again once a replica
// has taken over; the shared cluster's cleanup removes a prefix from every
// master. Part of `npm run test:cluster` only (it needs redis-server 7 and
// six free ports, 7200 to 7205).
import { randomBytes } from 'node:crypto'
import { test } from 'tap'
import { clusterAnswers, clusterKeys, deleteClusterKeys, PrivateRedisCluster } from './helpers/redis-cluster.ts'

const BASE_PORT = 7200

test('a private cluster survives the loss of a master', async (t) => {
  const cluster = new PrivateRedisCluster(t, BASE_PORT)
  await cluster.start()
  const masters = await cluster.masters()
  t.equal(masters.length, 3, `three masters (${masters.join(', ')})`)
  t.ok(await clusterAnswers(cluster.nodes), 'every node says cluster_state:ok')

  const client = await cluster.connect()
  t.teardown(() => { client.disconnect() })
  // Enough keys that every master holds some.
  const keys = Array.from({ length: 30 }, (_, index) => `infra:${index}`)
  for (const key of keys) await client.set(key, `value of ${key}`)
  t.strictSame(await Promise.all(keys.map(async (key) => await client.get(key))), keys.map((key) => `value of ${key}`), 'every key reads back')

  // WAIT on each master's connection: the replicas hold these writes before the kill.
  const replicated = await Promise.all(client.nodes('master').map(async (master) => await master.call('WAIT', '1', '5000')))
  t.strictSame(replicated, [1, 1, 1], 'each master has its writes on its replica')

  const victim = masters[0] as number
  await cluster.killMaster(victim)
  await cluster.waitForFailover()
  const after = await cluster.masters()
  t.equal(after.length, 3, `three masters again (${after.join(', ')})`)
  t.notOk(after.includes(victim), `the killed node (${victim}) is not among them`)

  await client.set('infra:after', 'written after the failover')
  t.equal(await client.get('infra:after'), 'written after the failover', 'a write after the failover reads back')
  t.strictSame(await Promise.all(keys.map(async (key) => await client.get(key))), keys.map((key) => `value of ${key}`),
    'every key written before the failover is still served')
})

test('the cleanup of a prefix reaches every master', async (t) => {
  const cluster = new PrivateRedisCluster(t, BASE_PORT)
  await cluster.start()
  const client = await cluster.connect()
  t.teardown(() => { client.disconnect() })
  const prefix = `ss-test:${randomBytes(4).toString('hex')}:`
  for (let index = 0; index < 30; index++) await client.set(`${prefix}${index}`, 'x')
  await client.set('other:kept', 'x')
  t.equal((await clusterKeys(client, prefix)).length, 30, 'the keys are found on every master')
  await deleteClusterKeys(prefix, cluster.nodes)
  t.strictSame(await clusterKeys(client, prefix), [], 'none is left')
  t.equal(await client.get('other:kept'), 'x', 'a key outside the prefix stays')
})
