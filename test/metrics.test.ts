import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { backends, basicAuth, build, decodeJwt, freePort, insertClient, issueTokens, sample, samplesOf, tokenRequest, verify, injectAdmin } from './helper.ts'

const { version } = JSON.parse(readFileSync(join(import.meta.dirname, '..', 'package.json'), 'utf8')) as { version: string }

async function scrape (app: FastifyInstance): Promise<LightMyRequestResponse> {
  return await injectAdmin(app, '/metrics')
}

test('GET /metrics: counters, cache lookups, dependency gauges and route latency', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-metrics', secret: 'metrics-secret' })

  const tokens = await issueTokens(app, 'svc-metrics', 'metrics-secret')
  const refused = await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-metrics', 'wrong-secret') })
  t.equal(refused.statusCode, 401, 'the wrong secret is refused')
  t.equal((await verify(app, tokens.access_token)).json().valid, true, 'the token verifies')
  t.equal((await app.inject({ method: 'GET', url: '/no/such/path/42' })).statusCode, 404)

  const res = await scrape(app)
  t.equal(res.statusCode, 200)
  t.equal(res.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8')
  t.equal(res.headers['cache-control'], 'no-store')
  const text = res.body

  t.equal(sample(text, 'session_service_tokens_issued_total{grant_type="client_credentials"}'), 1, 'one client_credentials token')
  t.equal(sample(text, 'session_service_tokens_issued_total{grant_type="refresh_token"}'), 0, 'the refresh series exists at 0')
  t.equal(sample(text, 'session_service_oauth_errors_total{route="/oauth/token",error="invalid_client"}'), 1, 'the failed authentication')
  t.equal(sample(text, 'session_service_oauth_errors_total{route="__unknown__",error="not_found"}'), 1, 'an unknown URL is one series')
  t.notMatch(text, /no\/such\/path/, 'the raw URL never becomes a label')

  // The token request read PostgreSQL; the refused one found the record in memory.
  t.equal(sample(text, 'session_service_client_cache_lookups_total{result="memory"}'), 1)
  t.equal(sample(text, 'session_service_client_cache_lookups_total{result="shared"}'), 0)
  t.equal(sample(text, 'session_service_client_cache_lookups_total{result="miss"}'), 1)
  t.equal(sample(text, 'session_service_client_cache_hit_ratio'), 0.5)

  t.equal(sample(text, 'session_service_dependency_up{dependency="postgresql"}'), 1)
  // Without a Redis server there is no Redis to report: no series.
  t.equal(sample(text, 'session_service_dependency_up{dependency="redis"}'), backends.redis ? 1 : undefined)

  t.equal(sample(text, 'http_request_duration_seconds_count{method="POST",route="/oauth/token",status_code="200"}'), 1)
  t.equal(sample(text, 'http_request_duration_seconds_count{method="POST",route="/oauth/token",status_code="401"}'), 1)
  t.equal(sample(text, 'http_request_duration_seconds_count{method="POST",route="/oauth/verify",status_code="200"}'), 1)
  t.notMatch(text, /route="\/metrics"/, 'scrapes are not timed')
  t.match(text, /^process_cpu_user_seconds_total \d/m, 'process metrics are included')
  t.notOk(text.includes(tokens.access_token) || text.includes(tokens.refresh_token), 'no token in the scrape')
  t.notMatch(text, /metrics-secret|eyJ/, 'no secret or JWT in the scrape')

  // Each compare (the token request's and the wrong secret's) waited once and ran once.
  t.equal(sample(text, 'session_service_bcrypt_compare_duration_seconds_count'), sample(text, 'session_service_bcrypt_compares_total'), 'one duration per compare')
  t.equal(sample(text, 'session_service_bcrypt_queue_wait_seconds_count'), sample(text, 'session_service_bcrypt_compares_total'), 'one wait per compare')
  t.ok((sample(text, 'session_service_bcrypt_compare_duration_seconds_sum') ?? 0) > 0, 'compares take time')
  t.ok((sample(text, 'session_service_dependency_duration_seconds_count{dependency="postgresql"}') ?? 0) >= 1, 'the client lookup was timed')
  t.equal((sample(text, 'session_service_dependency_duration_seconds_count{dependency="redis"}') ?? 0) > 0, backends.redis, 'Redis calls are timed when there is Redis')
  t.equal(sample(text, 'session_service_dependency_errors_total{dependency="postgresql",kind="unreachable"}'), 0, 'no failed call')
  t.equal(sample(text, 'session_service_dependency_errors_total{dependency="redis",kind="timeout"}'), backends.redis ? 0 : undefined)
  t.equal(sample(text, `session_service_build_info{version="${version}",node_version="${process.versions.node}"}`), 1, 'the build')
  const { kid, alg } = decodeJwt(tokens.access_token).header
  t.equal(sample(text, `session_service_signing_key_info{kid="${String(kid)}",alg="${String(alg)}"}`), 1, 'the signing key')
  t.strictSame(samplesOf(text, 'session_service_client_tokens_issued_total'), [], 'no per-client series unless asked for')

  const again = await scrape(app)
  t.equal(sample(again.body, 'session_service_tokens_issued_total{grant_type="client_credentials"}'), 1, 'a scrape counts nothing')
})

test('every app instance has its own registry; a dead PostgreSQL shows as 0', async (t) => {
  const port = await freePort()
  const { app } = await build(t, {
    databaseUrl: `postgres://postgres@127.0.0.1:${port}/postgres`,
    env: { MIGRATE_ON_START: 'false' }
  })
  const started = Date.now()
  const res = await scrape(app)
  const ms = Date.now() - started
  t.equal(res.statusCode, 200)
  t.equal(sample(res.body, 'session_service_dependency_up{dependency="postgresql"}'), 0)
  t.equal(sample(res.body, 'session_service_dependency_up{dependency="redis"}'), backends.redis ? 1 : undefined)
  t.equal(sample(res.body, 'session_service_client_cache_hit_ratio'), 0, 'a ratio of no lookups reads 0')
  t.notMatch(res.body, /^session_service_\S+ nan$/im, 'no series of the service reads NaN')
  t.ok(ms < 1500, `scraped in ${ms} ms`)
})
