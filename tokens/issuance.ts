// Issuing tokens: a new session for client_credentials, and the exchange of
// a refresh token for new tokens in its session.
import { randomBytes, randomUUID } from 'node:crypto'
import type { RefreshTokenRecord } from '../storage/refresh-tokens.ts'
import type { Client } from '../storage/clients.ts'
import { invalidDpopProof, invalidGrant, OAuthError } from '../plugins/errors.ts'
import type { AccessTokenClaims } from '../plugins/keys.ts'
import { refreshTokenHash, sessionRevocationTtl, type TokenDependencies } from './session.ts'

export interface TokenResponse {
  access_token: string
  /** DPoP when the access token is bound to the key of the request's proof (RFC 9449 §5) */
  token_type: 'Bearer' | 'DPoP'
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
  /**
   * RFC 7638 thumbprint of the key of the request's DPoP proof (plugins/dpop.ts),
   * undefined without one: the tokens are bound to it, and a bound session
   * is refreshed only with it. Not optional, so that no grant forgets it.
   */
  jkt: string | undefined
}

/** Claims a client's custom claims can never set: RFC 7519 §4.1, RFC 9068 §2.2, and ours. */
export const REGISTERED_CLAIMS: ReadonlySet<string> = new Set(['iss', 'sub', 'aud', 'exp', 'nbf', 'iat', 'jti', 'client_id', 'scope', 'sid', 'auth_time', 'acr', 'amr', 'cnf', 'typ'])

export function customClaims (claims: Record<string, unknown>): Record<string, unknown> {
  return Object.fromEntries(Object.entries(claims).filter(([name]) => !REGISTERED_CLAIMS.has(name)))
}

/** The one answer to a refresh token that cannot be used, whatever the reason. */
export const INVALID_REFRESH_TOKEN = 'the refresh token is invalid, expired, revoked or already used'

export interface TokenIssuance {
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
}

/** The scope to grant, as a list; throws invalid_scope for a scope the client may not have. */
function grantScope (client: Client, requested: string[] | undefined, ceiling: string[]): string[] {
  if (requested === undefined) return ceiling.filter((scope) => client.scopes.includes(scope))
  const refused = requested.find((scope) => !ceiling.includes(scope) || !client.scopes.includes(scope))
  if (refused !== undefined) throw new OAuthError(400, 'invalid_scope', `scope ${refused.slice(0, 64)} is not allowed for this client`)
  return requested
}

function grantAudience (config: TokenDependencies['config'], client: Client, requested: string | undefined): string {
  if (requested === undefined || requested === config.audience) return config.audience
  if (!client.audiences.includes(requested)) throw new OAuthError(400, 'invalid_target', `audience ${requested.slice(0, 64)} is not allowed for this client`)
  return requested
}

/** A session's next pair of tokens: the refresh token is stored before either is handed out. */
async function issueTokens ({ config, keys, store }: TokenDependencies, client: Client, session: { sid: string, scope: string, aud: string }, accessScope: string, requested: TokenRequest): Promise<TokenResponse> {
  const now = Math.floor(Date.now() / 1000)
  const refreshToken = randomBytes(config.refreshTokenBytes).toString('base64url')
  const record: RefreshTokenRecord = { client_id: client.id, sid: session.sid, scope: session.scope, aud: session.aud, iat: now, exp: now + config.refreshTokenTtl }
  // RFC 9449 §5, §6.1: the access token names the key, the session remembers it.
  if (requested.jkt !== undefined) record.jkt = requested.jkt
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
    ...(accessScope === '' ? {} : { scope: accessScope }),
    ...(requested.jkt === undefined ? {} : { cnf: { jkt: requested.jkt } })
  }
  const accessToken = keys.sign(claims)
  // Stored before it is handed out: a token the client holds always exists.
  await store.refreshTokens.put(refreshTokenHash(refreshToken), record)
  const response: TokenResponse = {
    access_token: accessToken,
    token_type: requested.jkt === undefined ? 'Bearer' : 'DPoP',
    expires_in: config.accessTokenTtl,
    refresh_token: refreshToken
  }
  if ((requested.scope?.join(' ') ?? '') !== accessScope) response.scope = accessScope
  return response
}

export function tokenIssuance (dependencies: TokenDependencies): TokenIssuance {
  const { config, store, log, stats } = dependencies
  return {
    async issueForClient (client, request) {
      const scope = grantScope(client, request.scope, request.scope === undefined ? client.defaultScopes : client.scopes).join(' ')
      const aud = grantAudience(config, client, request.audience)
      return await issueTokens(dependencies, client, { sid: randomUUID(), scope, aud }, scope, request)
    },

    async refresh (refreshToken, client, request) {
      // Scopes the client has lost since the session began are not granted again.
      const requested = request.scope === undefined ? undefined : grantScope(client, request.scope, client.scopes)
      const outcome = await store.refreshTokens.exchange(refreshTokenHash(refreshToken), {
        clientId: client.id,
        scope: requested?.join(' ') ?? '',
        audience: request.audience ?? '',
        allowedAudiences: [config.audience, ...client.audiences],
        jkt: request.jkt,
        sessionTtl: sessionRevocationTtl(config)
      })
      const status = outcome.status
      // invalid_dpop_proof, not invalid_grant: the token is still good, with its key.
      if (status === 'key') throw invalidDpopProof(request.jkt === undefined ? 'the refresh token is bound to a DPoP key: send a proof of it' : 'the DPoP proof is not made with the key the refresh token is bound to')
      if (status === 'scope') throw new OAuthError(400, 'invalid_scope', 'a refresh may narrow the scope, never widen it')
      if (status === 'target') throw new OAuthError(400, 'invalid_target', 'a refresh keeps the audience of its session')
      if (status === 'lost') throw invalidGrant('the client may no longer obtain tokens for this session\'s audience; request a new grant')
      if (status === 'reused') {
        stats.refreshTokenReuses++
        log.warn({ clientId: client.id }, 'a used refresh token was presented again; its session is revoked')
      }
      if (outcome.status !== 'ok') throw invalidGrant(INVALID_REFRESH_TOKEN)
      const record = outcome.record
      const session = { sid: record.sid, scope: record.scope, aud: record.aud }
      const accessScope = requested ?? grantScope(client, undefined, record.scope.split(' ').filter((scope) => scope !== ''))
      return await issueTokens(dependencies, client, session, accessScope.join(' '), request)
    },

    async refreshTokenOwner (refreshToken) {
      return (await store.refreshTokens.get(refreshTokenHash(refreshToken)))?.client_id
    }
  }
}
