import { createHash, randomBytes, randomUUID } from 'node:crypto'
import fp from 'fastify-plugin'
import type { Redis } from 'ioredis'
import { guard, invalidGrant, OAuthError } from './errors.js'
import type { AccessTokenClaims, TokenCheck } from './keys.js'
import type { Client } from './clients.js'

/** What Redis keeps for a refresh token, under the SHA-256 of the token. */
export interface RefreshTokenRecord {
  client_id: string
  /** the session: one client_credentials grant and every refresh from it */
  sid: string
  /** the session's scope, space-delimited ('' for none); a refresh may narrow its access token, never this */
  scope: string
  /** the session's audience */
  aud: string
  /** seconds since epoch */
  iat: number
  exp: number
  /** set when the token has been exchanged; presenting it again revokes the session */
  used?: boolean
}

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

// Exchanges a refresh token, in one round trip. KEYS[1]: the token's record.
// ARGV: the client that must own it, the key prefix, the
// requested scopes (space-delimited, '' for none), how long a revoked session
// stays revoked, the requested audience ('' for the session's), and the
// audiences the client may still use (a JSON array). Outcomes:
//   missing  no such token (unknown, expired, or its session was revoked by revocation)
//   foreign  another client's token; left as it is
//   revoked  the token's session is revoked
//   reused   the token was exchanged before: its session is revoked now (RFC 9700 §4.14.2)
//   scope    a scope beyond the session's was asked for; the token stays usable
//   target   another audience than the session's was asked for; the token stays usable
//   lost     the client may no longer use the session's audience; the token is left as it is
//   ok       the token is marked used, and its record returned
const EXCHANGE_REFRESH_TOKEN = `
local value = redis.call('GET', KEYS[1])
if not value then return {'missing'} end
local ok, record = pcall(cjson.decode, value)
if not ok or type(record) ~= 'table' or type(record.sid) ~= 'string' then return {'missing'} end
if record.client_id ~= ARGV[1] then return {'foreign'} end
local session = ARGV[2] .. 'revoked-session:' .. record.sid
if redis.call('EXISTS', session) == 1 then return {'revoked'} end
if record.used then
  redis.call('SET', session, '1', 'EX', ARGV[4])
  return {'reused'}
end
if ARGV[3] ~= '' then
  local granted = {}
  for scope in string.gmatch(record.scope, '%S+') do granted[scope] = true end
  for scope in string.gmatch(ARGV[3], '%S+') do
    if not granted[scope] then return {'scope'} end
  end
end
if ARGV[5] ~= '' and ARGV[5] ~= record.aud then return {'target'} end
local allowed = false
for _, audience in ipairs(cjson.decode(ARGV[6])) do
  if audience == record.aud then allowed = true end
end
if not allowed then return {'lost'} end
record.used = true
redis.call('SET', KEYS[1], cjson.encode(record), 'KEEPTTL')
return {'ok', value}
`

// Revokes the session of a refresh token. KEYS[1]: the token's record. ARGV:
// the client that must own it, the key prefix, and the session's revocation
// lifetime. Returns 'missing', 'foreign' or 'revoked'.
const REVOKE_REFRESH_TOKEN = `
local value = redis.call('GET', KEYS[1])
if not value then return 'missing' end
local ok, record = pcall(cjson.decode, value)
if not ok or type(record) ~= 'table' or type(record.sid) ~= 'string' then return 'missing' end
if record.client_id ~= ARGV[1] then return 'foreign' end
redis.call('SET', ARGV[2] .. 'revoked-session:' .. record.sid, '1', 'EX', ARGV[3])
redis.call('DEL', KEYS[1])
return 'revoked'
`

interface RedisWithScripts extends Redis {
  exchangeRefreshToken: (key: string, clientId: string, prefix: string, scope: string, ttl: number, audience: string, allowedAudiences: string) => Promise<[string, string?]>
  revokeRefreshToken: (key: string, clientId: string, prefix: string, ttl: number) => Promise<string>
}

function looksLikeJwt (token: string): boolean {
  return token.split('.').length === 3
}

/** Claims a client's custom claims can never set: RFC 7519 §4.1, RFC 9068 §2.2, and ours. */
const REGISTERED_CLAIMS = new Set(['iss', 'sub', 'aud', 'exp', 'nbf', 'iat', 'jti', 'client_id', 'scope', 'sid', 'auth_time', 'acr', 'amr', 'cnf', 'typ'])

export function customClaims (claims: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(claims).filter(([name]) => !REGISTERED_CLAIMS.has(name)))
}

const INVALID_REFRESH_TOKEN = 'the refresh token is invalid, expired, revoked or already used'

export default fp(async (fastify) => {
  const { config, keys } = fastify
  const redis = fastify.redis as unknown as RedisWithScripts
  redis.defineCommand('exchangeRefreshToken', { numberOfKeys: 1, lua: EXCHANGE_REFRESH_TOKEN })
  redis.defineCommand('revokeRefreshToken', { numberOfKeys: 1, lua: REVOKE_REFRESH_TOKEN })

  const prefix = config.redisKeyPrefix
  // A session's last token expires at most this long after its revocation.
  const sessionRevocationTtl = Math.max(config.accessTokenTtl, config.refreshTokenTtl)
  const refreshKey = (token: string): string => `refresh:${createHash('sha256').update(token).digest('base64url')}`
  const denyKey = (jti: string): string => `deny:${jti}`
  const sessionKey = (sid: string): string => `revoked-session:${sid}`

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
    await guard('redis', redis.set(refreshKey(refreshToken), JSON.stringify(record), 'EXAT', record.exp))
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
    const names = typeof sid === 'string' ? [denyKey(jti), sessionKey(sid)] : [denyKey(jti)]
    return (await guard('redis', redis.exists(...names))) > 0
  }

  async function readRefreshToken (token: string): Promise<RefreshTokenRecord | undefined> {
    const value = await guard('redis', redis.get(refreshKey(token)))
    if (value === null) return undefined
    return JSON.parse(value) as RefreshTokenRecord
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
      const [status, value] = await guard('redis', redis.exchangeRefreshToken(
        refreshKey(refreshToken), client.id, prefix, requested?.join(' ') ?? '', sessionRevocationTtl, request.audience ?? '',
        JSON.stringify([config.audience, ...client.audiences])))
      if (status === 'scope') throw new OAuthError(400, 'invalid_scope', 'a refresh may narrow the scope, never widen it')
      if (status === 'target') throw new OAuthError(400, 'invalid_target', 'a refresh keeps the audience of its session')
      if (status === 'lost') throw invalidGrant('the client may no longer obtain tokens for this session\'s audience; request a new grant')
      if (status === 'reused') fastify.log.warn({ clientId: client.id }, 'a used refresh token was presented again; its session is revoked')
      if (status !== 'ok' || value === undefined) throw invalidGrant(INVALID_REFRESH_TOKEN)
      const record = JSON.parse(value) as RefreshTokenRecord
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
      if (await guard('redis', redis.exists(sessionKey(record.sid))) > 0) return { active: false }
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
        if (exp * 1000 > Date.now()) await guard('redis', redis.set(denyKey(jti), '1', 'EXAT', exp))
        return
      }
      const outcome = await guard('redis', redis.revokeRefreshToken(refreshKey(token), clientId, prefix, sessionRevocationTtl))
      if (outcome === 'foreign') {
        throw new OAuthError(400, 'unauthorized_client', 'the token was not issued to this client')
      }
    }
  }
  fastify.decorate('tokens', tokens)
}, { name: 'tokens', dependencies: ['config', 'redis', 'keys'] })
