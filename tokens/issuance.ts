// Issuing tokens: a new session for client_credentials, the exchange of a
// refresh token for new tokens in its session, and token exchange (RFC 8693):
// a narrower access token for the subject of one of ours.
import { randomBytes, randomUUID } from 'node:crypto'
import type { RefreshTokenRecord } from '../storage/refresh-tokens.ts'
import type { Client } from '../storage/clients.ts'
import { invalidDpopProof, invalidGrant, invalidRequest, OAuthError } from '../plugins/errors.ts'
import type { AccessTokenClaims } from '../plugins/keys.ts'
import { scopesOf } from '../schemas/scope.ts'
import { isClaimSet, refreshTokenHash, sessionRevocationTtl, type TokenDependencies } from './session.ts'

export interface TokenResponse {
  access_token: string
  /** DPoP when the access token is bound to the key of the request's proof (RFC 9449 §5) */
  token_type: 'Bearer' | 'DPoP'
  expires_in: number
  /** every grant but token exchange */
  refresh_token?: string
  /** the granted scope, when it differs from the requested one (RFC 6749 §5.1) */
  scope?: string
  /** token exchange only (RFC 8693 §2.2.1) */
  issued_token_type?: string
}

/** RFC 8693 §3: the token type identifier of an access token. */
export const ACCESS_TOKEN_TYPE_ID = 'urn:ietf:params:oauth:token-type:access_token'

/** How deep `act` claims may nest (RFC 8693 §4.1): a longer chain of actors is refused. */
export const MAX_ACTOR_CHAIN = 5

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
export const REGISTERED_CLAIMS: ReadonlySet<string> = new Set(['iss', 'sub', 'aud', 'exp', 'nbf', 'iat', 'jti', 'client_id', 'scope', 'sid', 'auth_time', 'acr', 'amr', 'cnf', 'typ', 'act', 'may_act'])

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
  /**
   * token exchange (RFC 8693): an access token for the subject of `subject`
   * (verified claims of one of ours), issued to `client`, within the
   * subject's scope and lifetime and in its session; with `actor`, the
   * actor's identity added to the chain of actors (act). No refresh token.
   */
  exchange: (subject: AccessTokenClaims, actor: AccessTokenClaims | undefined, client: Client, request: TokenRequest) => Promise<TokenResponse>
}

/**
 * The scope to grant, as a list; throws invalid_scope for a scope the client
 * may not have or beyond `ceiling` (which the message calls `limit`).
 */
function grantScope (client: Client, requested: string[] | undefined, ceiling: string[], limit = 'this client'): string[] {
  if (requested === undefined) return ceiling.filter((scope) => client.scopes.includes(scope))
  const refused = requested.find((scope) => !ceiling.includes(scope) || !client.scopes.includes(scope))
  if (refused !== undefined) throw new OAuthError(400, 'invalid_scope', `scope ${refused.slice(0, 64)} is not allowed for ${limit}`)
  return requested
}

function grantAudience (config: TokenDependencies['config'], client: Client, requested: string | undefined): string {
  if (requested === undefined || requested === config.audience) return config.audience
  if (!client.audiences.includes(requested)) throw new OAuthError(400, 'invalid_target', `audience ${requested.slice(0, 64)} is not allowed for this client`)
  return requested
}

/** What one access token says besides what every one does. */
interface AccessGrant {
  sub: string
  aud: string
  /** the session it belongs to; revoking the session revokes the token */
  sid?: string
  /** space-delimited; '' for none */
  scope: string
  exp: number
  /** RFC 8693 §4.1 chain of actors */
  act?: Record<string, unknown>
  /** RFC 9449 §6.1: the thumbprint of the key the token is bound to */
  jkt?: string
}

/** The claims of an access token issued to `client`, issued at `now`. */
function accessClaims (config: TokenDependencies['config'], client: Client, grant: AccessGrant, now: number): AccessTokenClaims {
  return {
    // Custom claims first, so that the registered ones below always win.
    ...customClaims(client.claims),
    iss: config.issuer,
    sub: grant.sub,
    aud: grant.aud,
    iat: now,
    exp: grant.exp,
    jti: randomUUID(),
    client_id: client.id,
    ...(grant.sid === undefined ? {} : { sid: grant.sid }),
    ...(grant.scope === '' ? {} : { scope: grant.scope }),
    ...(grant.act === undefined ? {} : { act: grant.act }),
    ...(grant.jkt === undefined ? {} : { cnf: { jkt: grant.jkt } })
  }
}

/** RFC 6749 §5.1: the granted scope is named when it differs from the requested one. */
function scopeIfChanged (requested: TokenRequest, granted: string): { scope?: string } {
  return (requested.scope?.join(' ') ?? '') === granted ? {} : { scope: granted }
}

