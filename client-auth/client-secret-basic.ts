import { invalidRequest } from '../plugins/errors.ts'
import { verifySecret } from './client-secret.ts'
import type { ClientAuthMethod } from './method.ts'

// RFC 6749 appendix B: application/x-www-form-urlencoded, '+' is a space.
function formDecode (value: string): string {
  return decodeURIComponent(value.replace(/\+/g, ' '))
}

/**
 * HTTP Basic (RFC 6749 §2.3.1): id and secret each form-urlencoded, joined by
 * ':', base64. This method owns the Authorization header: another scheme is
 * read as an unsupported one, which then fails like missing credentials.
 */
export const clientSecretBasic: ClientAuthMethod = {
  name: 'client_secret_basic',

  read (authorization, body) {
    if (authorization === undefined) return undefined
    const match = /^Basic[ ]+([A-Za-z0-9+/]+={0,2})[ ]*$/i.exec(authorization)
    if (match === null) {
      if (/^Basic\b/i.test(authorization)) throw invalidRequest('malformed Basic authorization header')
      // Another scheme (Bearer, say) is a failed authentication, answered
      // like any other with invalid_client and a Basic challenge.
      return { method: 'unsupported_scheme' }
    }
    const decoded = Buffer.from(match[1] ?? '', 'base64').toString('utf8')
    const colon = decoded.indexOf(':')
    if (colon < 0) throw invalidRequest('malformed Basic authorization header: no colon')
    let clientId: string
    let clientSecret: string
    try {
      clientId = formDecode(decoded.slice(0, colon))
      clientSecret = formDecode(decoded.slice(colon + 1))
    } catch {
      throw invalidRequest('malformed Basic authorization header: bad percent-encoding')
    }
    if (body.client_secret !== undefined) throw invalidRequest('use one client authentication method, not both Basic and client_secret')
    if (body.client_id !== undefined && body.client_id !== clientId) throw invalidRequest('client_id in the body differs from the Basic credentials')
    return { method: 'client_secret_basic', clientId, clientSecret }
  },

  verify: verifySecret
}
