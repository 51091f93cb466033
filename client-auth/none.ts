import type { ClientAuthMethod } from './method.ts'

/**
 * No credentials (at most a client_id). Never authenticates a client; the
 * refresh grant may still accept such a request when
 * REFRESH_TOKEN_CLIENT_AUTH=optional, by the refresh token's owner.
 */
export const none: ClientAuthMethod = {
  name: 'none',

  read (_authorization, body) {
    return body.client_id === undefined ? { method: 'none' } : { method: 'none', clientId: body.client_id }
  },

  async verify (context) {
    // Cheap to refuse, so never refused for the count; but a failure all the same.
    context.countCheapFailure(context.credentials.clientId)
    throw context.reject('no credentials')
  }
}
