import { createHash, randomBytes, randomUUID } from 'node:crypto'
import fp from 'fastify-plugin'
import type { RefreshTokenRecord } from '../storage/refresh-tokens.js'
import { invalidGrant, OAuthError } from './errors.js'
import type { AccessTokenClaims, TokenCheck } from './keys.js'
import type { Client } from './clients.js'

export type { RefreshTokenRecord } from '../storage/refresh-tokens.js'

export interface TokenResponse {
  access_token: string
  token_type: 'Bearer'
  expires_in: number
  refresh_token: string
  /** the granted scope, when it differs from the requested one (RFC 6749 §5.1) */
  scope?: string
}

/** What a token request asks for, already parsed. */
export interface TokenRequest {
  /** requested scopes; undefined when the request names none */
  scope?: string[]
  /** requested audience; undefined for the default */
  audience?: string
}

export interface Tokens {
  /** client_credentials: a new session with an access and a refresh token. */
  issueForClient: (client: Client, request: TokenRequest) => Promise<TokenResponse>
  /**
   * refresh_token: exchanges the refresh token (atomically: of two concurrent
   * refreshes with one token, exactly one succeeds) for new tokens in the
   * same session. A token of another client is invalid_grant; a token that
   * was already used revokes its session.
   */
  refresh: (refreshToken: string, client: Client, request: TokenRequest) => Promise<TokenResponse>
  /** The client a refresh token belongs to, without consuming it. */
  refreshTokenOwner: (refreshToken: string) => Promise<string | undefined>
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

export type Introspection = { active: false } | {
  active: true
  token_type: 'Bearer' | 'refresh_token'
  client_id: string
  sub: string
  iss: string
  aud?: string | string[]
  exp: number
  iat: number
  jti?: string
  sid?: string
  scope?: string
}

declare module 'fastify' {
  interface FastifyInstance {
    tokens: Tokens
  }
}

function looksLikeJwt (token: string): boolean {
  return token.split('.').length === 3
}

/** Claims a client's custom claims can never set: RFC 7519 §4.1, RFC 9068 §2.2, and ours. */
const REGISTERED_CLAIMS = new Set(['iss', 'sub', 'aud', 'exp', 'nbf', 'iat', 'jti', 'client_id', 'scope', 'sid', 'auth_time', 'acr', 'amr', 'cnf', 'typ'])

export function customClaims (claims: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(claims).filter(([name]) => !REGISTERED_CLAIMS.has(name)))
}

/** The one answer to a refresh token that cannot be used, whatever the reason. */
export const INVALID_REFRESH_TOKEN = 'the refresh token is invalid, expired, revoked or already used'

