import type { FastifyInstance } from 'fastify'
import { invalidRequest } from '../plugins/errors.ts'
import type { AccessTokenClaims } from '../plugins/keys.ts'
import { boundKey } from '../dpop/proof.ts'
import type { Client } from '../storage/clients.ts'
import type { TokenRequestBody } from '../schemas/oauth.ts'
import { ACCESS_TOKEN_TYPE_ID } from '../tokens/issuance.ts'
import type { Grant } from './grant.ts'
import { requestedTokens } from './requested.ts'

/** RFC 8693 §2.1: the grant_type value. */
export const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange'

/** RFC 8693 §3: the token type identifier of a JWT. */
export const JWT_TOKEN_TYPE_ID = 'urn:ietf:params:oauth:token-type:jwt'

// What a subject or actor token may be: our access tokens are JWTs, so a
// client may name them either way (RFC 8693 §3).
const ACCEPTED_TOKEN_TYPES = [ACCESS_TOKEN_TYPE_ID, JWT_TOKEN_TYPE_ID]

type Role = 'subject' | 'actor'

function checkTokenType (role: Role, type: string | undefined): void {
  if (type === undefined) throw invalidRequest(`${role}_token_type is required with a ${role}_token`)
  if (!ACCEPTED_TOKEN_TYPES.includes(type)) throw invalidRequest(`${role}_token_type must be ${ACCEPTED_TOKEN_TYPES.join(' or ')}`)
}

function subjectTokenOf (body: TokenRequestBody): string {
  if (body.subject_token === undefined) throw invalidRequest('subject_token is required')
  checkTokenType('subject', body.subject_token_type)
  return body.subject_token
}

/** RFC 8693 §2.1: actor_token_type is given with an actor_token, and only then. */
function actorTokenOf (body: TokenRequestBody): string | undefined {
  if (body.actor_token === undefined) {
    if (body.actor_token_type !== undefined) throw invalidRequest('actor_token_type is given without an actor_token')
    return undefined
  }
  checkTokenType('actor', body.actor_token_type)
  return body.actor_token
}

/**
 * The claims of a token of ours that is still valid: signature, issuer,
 * expiry, not revoked, any of our audiences. RFC 8693 §2.2.2: otherwise
 * invalid_request, which says why but nothing of the token itself.
 */
async function validClaims (fastify: FastifyInstance, role: Role, token: string): Promise<AccessTokenClaims> {
  const result = await fastify.tokens.verify(token, null)
  if (!result.valid) throw invalidRequest(`the ${role}_token is not a valid access token of this service (${result.error})`)
  return result.claims
}

/**
 * Whose tokens a client may exchange: its own (narrowing them gives it
 * nothing it did not hold), and those of the clients its may_exchange lists.
 */
function requireMayExchange (client: Client, subject: AccessTokenClaims): void {
  const owner = subject.client_id
  if (owner === client.id || (typeof owner === 'string' && client.mayExchange.includes(owner))) return
  throw invalidRequest('the subject_token was issued to a client whose tokens this client may not exchange (may_exchange)')
}

/**
 * A DPoP-bound token (RFC 9449 §6.1) is presented by the holder of its key
 * only: the request's proof must be made with that key, as for a refresh of a
 * bound session. Otherwise whoever copied a bound token could trade it for a
 * bearer one here.
 */
function requireHolder (role: Role, claims: AccessTokenClaims, dpopKey: string | undefined): void {
  const jkt = boundKey(claims)
  if (jkt === undefined || jkt === dpopKey) return
  throw invalidRequest(`the ${role}_token is bound to a DPoP key (cnf.jkt): the request needs a DPoP proof made with that key`)
}

/**
 * RFC 8693: a client presents an access token of ours (the subject's) and
 * gets a narrower one for the same subject, issued to itself; with an actor
 * token, the actor is recorded in the act claim. The actor token needs only
 * be valid: it says who acts, and grants nothing by itself.
 */
export const tokenExchange: Grant = {
  type: TOKEN_EXCHANGE,
  parameters: ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type', 'scope', 'audience', 'resource'],

  async identifyClient ({ request, credentials, fastify }) {
    return await fastify.authenticateClient(request, credentials)
  },

  async handle ({ body, client, dpopKey, fastify }) {
    const subjectToken = subjectTokenOf(body)
    const actorToken = actorTokenOf(body)
    if (body.requested_token_type !== undefined && body.requested_token_type !== ACCESS_TOKEN_TYPE_ID) {
      throw invalidRequest(`requested_token_type must be ${ACCESS_TOKEN_TYPE_ID}, the only type this service issues by exchange`)
    }
    const requested = requestedTokens(body, dpopKey)
    const subject = await validClaims(fastify, 'subject', subjectToken)
    requireMayExchange(client, subject)
    requireHolder('subject', subject, dpopKey)
    const actor = actorToken === undefined ? undefined : await validClaims(fastify, 'actor', actorToken)
    if (actor !== undefined) requireHolder('actor', actor, dpopKey)
    return await fastify.tokens.exchange(subject, actor, client, requested)
  }
}
