import { randomBytes } from 'node:crypto'
import fp from 'fastify-plugin'
import bcrypt from 'bcryptjs'
import type { FastifyRequest } from 'fastify'
import { clientsRepository, type Client } from '../storage/clients.ts'
import { OAuthError } from '../plugins/errors.ts'
import { clientSecretBasic } from './client-secret-basic.ts'
import { clientSecretPost } from './client-secret-post.ts'
import type { AuthMethod, ClientAuthMethod, CredentialParameters, PresentedCredentials, VerificationContext } from './method.ts'
import { none } from './none.ts'
import { privateKeyJwt } from './private-key-jwt.ts'
import { attemptThrottle } from './throttle.ts'

export type { AuthMethod, CredentialParameters, PresentedCredentials } from './method.ts'
export { JWT_BEARER_ASSERTION } from './private-key-jwt.ts'

/**
 * Every method, in the order a request is read: the first that recognises
 * it reads it. A new method is one module, a place here, and a place in
 * AUTH_METHODS_SUPPORTED when clients may register for it.
 */
const READ_ORDER: readonly ClientAuthMethod[] = [privateKeyJwt, clientSecretBasic, clientSecretPost, none]

/** The methods that authenticate a client, in the order discovery publishes them. */
export const AUTH_METHODS_SUPPORTED: readonly AuthMethod[] = [clientSecretBasic, clientSecretPost, privateKeyJwt].map((method) => method.name)

/** Who verifies what was presented; an unsupported scheme fails like no credentials. */
const VERIFIER = new Map<AuthMethod, ClientAuthMethod>([...READ_ORDER.map((method) => [method.name, method] as const), ['unsupported_scheme', none]])

/**
 * Reads the client credentials of a request: a client assertion, HTTP Basic
 * or client_id and client_secret in the form body. Ambiguous or malformed
 * input is refused (invalid_request).
 */
export function readCredentials (authorization: string | undefined, body: CredentialParameters): PresentedCredentials {
  for (const method of READ_ORDER) {
    const credentials = method.read(authorization, body)
    if (credentials !== undefined) return credentials
  }
  return { method: 'none' }
}

/** A disabled client authenticates but obtains nothing (RFC 6749 §5.2 unauthorized_client). */
export function requireEnabled (client: Client): Client {
  if (client.status !== 'enabled') throw new OAuthError(400, 'unauthorized_client', 'the client is disabled')
  return client
}

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * Authenticates a request's client. Throws invalid_client (401) for a
     * missing, unknown or wrong credential (all answered alike),
     * rate_limit_exceeded (429) after repeated failures, and
     * unauthorized_client for a disabled client.
     */
    authenticateClient: (request: FastifyRequest, credentials: PresentedCredentials) => Promise<Client>
    /** Authentications refused (429) by the failed-authentication throttle since start. */
    authThrottleStats: { refused: number }
  }
}

export default fp(async (fastify) => {
  const { config, db, clients, clientAssertions, secrets } = fastify
  const repository = clientsRepository(db)
  const throttle = attemptThrottle(fastify)
  fastify.decorate('authThrottleStats', throttle.stats)
  const realm = config.issuer.replace(/["\\]/g, '')
  // Compared against when the client is unknown (or has no secret), so that
  // such a request costs the same bcrypt work as a wrong secret and the
  // answers cannot be told apart, in content or in time. Its cost is the one
  // the CLI hashes secrets with; made at the first need, so that starting an
  // instance costs nothing.
  let decoyHash: Promise<string> | undefined
  const decoy = async (): Promise<string> => await (decoyHash ??= bcrypt.hash(randomBytes(18).toString('base64'), config.bcryptCost))

  // A success against a hash cheaper than BCRYPT_COST stores a new hash at
  // that cost (conditionally: a rotation meanwhile wins), so that the old
  // cost's timing fades from the table.
  function upgradeHash (request: FastifyRequest, client: Client, secret: string): void {
    const oldHash = client.secretHash
    if (oldHash === null) return
    secrets.rehash(secret).then(async (hash) => {
      if (await repository.replaceSecretHash(client.id, oldHash, hash)) {
        request.log.info({ clientId: client.id, cost: config.bcryptCost }, 'client secret hash upgraded to the service\'s bcrypt cost')
        await clients.forget(client.id)
      }
    }).catch((err: Error) => request.log.warn({ clientId: client.id, cause: err.message }, 'could not upgrade a client secret hash'))
  }

  function rejected (request: FastifyRequest, credentials: PresentedCredentials, reason: string): OAuthError {
    request.log.info({ clientId: credentials.clientId, method: credentials.method, reason }, 'client authentication failed')
    const headers: Record<string, string> = { 'www-authenticate': `Basic realm="${realm}"` }
    return new OAuthError(401, 'invalid_client', 'client authentication failed', headers)
  }

  async function authenticateClient (request: FastifyRequest, credentials: PresentedCredentials): Promise<Client> {
    const context: VerificationContext = {
      request,
      credentials,
      find: clients.find,
      countAttempt: async (clientId) => await throttle.countAttempt(request, clientId),
      countCheapFailure: (clientId) => throttle.countCheapFailure(request, clientId),
      refundAttempt: (clientId) => throttle.refundAttempt(request, clientId),
      reject: (reason) => rejected(request, credentials, reason),
      secrets,
      clientAssertions,
      decoy,
      upgradeHash: (client, secret) => upgradeHash(request, client, secret),
      bcryptCost: config.bcryptCost
    }
    return requireEnabled(await (VERIFIER.get(credentials.method) ?? none).verify(context))
  }

  fastify.decorate('authenticateClient', authenticateClient)
}, { name: 'client-auth', dependencies: ['config', 'postgres', 'store', 'clients', 'client-assertions', 'secrets'] })
