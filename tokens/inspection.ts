// Inspecting tokens: verification (signature, claims, revocations), RFC 7662
// introspection and RFC 7009 revocation.
import { OAuthError } from '../plugins/errors.ts'
import { boundKey } from '../dpop/proof.ts'
import type { AccessTokenClaims, TokenCheck } from '../plugins/keys.ts'
import { isClaimSet, refreshTokenHash, sessionRevocationTtl, type TokenDependencies } from './session.ts'

export type Introspection = { active: false } | {
  active: true
  token_type: 'Bearer' | 'DPoP' | 'refresh_token'
  client_id: string
  sub: string
  iss: string
  aud?: string | string[]
  exp: number
  iat: number
  jti?: string
  sid?: string
  scope?: string
  /** RFC 8693 §4.1: who acts for the subject (a token issued by token exchange) */
  act?: Record<string, unknown>
  /** RFC 9449 §6.2: the key a bound token is bound to */
  cnf?: { jkt: string }
}

export interface TokenInspection {
  /**
   * Signature, claims, the deny-list and the session. `audience`: the one the
   * token must carry (default: JWT_AUDIENCE); null accepts any audience.
   */
  verify: (token: string, audience?: string | null) => Promise<TokenCheck>
  /**
   * RFC 7662 introspection for `clientId`: the token's metadata when it is
   * active and was issued to that client, otherwise `{ active: false }`.
   */
  introspect: (token: string, clientId: string) => Promise<Introspection>
  /**
   * RFC 7009 revocation by `clientId`. An access token goes on the deny-list;
   * a refresh token revokes its whole session. Unknown, expired or already
   * revoked tokens are ignored; a valid token of another client is refused.
   */
  revoke: (token: string, clientId: string) => Promise<void>
}

function looksLikeJwt (token: string): boolean {
  return token.split('.').length === 3
}

/** RFC 7662 §2.2 metadata of an active access token, from its verified claims. */
function activeAccessToken (claims: AccessTokenClaims, clientId: string): Introspection {
  const jkt = boundKey(claims)
  return {
    active: true,
    token_type: jkt === undefined ? 'Bearer' : 'DPoP',
    client_id: clientId,
    sub: claims.sub,
    iss: claims.iss,
    aud: claims.aud,
    exp: claims.exp,
    iat: claims.iat,
    jti: claims.jti,
    ...(typeof claims.sid === 'string' ? { sid: claims.sid } : {}),
    ...(typeof claims.scope === 'string' ? { scope: claims.scope } : {}),
    ...(isClaimSet(claims.act) ? { act: claims.act } : {}),
    ...(jkt === undefined ? {} : { cnf: { jkt } })
  }
}

export function tokenInspection ({ config, keys, store, stats }: TokenDependencies): TokenInspection {
  const inspection: TokenInspection = {
    async verify (token, audience) {
      const result = keys.check(token, { audience })
      if (!result.valid) return result
      const sid = typeof result.claims.sid === 'string' ? result.claims.sid : undefined
      if (await store.revocations.isRevoked(result.claims.jti, sid)) return { valid: false, error: 'revoked' }
      return result
    },

    async introspect (token, clientId) {
      if (looksLikeJwt(token)) {
        // Any audience: the caller is the client the token was issued to.
        const result = await inspection.verify(token, null)
        if (!result.valid || result.claims.client_id !== clientId) return { active: false }
        return activeAccessToken(result.claims, clientId)
      }
      const record = await store.refreshTokens.get(refreshTokenHash(token))
      if (record === undefined || record.client_id !== clientId || record.used === true) return { active: false }
      if (await store.revocations.isSessionRevoked(record.sid)) return { active: false }
      return {
        active: true,
        token_type: 'refresh_token',
        client_id: record.client_id,
        sub: record.client_id,
        iss: config.issuer,
        aud: record.aud,
        exp: record.exp,
        iat: record.iat,
        sid: record.sid,
        ...(record.scope === '' ? {} : { scope: record.scope }),
        ...(record.jkt === undefined ? {} : { cnf: { jkt: record.jkt } })
      }
    },

    async revoke (token, clientId) {
      if (looksLikeJwt(token)) {
        // Expired tokens are still read so that their owner is known; there
        // is nothing to deny for them.
        const result = keys.check(token, { audience: null, ignoreExpiration: true })
        if (!result.valid) return
        if (result.claims.client_id !== clientId) {
          throw new OAuthError(400, 'unauthorized_client', 'the token was not issued to this client')
        }
        const { jti, exp } = result.claims
        // The entry lives as long as the token could: after that the token
        // fails on its own expiry and the entry is dead weight.
        if (exp * 1000 > Date.now()) {
          await store.revocations.denyAccessToken(jti, exp)
          stats.revocations.access_token++
        }
        return
      }
      const outcome = await store.refreshTokens.revoke(refreshTokenHash(token), clientId, sessionRevocationTtl(config))
      if (outcome === 'foreign') {
        throw new OAuthError(400, 'unauthorized_client', 'the token was not issued to this client')
      }
      if (outcome === 'revoked') stats.revocations.refresh_token++
    }
  }
  return inspection
}
