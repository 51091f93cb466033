import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { PresentedCredentials } from '../client-auth/index.ts'
import type { Client } from '../storage/clients.ts'
import type { TokenResponse } from '../plugins/tokens.ts'
import type { TokenRequestBody } from '../schemas/oauth.ts'

/** What a grant works with: the request, its parsed credentials and the service's decorators. */
export interface GrantContext {
  request: FastifyRequest
  /** the request's form body, validated by schemas/oauth.ts tokenRequest */
  body: TokenRequestBody
  reply: FastifyReply
  credentials: PresentedCredentials
  fastify: FastifyInstance
}

/** One grant type (RFC 6749 §4): what it reads, who asks, and what it issues. */
export interface Grant {
  /** the grant_type value */
  type: string
  /** the form parameters it reads besides grant_type and the client credentials */
  parameters: ReadonlyArray<keyof TokenRequestBody>
  /**
   * The client the request is made for, authenticated as the grant requires
   * (enabled or not: the dispatcher checks that, once for every grant).
   */
  identifyClient: (context: GrantContext) => Promise<Client>
  /**
   * Issues the tokens to the client, which may use this grant. `dpopKey`:
   * the thumbprint of the key of the request's DPoP proof, checked by the
   * dispatcher; the grant passes it along (requestedTokens), and the tokens
   * are bound to it.
   */
  handle: (context: GrantContext & { client: Client, dpopKey: string | undefined }) => Promise<TokenResponse>
}
