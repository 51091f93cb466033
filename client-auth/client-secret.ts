import type { FastifyRequest } from 'fastify'
import { MAX_SECRET_BYTES, type Client } from '../storage/clients.ts'
import type { SecretCheck, SecretCheckOptions } from '../plugins/secrets.ts'
import type { VerificationContext } from './method.ts'
import { addressKey } from './throttle.ts'

// A request whose connection has closed no longer needs its compare.
const gone = (request: FastifyRequest) => () => request.raw.socket?.destroyed === true

/**
 * The hash of the secret before the last rotation while its grace period
 * runs, judged at each request: neither a cached client record nor a
 * remembered secret keeps it working past its end.
 */
export function previousHashInGrace (client: Client | undefined, now: number): string | undefined {
  if (client === undefined || client.secretHash === null || client.previousSecretHash === null) return undefined
  const end = client.previousSecretExpiresAt
  return end !== null && end.getTime() > now ? client.previousSecretHash : undefined
}

/**
 * Checks the secret against each hash: a remembered one answers without
 * bcrypt; otherwise all are queued at once, so that with two workers or more
 * a client in its grace period answers about as fast as any other (the work
 * is doubled; the throttle counts the attempt once, before either compare).
 * Returns the index of the hash that matched (-1: none) and its check (the
 * first hash's check when none matched); `unreadable` when a stored hash is
 * not a bcrypt hash.
 */
async function checkAgainst (context: VerificationContext, secret: string, hashes: string[], options: SecretCheckOptions): Promise<{ matched: number, check: SecretCheck, unreadable: boolean }> {
  const { secrets } = context
  const remembered = hashes.findIndex((hash) => secrets.remembers(secret, hash))
  if (remembered >= 0) {
    const check = await secrets.check(secret, hashes[remembered] as string, options)
    if (check.matches === true) return { matched: remembered, check, unreadable: false }
  }
  const checks = await Promise.all(hashes.map(async (hash) => await secrets.check(secret, hash, options)))
  const matched = checks.findIndex((check) => check.matches === true)
  return { matched, check: checks[Math.max(matched, 0)] as SecretCheck, unreadable: checks.some((check) => check.matches === null) }
}

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
  const previous = previousHashInGrace(client, Date.now())
  let counting: Promise<void> | undefined
  let counted = false
  const { matched, check, unreadable } = await checkAgainst(context, clientSecret, previous === undefined ? [hash] : [hash, previous], {
    clientId,
    lane: addressKey(request.ip),
    isGone: gone(request),
    // Once per request, however many hashes are compared.
    beforeCompare: async () => {
      await (counting ??= context.countAttempt(clientId).then(() => { counted = true }))
    }
  })
  if (unreadable) request.log.warn({ clientId }, 'stored client secret hash is not a bcrypt hash')
  if (client === undefined || client.secretHash === null || matched < 0) {
    await secrets.padFailure(check)
    throw context.reject(client === undefined ? 'unknown client' : client.secretHash === null ? 'the client has no secret' : 'wrong secret')
  }
  if (counted) context.refundAttempt(clientId)
  // Only the current secret's hash is upgraded: the previous one is on its way out.
  if (matched === 0 && check.compareMs !== undefined && check.cost < context.bcryptCost) context.upgradeHash(client, clientSecret)
  return client
}