/** What a session's refresh tokens carry from one to the next. */
interface Session {
  sid: string
  scope: string
  aud: string
  /**
   * The DPoP key the session is bound to, fixed when it begins: a proof on
   * the refresh of a bearer session binds that access token only. Binding the
   * session then would let a thief who refreshes a stolen bearer token with a
   * key of its own escape reuse detection (a used bound token presented
   * without its key is refused before it counts as reused).
   */
  jkt?: string
}

/** A session's next pair of tokens: the refresh token is stored before either is handed out. */
async function issueTokens ({ config, keys, store }: TokenDependencies, client: Client, session: Session, accessScope: string, requested: TokenRequest): Promise<TokenResponse> {
  const now = Math.floor(Date.now() / 1000)
  const refreshToken = randomBytes(config.refreshTokenBytes).toString('base64url')
  const record: RefreshTokenRecord = { client_id: client.id, sid: session.sid, scope: session.scope, aud: session.aud, iat: now, exp: now + config.refreshTokenTtl }
  // RFC 9449 §6.1: the access token names the key of the request's proof;
  // the session keeps the key it began with (see Session.jkt).
  if (session.jkt !== undefined) record.jkt = session.jkt
  const grant = { sub: client.id, aud: session.aud, sid: session.sid, scope: accessScope, exp: now + config.accessTokenTtl, jkt: requested.jkt }
  const accessToken = keys.sign(accessClaims(config, client, grant, now))
  // Stored before it is handed out: a token the client holds always exists.
  await store.refreshTokens.put(refreshTokenHash(refreshToken), record)
  return {
    access_token: accessToken,
    token_type: requested.jkt === undefined ? 'Bearer' : 'DPoP',
    expires_in: config.accessTokenTtl,
    refresh_token: refreshToken,
    ...scopeIfChanged(requested, accessScope)
  }
}

/** How many actors an act claim names, itself and those nested in it. */
function chainLength (act: Record<string, unknown>): number {
  let length = 0
  for (let link: unknown = act; isClaimSet(link); link = link.act) length++
  return length
}

/**
 * RFC 8693 §4.1: the actors of an exchanged token, the current one outermost
 * and the subject's own chain nested in it; without an actor, the subject's
 * chain as it is.
 */
function actorChain (subject: AccessTokenClaims, actor: AccessTokenClaims | undefined): Record<string, unknown> | undefined {
  const previous = isClaimSet(subject.act) ? subject.act : undefined
  if (actor === undefined) return previous
  const act = {
    sub: actor.sub,
    ...(typeof actor.client_id === 'string' ? { client_id: actor.client_id } : {}),
    ...(previous === undefined ? {} : { act: previous })
  }
  if (chainLength(act) > MAX_ACTOR_CHAIN) throw invalidRequest(`the chain of actors would be longer than ${MAX_ACTOR_CHAIN}`)
  return act
}

export function tokenIssuance (dependencies: TokenDependencies): TokenIssuance {
  const { config, store, log, stats } = dependencies
  return {
    async issueForClient (client, request) {
      const scope = grantScope(client, request.scope, request.scope === undefined ? client.defaultScopes : client.scopes).join(' ')
      const aud = grantAudience(config, client, request.audience)
      return await issueTokens(dependencies, client, { sid: randomUUID(), scope, aud, jkt: request.jkt }, scope, request)
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
      const session = { sid: record.sid, scope: record.scope, aud: record.aud, jkt: record.jkt }
      const accessScope = requested ?? grantScope(client, undefined, scopesOf(record.scope))
      return await issueTokens(dependencies, client, session, accessScope.join(' '), request)
    },

    async refreshTokenOwner (refreshToken) {
      return (await store.refreshTokens.get(refreshTokenHash(refreshToken)))?.client_id
    },

    async exchange (subject, actor, client, request) {
      // Narrower, never wider: within the subject's scope and the client's.
      const subjectScope = scopesOf(subject.scope)
      const scope = grantScope(client, request.scope, subjectScope, 'this client and the subject_token').join(' ')
      const aud = grantAudience(config, client, request.audience)
      const act = actorChain(subject, actor)
      const now = Math.floor(Date.now() / 1000)
      // It never outlives a token it was made from.
      const exp = Math.min(now + config.accessTokenTtl, subject.exp, actor?.exp ?? Infinity)
      const sid = typeof subject.sid === 'string' ? subject.sid : undefined
      const claims = accessClaims(config, client, { sub: subject.sub, aud, sid, scope, exp, act, jkt: request.jkt }, now)
      return {
        access_token: dependencies.keys.sign(claims),
        issued_token_type: ACCESS_TOKEN_TYPE_ID,
        token_type: request.jkt === undefined ? 'Bearer' : 'DPoP',
        expires_in: exp - now,
        ...scopeIfChanged(request, scope)
      }
    }
  }
}
