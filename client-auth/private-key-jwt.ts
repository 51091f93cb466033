import { invalidRequest } from '../plugins/errors.ts'
import type { ClientAuthMethod } from './method.ts'

/** RFC 7523 §2.2: the client_assertion_type of a JWT client assertion. */
export const JWT_BEARER_ASSERTION = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'

function assertionSubject (assertion: string): string | undefined {
  const payload = assertion.split('.')[1]
  if (payload === undefined) return undefined
  try {
    const claims: unknown = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'))
    const sub = (claims as { sub?: unknown } | null)?.sub
    return typeof sub === 'string' ? sub : undefined
  } catch {
    return undefined
  }
}

/** A JWT signed with a key the client registered (RFC 7523 §2.2, private_key_jwt). */
export const privateKeyJwt: ClientAuthMethod = {
  name: 'private_key_jwt',

  read (authorization, body) {
    if (body.client_assertion === undefined && body.client_assertion_type === undefined) return undefined
    if (authorization !== undefined || body.client_secret !== undefined) {
      throw invalidRequest('use one client authentication method, not a client assertion and a secret')
    }
    if (body.client_assertion_type !== JWT_BEARER_ASSERTION) throw invalidRequest(`client_assertion_type must be ${JWT_BEARER_ASSERTION}`)
    if (body.client_assertion === undefined) throw invalidRequest('client_assertion is required with client_assertion_type')
    // RFC 7523 §3: the assertion's sub is the client id. It is read here,
    // unverified, only to find the client whose keys then verify it.
    const subject = assertionSubject(body.client_assertion)
    if (body.client_id !== undefined && subject !== undefined && body.client_id !== subject) {
      throw invalidRequest('client_id differs from the subject of the client assertion')
    }
    return { method: 'private_key_jwt', clientId: body.client_id ?? subject, assertion: body.client_assertion }
  },

  async verify (context) {
    const { request, credentials: { clientId, assertion } } = context
    // Counted like a secret: an assertion may cost a fetch of the client's keys and a signature check.
    await context.countAttempt(clientId)
    const client = clientId === undefined ? undefined : await context.find(clientId)
    if (client === undefined) throw context.reject('unknown client')
    if (client.jwksUri === null && client.jwks === null) throw context.reject('no keys registered for private_key_jwt')
    const problem = assertion === undefined ? 'no client assertion' : await context.clientAssertions.check(request, assertion, client)
    if (problem !== undefined) throw context.reject(problem)
    context.refundAttempt(client.id)
    return client
  }
}
