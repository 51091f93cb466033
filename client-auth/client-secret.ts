import type { FastifyRequest } from 'fastify'
import { MAX_SECRET_BYTES, type Client } from '../storage/clients.js'
import type { SecretCheck } from '../plugins/secrets.js'
import type { VerificationContext } from './method.js'
import { addressKey } from './throttle.js'

// A request whose connection has closed no longer needs its compare.
const gone = (request: FastifyRequest) => () => request.raw.socket?.destroyed === true

/** Verifies a client id and secret (client_secret_basic and client_secret_post alike). */
export async function verifySecret (context: VerificationContext): Promise<Client> {
  const { request, credentials, secrets } = context
  const { clientId, clientSecret } = credentials
  if (clientId === undefined || clientSecret === undefined || Buffer.byteLength(clientSecret, 'utf8') > MAX_SECRET_BYTES) {
    // Cheap to refuse, so never refused for the count; but a failure all the same.
    context.countCheapFailure(clientId)
    throw context.reject(clientSecret === undefined || clientId === undefined ? 'no credentials' : 'secret longer than 72 bytes')
  }
  const client = await context.find(clientId)
  // An unknown client, or one without a secret, costs the same bcrypt work
  // as a wrong secret, so that none of the three can be told apart.
  const hash = client?.secretHash ?? await context.decoy()
  let counted = false
  const check: SecretCheck = await secrets.check(clientSecret, hash, {
    clientId,
    lane: addressKey(request.ip),
    isGone: gone(request),
    beforeCompare: async () => {
      await context.countAttempt(clientId)
      counted = true
    }
  })
  if (check.matches === null) request.log.warn({ clientId }, 'stored client secret hash is not a bcrypt hash')
  if (client === undefined || client.secretHash === null || check.matches !== true) {
    await secrets.padFailure(check)
    throw context.reject(client === undefined ? 'unknown client' : client.secretHash === null ? 'the client has no secret' : 'wrong secret')
  }
  if (counted) context.refundAttempt(clientId)
  if (check.compareMs !== undefined && check.cost < context.bcryptCost) context.upgradeHash(client, clientSecret)
  return client
}
