import { test } from 'tap'
import { build, insertClient, issueTokens, verify } from './helper.ts'

test('a client inserted by SQL gets a token that verifies', async (t) => {
  const { app, databaseUrl } = await build(t)
  await insertClient(databaseUrl, { id: 'svc-smoke', secret: 'smoke-secret' })
  const tokens = await issueTokens(app, 'svc-smoke', 'smoke-secret')
  t.equal(tokens.token_type, 'Bearer')
  const res = await verify(app, tokens.access_token)
  t.equal(res.statusCode, 200)
  t.equal(res.json().valid, true)
  t.equal(res.json().claims.sub, 'svc-smoke')
})
