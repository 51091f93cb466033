import type { FastifyRequest } from 'fastify'
import type { Client } from '../storage/clients.ts'
import type { CredentialParameters } from '../schemas/oauth.ts'
import type { ClientAssertions } from '../plugins/client-assertions.ts'
import type { Secrets } from '../plugins/secrets.ts'

export type AuthMethod = 'client_secret_basic' | 'client_secret_post' | 'private_key_jwt' | 'none' | 'unsupported_scheme'

/** What a request presented to authenticate, before any check. */
export interface PresentedCredentials {
  method: AuthMethod
  clientId?: string
  clientSecret?: string
  /** private_key_jwt: the signed client assertion (RFC 7523 §2.2) */
  assertion?: string
}

export type { CredentialParameters } from '../schemas/oauth.ts'

/**
 * What a method's verification may use. The entry point owns the throttle,
 * the failure answer and the client lookup, so that every method applies
 * them alike.
 */
export interface VerificationContext {
  request: FastifyRequest
  credentials: PresentedCredentials
  find: (clientId: string) => Promise<Client | undefined>
  /** Counts an attempt before costly work; throws 429 over the limits. */
  countAttempt: (clientId: string | undefined) => Promise<void>
  /** Counts a failure that cost nothing, in the background; never refuses. */
  countCheapFailure: (clientId: string | undefined) => void
  /** Takes a counted attempt back after a success. */
  refundAttempt: (clientId: string) => void
  /** The 401 invalid_client answer, logged with its reason (never a secret). */
  reject: (reason: string) => Error
  secrets: Secrets
  clientAssertions: ClientAssertions
  /** A hash to compare against when there is none, at the service's cost. */
  decoy: () => Promise<string>
  /** Stores a new hash at the service's cost after a success against a cheaper one. */
  upgradeHash: (client: Client, secret: string) => void
  bcryptCost: number
}

/** One client authentication method: how to read its credentials and how to verify them. */
export interface ClientAuthMethod {
  /** its name in metadata (RFC 8414 token_endpoint_auth_methods_supported) */
  name: AuthMethod
  /**
   * The credentials of this method in a request, or undefined when the
   * request does not use it. Ambiguous or malformed input is invalid_request.
   */
  read: (authorization: string | undefined, body: CredentialParameters) => PresentedCredentials | undefined
  /** The authenticated client; throws the context's rejection otherwise. */
  verify: (context: VerificationContext) => Promise<Client>
}
