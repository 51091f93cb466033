// An unknown client id and a wrong secret must not be told apart: the same
// status, body and headers, and (statistically) the same time, since an
// unknown id still costs a bcrypt compare against a hash of the same cost.
import { test } from 'tap'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { insertClientRow } from '../plugins/clients.js'
import { basicAuth, build, form, FORM } from './helper.js'

const ROUNDS = 8

async function attempt (app: FastifyInstance, clientId: string, secret: string, address: string): Promise<{ res: LightMyRequestResponse, ms: number }> {
  const started = performance.now()
  const res = await app.inject({
    method: 'POST',
    url: '/oauth/token',
    // An address per attempt: the failure throttle stays out of the measure.
    remoteAddress: address,
    headers: { ...FORM, authorization: basicAuth(clientId, secret) },
    payload: form({ grant_type: 'client_credentials' })
  })
  return { res, ms: performance.now() - started }
}

function median (values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)] ?? Number.NaN
}

test('an unknown client and a wrong secret: the same answer, after the same bcrypt work', async (t) => {
  const { app } = await build(t, { env: { SECRET_CACHE_TTL: '0' } })
  // Hashed as the CLI hashes secrets (its bcrypt cost).
  await insertClientRow(app.db, { id: 'svc-real', secret: 'the-real-secret' })

  // The first unknown id also makes the decoy hash: not part of the measure.
  await attempt(app, 'svc-warm-up', 'nothing', '192.0.2.1')

  const unknown: number[] = []
  const wrong: number[] = []
  let reference: LightMyRequestResponse | undefined
  for (let round = 0; round < ROUNDS; round++) {
    // Interleaved, so that machine noise falls on both alike.
    const a = await attempt(app, `svc-nobody-${round}`, 'a-guess', `192.0.2.${10 + round}`)
    const b = await attempt(app, 'svc-real', `wrong-${round}`, `192.0.2.${100 + round}`)
    unknown.push(a.ms)
    wrong.push(b.ms)
    reference ??= a.res
    for (const { res } of [a, b]) {
      t.equal(res.statusCode, 401)
      t.equal(res.body, reference.body, 'the same body')
      t.equal(res.headers['www-authenticate'], reference.headers['www-authenticate'], 'the same challenge')
    }
  }
  const ratio = median(unknown) / median(wrong)
  t.ok(ratio > 0.6 && ratio < 1.6,
    `median time: unknown ${median(unknown).toFixed(0)} ms, wrong secret ${median(wrong).toFixed(0)} ms (ratio ${ratio.toFixed(2)}); a cheaper decoy would show as a ratio far below 1`)
})
