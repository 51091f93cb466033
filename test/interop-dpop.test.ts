// DPoP (RFC 9449) with a third-party client over real HTTP: oauth4webapi
// signs the proofs, follows the server's nonce, obtains and refreshes a bound
// token; jose checks that the token is bound to the key oauth4webapi used,
// and a resource server built on jose checks what oauth4webapi presents.
import { createHash } from 'node:crypto'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { test } from 'tap'
import * as oauth4 from 'oauth4webapi'
import { calculateJwkThumbprint, createRemoteJWKSet, decodeJwt, EmbeddedJWK, exportJWK, jwtVerify, type JWK } from 'jose'
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

/**
 * A resource server built on jose alone: it validates the access token with
 * the published keys, the proof with the key the proof carries (RFC 9449
 * §4.3, §7.1), and that the token's cnf.jkt is that key's thumbprint; then it
 * asks /oauth/verify for the same verdict. Answers 200 with both verdicts, or
 * 401 with the reason.
 */
async function resourceServer (t: TestContext, issuer: URL): Promise<URL> {
  const keys = createRemoteJWKSet(new URL('/.well-known/jwks.json', issuer))
  const server = createServer((request, response) => {
    const answer = (status: number, body: Record<string, unknown>): void => {
      response.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body))
    }
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}${request.url ?? '/'}`
    checkDpopRequest(request.method ?? '', url, request.headers.authorization, request.headers.dpop, issuer, keys)
      .then((body) => answer(200, body), (err: unknown) => answer(401, { error: (err as Error).message }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => await new Promise((resolve) => server.close(resolve)))
  return new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/orders/42`)
}

async function checkDpopRequest (method: string, url: string, authorization: string | undefined, proof: string | string[] | undefined,
  issuer: URL, keys: ReturnType<typeof createRemoteJWKSet>): Promise<Record<string, unknown>> {
  const token = /^DPoP (\S+)$/.exec(authorization ?? '')?.[1]
  if (token === undefined || typeof proof !== 'string') throw new Error('no DPoP token and proof')
  const { payload: claims } = await jwtVerify(token, keys, { issuer: issuer.href.replace(/\/$/, ''), typ: 'at+jwt' })
  const { payload, protectedHeader } = await jwtVerify(proof, EmbeddedJWK, { typ: 'dpop+jwt', algorithms: ['ES256'] })
  if (payload.htm !== method || payload.htu !== url) throw new Error('htm or htu')
  if (payload.ath !== createHash('sha256').update(token).digest('base64url')) throw new Error('ath')
  const jkt = await calculateJwkThumbprint(protectedHeader.jwk as JWK)
  if ((claims.cnf as { jkt?: string } | undefined)?.jkt !== jkt) throw new Error('cnf.jkt is not the proof key')
  const verified = await fetch(new URL('/oauth/verify', issuer), {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token, dpop: proof, method, url })
  })
  return { sub: claims.sub, jkt, verify: await verified.json() }
}

test('a resource server on jose accepts what oauth4webapi presents with its key, and refuses another key', async (t) => {
  const { issuer, databaseUrl } = await serve(t)
  await insertClient(databaseUrl, { id: 'dpop-resource', secret: 'dpop resource secret' })
  const as = await oauth4.processDiscoveryResponse(issuer, await oauth4.discoveryRequest(issuer, { ...options, algorithm: 'oauth2' }))
  const client: oauth4.Client = { client_id: 'dpop-resource' }
  const clientAuth = oauth4.ClientSecretBasic('dpop resource secret')
  const DPoP = oauth4.DPoP(client, await oauth4.generateKeyPair('ES256'))
  const granted = await oauth4.processClientCredentialsResponse(as, client,
    await oauth4.clientCredentialsGrantRequest(as, client, clientAuth, {}, { ...options, DPoP }))
  const resource = await resourceServer(t, issuer)

  const accepted = await oauth4.protectedResourceRequest(granted.access_token, 'GET', resource, undefined, undefined, { ...options, DPoP })
  t.equal(accepted.status, 200, 'the token and a proof of its key: accepted')
  t.match(await accepted.json(), { sub: 'dpop-resource', verify: { valid: true, claims: { cnf: {} } } }, 'jose and /oauth/verify agree')

  const thief = oauth4.DPoP(client, await oauth4.generateKeyPair('ES256'))
  const refused = await oauth4.protectedResourceRequest(granted.access_token, 'GET', resource, undefined, undefined, { ...options, DPoP: thief })
  t.equal(refused.status, 401, 'the token with a proof of another key: refused')
  t.strictSame(await refused.json(), { error: 'cnf.jkt is not the proof key' })
})
