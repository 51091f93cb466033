import { invalidRequest } from '../plugins/errors.ts'
import { verifySecret } from './client-secret.ts'
import type { ClientAuthMethod } from './method.ts'

/** client_id and client_secret in the form body (RFC 6749 §2.3.1). */
export const clientSecretPost: ClientAuthMethod = {
  name: 'client_secret_post',

  read (_authorization, body) {
    if (body.client_secret === undefined) return undefined
    if (body.client_id === undefined) throw invalidRequest('client_secret given without client_id')
    return { method: 'client_secret_post', clientId: body.client_id, clientSecret: body.client_secret }
  },

  verify: verifySecret
}
