// The series that count what the token endpoints did: reused refresh
// tokens, revocations by kind, the two kinds of 429, tokens per client with a
// bounded number of series, and bcrypt's queue wait and compare time. Each is
// read through GET /metrics after its event.
import { test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { basicAuth, build, form, FORM, insertClient, issueTokens, sample, samplesOf, scrapeMetrics, tokenRequest } from './helper.ts'

async function revoke (app: FastifyInstance, clientId: string, secret: string, token: string): Promise<LightMyRequestResponse> {
  return await app.inject({
    method: 'POST',
    url: '/oauth/revoke',
    headers: { ...FORM, authorization: basicAuth(clientId, secret) },
    payload: form({ token })
  })
}

async function refresh (app: FastifyInstance, clientId: string, secret: string, refreshToken: string): Promise<LightMyRequestResponse> {
  return await tokenRequest(app, { grant_type: 'refresh_token', refresh_token: refreshToken }, { authorization: basicAuth(clientId, secret) })
}

test('a used refresh token presented again, and revocations by kind', async (t) => {
  const { app, databaseUrl } = await build(t)
  const id = 'svc-events'
  const secret = 'events-secret'
  await insertClient(databaseUrl, { id, secret })
  const REUSES = 'session_service_refresh_token_reuses_total'
  const REVOKED_ACCESS = 'session_service_revocations_total{kind="access_token"}'
  const REVOKED_REFRESH = 'session_service_revocations_total{kind="refresh_token"}'

  const first = await issueTokens(app, id, secret)
  const refreshed = await refresh(app, id, secret, first.refresh_token)
  t.equal(refreshed.statusCode, 200, 'a first refresh')
  let text = await scrapeMetrics(app)
  t.equal(sample(text, REUSES), 0, 'a refresh is no reuse')
  t.equal(sample(text, REVOKED_ACCESS), 0)
  t.equal(sample(text, REVOKED_REFRESH), 0)

  t.equal((await refresh(app, id, secret, first.refresh_token)).statusCode, 400, 'the used token again')
  text = await scrapeMetrics(app)
  t.equal(sample(text, REUSES), 1, 'the reuse is counted')

  const second = await issueTokens(app, id, secret)
  t.equal((await revoke(app, id, secret, second.access_token)).statusCode, 200)
  t.equal((await revoke(app, id, secret, second.refresh_token)).statusCode, 200)
  t.equal((await revoke(app, id, secret, 'no-such-refresh-token')).statusCode, 200, 'an unknown token is ignored')
  text = await scrapeMetrics(app)
  t.equal(sample(text, REVOKED_ACCESS), 1, 'one access token revoked')
  t.equal(sample(text, REVOKED_REFRESH), 1, 'one refresh token (its session) revoked; the unknown one is not counted')
  t.equal(sample(text, REUSES), 1)
})

test('the failed-authentication throttle and the per-client rate limit are counted apart', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { AUTH_FAILURE_LIMIT: '2' } })
  await insertClient(databaseUrl, { id: 'svc-guessed', secret: 'guessed-secret' })
  await insertClient(databaseUrl, { id: 'svc-quota', secret: 'quota-secret', rateLimit: 1 })
  const THROTTLED = 'session_service_requests_throttled_total'

  let text = await scrapeMetrics(app)
  t.equal(sample(text, `${THROTTLED}{reason="auth_failures"}`), 0, 'both series exist from the start')
  t.equal(sample(text, `${THROTTLED}{reason="rate_limit"}`), 0)

  const guesses: number[] = []
  for (let attempt = 0; attempt < 3; attempt++) {
    const res = await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-guessed', `guess-${attempt}`) })
    guesses.push(res.statusCode)
  }
  t.strictSame(guesses, [401, 401, 429], 'the third failure in a minute is throttled')
  await issueTokens(app, 'svc-quota', 'quota-secret')
  const overQuota = await tokenRequest(app, { grant_type: 'client_credentials' }, { authorization: basicAuth('svc-quota', 'quota-secret') })
  t.equal(overQuota.statusCode, 429, 'the second token request in a minute is over the limit of 1')

  text = await scrapeMetrics(app)
  t.equal(sample(text, `${THROTTLED}{reason="auth_failures"}`), 1, 'the throttled authentication')
  t.equal(sample(text, `${THROTTLED}{reason="rate_limit"}`), 1, 'the request over the rate limit')
  t.equal(sample(text, 'session_service_oauth_errors_total{route="/oauth/token",error="rate_limit_exceeded"}'), 2, 'one error code for both')
})

test('tokens per client: at most METRICS_CLIENT_LIMIT client series, the rest under "other"', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { METRICS_PER_CLIENT: 'true', METRICS_CLIENT_LIMIT: '2' } })
  const clients = ['svc-a', 'svc-b', 'svc-c', 'svc-d']
  for (const id of clients) await insertClient(databaseUrl, { id, secret: `${id}-secret` })

  // One after the other, so that the first two are the ones labelled.
  for (const id of clients) await issueTokens(app, id, `${id}-secret`)
  await issueTokens(app, 'svc-a', 'svc-a-secret')
  const text = await scrapeMetrics(app)
  const PER_CLIENT = 'session_service_client_tokens_issued_total'
  t.equal(samplesOf(text, PER_CLIENT).length, 3, 'LIMIT + 2 clients give LIMIT + 1 series')
  t.equal(sample(text, `${PER_CLIENT}{client_id="svc-a"}`), 2)
  t.equal(sample(text, `${PER_CLIENT}{client_id="svc-b"}`), 1)
  t.equal(sample(text, `${PER_CLIENT}{client_id="other"}`), 2, 'svc-c and svc-d together')
  t.equal(sample(text, 'session_service_tokens_issued_total{grant_type="client_credentials"}'), 5)
})

test('bcrypt: compares that queue behind a busy worker show their wait', async (t) => {
  const { app, databaseUrl } = await build(t, { env: { BCRYPT_WORKERS: '1' } })
  const clients = ['svc-q1', 'svc-q2', 'svc-q3']
  for (const id of clients) await insertClient(databaseUrl, { id, secret: `${id}-secret` })

  // Concurrent first requests of three clients: three compares, one worker.
  await Promise.all(clients.map(async (id) => await issueTokens(app, id, `${id}-secret`)))
  const text = await scrapeMetrics(app)
  t.equal(sample(text, 'session_service_bcrypt_compares_total'), 3)
  t.equal(sample(text, 'session_service_bcrypt_queue_wait_seconds_count'), 3, 'a wait per compare')
  t.ok((sample(text, 'session_service_bcrypt_queue_wait_seconds_bucket{le="0.001"}') ?? 3) < 3, 'at least one compare waited for the worker')
  t.equal(sample(text, 'session_service_bcrypt_compare_duration_seconds_count'), 3, 'a duration per compare')
  // A compare at cost 10 takes tens of milliseconds on any machine.
  t.ok((sample(text, 'session_service_bcrypt_compare_duration_seconds_bucket{le="0.025"}') ?? 3) < 3, 'compares take their time')
  t.equal(sample(text, 'session_service_bcrypt_queue_length'), 0, 'nothing left in the queue')
})