export default fp(async (fastify) => {
  const { config, keys, store } = fastify

  // A session's last token expires at most this long after its revocation.
  const sessionRevocationTtl = Math.max(config.accessTokenTtl, config.refreshTokenTtl)
  // Refresh tokens are kept under their hash: a copy of the store holds no usable token.
  const tokenHash = (token: string): string => createHash('sha256').update(token).digest('base64url')

  /** The scope to grant, as a list; throws invalid_scope for a scope the client may not have. */
  function grantScope (client: Client, requested: string[] | undefined, ceiling: string[]): string[] {
    if (requested === undefined) return ceiling.filter((scope) => client.scopes.includes(scope))
    const refused = requested.find((scope) => !ceiling.includes(scope) || !client.scopes.includes(scope))
    if (refused !== undefined) throw new OAuthError(400, 'invalid_scope', `scope ${refused.slice(0, 64)} is not allowed for this client`)
    return requested
  }

  function grantAudience (client: Client, requested: string | undefined): string {
    if (requested === undefined || requested === config.audience) return config.audience
    if (!client.audiences.includes(requested)) throw new OAuthError(400, 'invalid_target', `audience ${requested.slice(0, 64)} is not allowed for this client`)
    return requested
  }

  async function issueTokens (client: Client, session: { sid: string, scope: string, aud: string }, accessScope: string, requested: TokenRequest): Promise<TokenResponse> {
    const now = Math.floor(Date.now() / 1000)
    const refreshToken = randomBytes(config.refreshTokenBytes).toString('base64url')
    const record: RefreshTokenRecord = { client_id: client.id, sid: session.sid, scope: session.scope, aud: session.aud, iat: now, exp: now + config.refreshTokenTtl }
    const claims: AccessTokenClaims = {
      // Custom claims first, so that the registered ones below always win.
      ...customClaims(client.claims),
      iss: config.issuer,
      sub: client.id,
      aud: session.aud,
      iat: now,
      exp: now + config.accessTokenTtl,
      jti: randomUUID(),
      client_id: client.id,
      sid: session.sid,
      ...(accessScope === '' ? {} : { scope: accessScope })
    }
    const accessToken = keys.sign(claims)
    // Stored before it is handed out: a token the client holds always exists.
    await store.refreshTokens.put(tokenHash(refreshToken), record)
    const response: TokenResponse = {
      access_token: accessToken,
      token_type: 'Bearer',
      expires_in: config.accessTokenTtl,
      refresh_token: refreshToken
    }
    if ((requested.scope?.join(' ') ?? '') !== accessScope) response.scope = accessScope
    return response
  }

  async function isRevoked (jti: string, sid: unknown): Promise<boolean> {
    return await store.revocations.isRevoked(jti, typeof sid === 'string' ? sid : undefined)
  }

  async function readRefreshToken (token: string): Promise<RefreshTokenRecord | undefined> {
    return await store.refreshTokens.get(tokenHash(token))
  }

  const tokens: Tokens = {
    async issueForClient (client, request) {
      const scope = grantScope(client, request.scope, request.scope === undefined ? client.defaultScopes : client.scopes).join(' ')
      const aud = grantAudience(client, request.audience)
      return await issueTokens(client, { sid: randomUUID(), scope, aud }, scope, request)
    },

    async refresh (refreshToken, client, request) {
      // Scopes the client has lost since the session began are not granted again.
      const requested = request.scope === undefined ? undefined : grantScope(client, request.scope, client.scopes)
      const outcome = await store.refreshTokens.exchange(tokenHash(refreshToken), {
        clientId: client.id,
        scope: requested?.join(' ') ?? '',
        audience: request.audience ?? '',
        allowedAudiences: [config.audience, ...client.audiences],
        sessionTtl: sessionRevocationTtl
      })
      const status = outcome.status
      if (status === 'scope') throw new OAuthError(400, 'invalid_scope', 'a refresh may narrow the scope, never widen it')
      if (status === 'target') throw new OAuthError(400, 'invalid_target', 'a refresh keeps the audience of its session')
      if (status === 'lost') throw invalidGrant('the client may no longer obtain tokens for this session\'s audience; request a new grant')
      if (status === 'reused') fastify.log.warn({ clientId: client.id }, 'a used refresh token was presented again; its session is revoked')
      if (outcome.status !== 'ok') throw invalidGrant(INVALID_REFRESH_TOKEN)
      const record = outcome.record
      const session = { sid: record.sid, scope: record.scope, aud: record.aud }
      const accessScope = requested ?? grantScope(client, undefined, record.scope.split(' ').filter((scope) => scope !== ''))
      return await issueTokens(client, session, accessScope.join(' '), request)
    },

    async refreshTokenOwner (refreshToken) {
      return (await readRefreshToken(refreshToken))?.client_id
    },

    async verify (token, audience) {
      const result = keys.check(token, { audience })
      if (!result.valid) return result
      if (await isRevoked(result.claims.jti, result.claims.sid)) return { valid: false, error: 'revoked' }
      return result
    },

    async introspect (token, clientId) {
      if (looksLikeJwt(token)) {
        // Any audience: the caller is the client the token was issued to.
        const result = await tokens.verify(token, null)
        if (!result.valid || result.claims.client_id !== clientId) return { active: false }
        const { claims } = result
        return {
          active: true,
          token_type: 'Bearer',
          client_id: clientId,
          sub: claims.sub,
          iss: claims.iss,
          aud: claims.aud,
          exp: claims.exp,
          iat: claims.iat,
          jti: claims.jti,
          ...(typeof claims.sid === 'string' ? { sid: claims.sid } : {}),
          ...(typeof claims.scope === 'string' ? { scope: claims.scope } : {})
        }
      }
      const record = await readRefreshToken(token)
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
        ...(record.scope === '' ? {} : { scope: record.scope })
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
        if (exp * 1000 > Date.now()) await store.revocations.denyAccessToken(jti, exp)
        return
      }
      const outcome = await store.refreshTokens.revoke(tokenHash(token), clientId, sessionRevocationTtl)
      if (outcome === 'foreign') {
        throw new OAuthError(400, 'unauthorized_client', 'the token was not issued to this client')
      }
    }
  }
  fastify.decorate('tokens', tokens)
}, { name: 'tokens', dependencies: ['config', 'store', 'keys'] })
