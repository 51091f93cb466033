// DPoP (RFC 9449) with a third-party client over real HTTP: oauth4webapi
// signs the proofs, follows the server's nonce, obtains and refreshes a bound
// token; jose checks that the token is bound to the key oauth4webapi used.
import { test } from 'tap'
import * as oauth4 from 'oauth4webapi'
import { calculateJwkThumbprint, decodeJwt, exportJWK } from 'jose'
import { build, freePort, insertClient, type TestContext } from './helper.ts'

/** The service listening on loopback, its issuer (and so its public URL) being its own address. */
async function serve (t: TestContext, env: Record<string, string> = {}): Promise<{ issuer: URL, databaseUrl: string }> {
  const port = await freePort()
  const issuer = `http://127.0.0.1:${port}`
  const { app, databaseUrl } = await build(t, { env: { JWT_ISSUER: issuer, ...env } })
  await app.listen({ host: '127.0.0.1', port })
  return { issuer: new URL(issuer), databaseUrl }
}

// The test server speaks plain HTTP on loopback; everything else is as in production.
const options = { [oauth4.allowInsecureRequests]: true }

/** Sends a request (again, once, when the server asks for a nonce: the handle has it by then) and processes its answer. */
async function withNonceRetry<T> (send: () => Promise<Response>, processResponse: (response: Response) => Promise<T>, retried: { count: number }): Promise<T> {
  try {
    return await processResponse(await send())
  } catch (err) {
    if (!oauth4.isDPoPNonceError(err)) throw err
    retried.count++
    return await processResponse(await send())
  }
}

for (const nonceRequired of [false, true]) {
  test(`oauth4webapi obtains and refreshes a DPoP-bound token (DPOP_NONCE_REQUIRED=${String(nonceRequired)})`, async (t) => {
    const { issuer, databaseUrl } = await serve(t, { DPOP_NONCE_REQUIRED: String(nonceRequired) })
    await insertClient(databaseUrl, { id: 'dpop-interop', secret: 'dpop interop secret' })
    const as = await oauth4.processDiscoveryResponse(issuer, await oauth4.discoveryRequest(issuer, { ...options, algorithm: 'oauth2' }))
    t.ok(as.dpop_signing_alg_values_supported?.includes('ES256'), 'discovery lists the proof algorithms')
    const client: oauth4.Client = { client_id: 'dpop-interop' }
    const clientAuth = oauth4.ClientSecretBasic('dpop interop secret')
    const keyPair = await oauth4.generateKeyPair('ES256')
    const DPoP = oauth4.DPoP(client, keyPair)
    const jkt = await calculateJwkThumbprint(await exportJWK(keyPair.publicKey))
    const retried = { count: 0 }

    const granted = await withNonceRetry(
      async () => await oauth4.clientCredentialsGrantRequest(as, client, clientAuth, {}, { ...options, DPoP }),
      async (response) => await oauth4.processClientCredentialsResponse(as, client, response), retried)
    t.equal(granted.token_type, 'dpop', 'token_type DPoP (oauth4webapi lower-cases it)')
    t.strictSame(decodeJwt(granted.access_token).cnf, { jkt }, 'cnf.jkt: the thumbprint of the key oauth4webapi signed with')

    const refreshed = await withNonceRetry(
      async () => await oauth4.refreshTokenGrantRequest(as, client, clientAuth, String(granted.refresh_token), { ...options, DPoP }),
      async (response) => await oauth4.processRefreshTokenResponse(as, client, response), retried)
    t.equal(refreshed.token_type, 'dpop', 'refreshed: token_type DPoP')
    t.strictSame(decodeJwt(refreshed.access_token).cnf, { jkt }, 'the refreshed token is bound to the same key')
    t.equal(decodeJwt(refreshed.access_token).sid, decodeJwt(granted.access_token).sid, 'in the same session')
    t.equal(retried.count, nonceRequired ? 1 : 0, nonceRequired ? 'one retry for the first nonce; the next ones came with the answers' : 'no nonce asked for')

    // Another key cannot refresh the session, and the token survives the attempt.
    const thief = oauth4.DPoP(client, await oauth4.generateKeyPair('ES256'))
    const stolen = await withNonceRetry(
      async () => await oauth4.refreshTokenGrantRequest(as, client, clientAuth, String(refreshed.refresh_token), { ...options, DPoP: thief }),
      async (response) => await oauth4.processRefreshTokenResponse(as, client, response), { count: 0 }).then(() => undefined, (err: unknown) => err)
    t.ok(stolen instanceof oauth4.ResponseBodyError, 'another key is refused')
    t.equal((stolen as oauth4.ResponseBodyError).error, 'invalid_dpop_proof', 'with invalid_dpop_proof')
    const again = await withNonceRetry(
      async () => await oauth4.refreshTokenGrantRequest(as, client, clientAuth, String(refreshed.refresh_token), { ...options, DPoP }),
      async (response) => await oauth4.processRefreshTokenResponse(as, client, response), { count: 0 })
    t.strictSame(decodeJwt(again.access_token).cnf, { jkt }, 'the right key still refreshes it')
  })
}
