import { createHash, randomBytes, randomUUID } from 'node:crypto'
import fp from 'fastify-plugin'
import type { Redis } from 'ioredis'
import { guard, invalidGrant, OAuthError } from './errors.js'
import type { AccessTokenClaims, TokenCheck } from './keys.js'

/** What Redis keeps for a refresh token, under the SHA-256 of the token. */
export interface RefreshTokenRecord {
  client_id: string
  /** the session: one client_credentials grant and every refresh from it */
  sid: string
  /** seconds since epoch */
  iat: number
  exp: number
}

export interface TokenResponse {
  access_token: string
  token_type: 'Bearer'
  expires_in: number
  refresh_token: string
}

export interface Tokens {
  /** client_credentials: a new session with an access and a refresh token. */
  issueForClient: (clientId: string) => Promise<TokenResponse>
  /**
   * refresh_token: consumes the refresh token (atomically: of two concurrent
   * refreshes with one token, exactly one gets here) and issues new tokens in
   * the same session. `clientId` null skips the ownership check.
   */
  refresh: (refreshToken: string, clientId: string | null) => Promise<{ response: TokenResponse, record: RefreshTokenRecord }>
  /** The client a refresh token belongs to, without consuming it. */
  refreshTokenOwner: (refreshToken: string) => Promise<string | undefined>
  /** Signature, claims, and the deny-list. */
  verify: (token: string) => Promise<TokenCheck>
  /**
   * RFC 7662 introspection for `clientId`: the token's metadata when it is
   * active and was issued to that client, otherwise `{ active: false }`.
   */
  introspect: (token: string, clientId: string) => Promise<Introspection>
  /**
   * RFC 7009 revocation by `clientId`. Unknown, expired or already revoked
   * tokens are ignored; a valid token of another client is refused.
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

// Returns the record and deletes the key if the token exists and, when a
// client id is given, belongs to that client. A token of another client is
// left in place (its owner can still use it) and reported as 'foreign'.
const CONSUME_REFRESH_TOKEN = `
local value = redis.call('GET', KEYS[1])
if not value then return {'missing'} end
if ARGV[1] ~= '' then
  local ok, record = pcall(cjson.decode, value)
  if not ok or type(record) ~= 'table' or record.client_id ~= ARGV[1] then return {'foreign'} end
end
redis.call('DEL', KEYS[1])
return {'consumed', value}
`

interface RedisWithScripts extends Redis {
  consumeRefreshToken: (key: string, clientId: string) => Promise<[string, string?]>
}

function looksLikeJwt (token: string): boolean {
  return token.split('.').length === 3
}

export default fp(async (fastify) => {
  const { config, keys, revocation } = fastify
  const redis = fastify.redis as unknown as RedisWithScripts
  redis.defineCommand('consumeRefreshToken', { numberOfKeys: 1, lua: CONSUME_REFRESH_TOKEN })

  const refreshKey = (token: string): string => `refresh:${createHash('sha256').update(token).digest('base64url')}`

  function issueAccessToken (clientId: string, now: number): string {
    const claims: AccessTokenClaims = {
      iss: config.issuer,
      sub: clientId,
      aud: config.audience,
      iat: now,
      exp: now + config.accessTokenTtl,
      jti: randomUUID(),
      client_id: clientId
    }
    return keys.sign(claims)
  }

  async function issueTokens (clientId: string, sid: string): Promise<TokenResponse> {
    const now = Math.floor(Date.now() / 1000)
    const refreshToken = randomBytes(config.refreshTokenBytes).toString('base64url')
    const record: RefreshTokenRecord = { client_id: clientId, sid, iat: now, exp: now + config.refreshTokenTtl }
    const accessToken = issueAccessToken(clientId, now)
    // Stored before it is handed out: a token the client holds always exists.
    await guard('redis', redis.set(refreshKey(refreshToken), JSON.stringify(record), 'EXAT', record.exp))
    return {
      access_token: accessToken,
      token_type: 'Bearer',
      expires_in: config.accessTokenTtl,
      refresh_token: refreshToken
    }
  }

  async function consume (refreshToken: string, clientId: string | null): Promise<RefreshTokenRecord | 'foreign' | undefined> {
    const [status, value] = await guard('redis', redis.consumeRefreshToken(refreshKey(refreshToken), clientId ?? ''))
    if (status === 'foreign') return 'foreign'
    if (status !== 'consumed' || value === undefined) return undefined
    return JSON.parse(value) as RefreshTokenRecord
  }

  const tokens: Tokens = {
    issueForClient: async (clientId) => await issueTokens(clientId, randomUUID()),

    async refresh (refreshToken, clientId) {
      const record = await consume(refreshToken, clientId)
      if (record === undefined || record === 'foreign') {
        throw invalidGrant('the refresh token is invalid, expired, revoked or already used')
      }
      return { response: await issueTokens(record.client_id, record.sid), record }
    },

    async refreshTokenOwner (refreshToken) {
      const value = await guard('redis', redis.get(refreshKey(refreshToken)))
      if (value === null) return undefined
      return (JSON.parse(value) as RefreshTokenRecord).client_id
    },

    async verify (token) {
      const result = keys.check(token)
      if (!result.valid) return result
      if (await revocation.isDenied(result.claims.jti)) return { valid: false, error: 'revoked' }
      return result
    },

    async introspect (token, clientId) {
      if (looksLikeJwt(token)) {
        const result = await tokens.verify(token)
        if (!result.valid || result.claims.sub !== clientId) return { active: false }
        const { claims } = result
        return {
          active: true,
          token_type: 'Bearer',
          client_id: claims.sub,
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
      const value = await guard('redis', redis.get(refreshKey(token)))
      if (value === null) return { active: false }
      const record = JSON.parse(value) as RefreshTokenRecord
      if (record.client_id !== clientId) return { active: false }
      return {
        active: true,
        token_type: 'refresh_token',
        client_id: record.client_id,
        sub: record.client_id,
        iss: config.issuer,
        exp: record.exp,
        iat: record.iat,
        sid: record.sid
      }
    },

    async revoke (token, clientId) {
      if (looksLikeJwt(token)) {
        // Expired tokens are still read so that their owner is known; there
        // is nothing to deny for them, and denyAccessToken skips them.
        const result = keys.check(token, { ignoreExpiration: true })
        if (!result.valid) return
        if (result.claims.sub !== clientId) {
          throw new OAuthError(400, 'unauthorized_client', 'the token was not issued to this client')
        }
        await revocation.denyAccessToken(result.claims.jti, result.claims.exp)
        return
      }
      const outcome = await consume(token, clientId)
      if (outcome === 'foreign') {
        throw new OAuthError(400, 'unauthorized_client', 'the token was not issued to this client')
      }
    }
  }
  fastify.decorate('tokens', tokens)
}, { name: 'tokens', dependencies: ['config', 'redis', 'keys', 'revocation'] })
