// The requests of the soak's load generator: the tokens it keeps to use, and
// each kind of request of the mix made from them, with the check of its answer.
import { ACCESS_POOL_SIZE, FORM, type Kind } from './soak-messages.ts'

/** Unused refresh tokens kept; beyond it, the oldest half is forgotten. */
const REFRESH_QUEUE_MAX = 4000

export interface PoolEntry {
  token: string
  /** a local number for the token's session (refreshes keep it) */
  session: number
  /** for a refresh token: the access token issued with it */
  access?: string
}

export interface Outgoing {
  method: 'GET' | 'POST'
  path: string
  headers: Record<string, string>
  body?: string
}

export interface Planned {
  kind: Kind
  outgoing: Outgoing
  /** undefined when the answer is the expected one, else what was wrong */
  check: (status: number, body: string) => string | undefined
  /** after the answer, whatever it is */
  after?: () => void
  /** after an expected answer: requests to send to other instances 1 s later */
  crossChecks?: Planned[]
}

/**
 * Tokens. The access pool is a ring of the most recent access tokens (a
 * revoked one leaves a hole); the refresh queue holds each session's one
 * unused refresh token. A token is revoked only while no verify or
 * introspect of its session is in flight, so that every answer about a
 * token of the pool must say valid or active.
 */
export class TokenPools {
  readonly #access: Array<PoolEntry | undefined> = []
  #accessWritten = 0
  readonly #refresh: PoolEntry[] = []
  readonly #busySessions = new Map<number, number>()

  addAccess (entry: PoolEntry): void {
    this.#access[this.#accessWritten % ACCESS_POOL_SIZE] = entry
    this.#accessWritten++
  }

  addRefresh (entry: PoolEntry): void {
    this.#refresh.push(entry)
    if (this.#refresh.length > REFRESH_QUEUE_MAX) this.#refresh.splice(0, REFRESH_QUEUE_MAX / 2)
  }

  /** The newest unused refresh token, taken out of the queue. */
  takeRefresh (): PoolEntry | undefined {
    return this.#refresh.pop()
  }

  busy (session: number): void {
    this.#busySessions.set(session, (this.#busySessions.get(session) ?? 0) + 1)
  }

  idle (session: number): void {
    const count = (this.#busySessions.get(session) ?? 1) - 1
    if (count <= 0) this.#busySessions.delete(session)
    else this.#busySessions.set(session, count)
  }

  /** A random access token of the pool (`needIdle`: of a session with nothing in flight). */
  pickAccess (needIdle: boolean): { entry: PoolEntry, slot: number } | undefined {
    const filled = Math.min(this.#accessWritten, ACCESS_POOL_SIZE)
    if (filled === 0) return undefined
    for (let attempt = 0; attempt < 16; attempt++) {
      const slot = Math.floor(Math.random() * filled)
      const entry = this.#access[slot]
      if (entry !== undefined && (!needIdle || !this.#busySessions.has(entry.session))) return { entry, slot }
    }
    return undefined
  }

  /** An access token about to be revoked leaves the pool. */
  dropAccess (slot: number): void {
    this.#access[slot] = undefined
  }

  /** A refresh token of an idle session, among the oldest, taken out with all of its session's access tokens. */
  takeIdleSession (): PoolEntry | undefined {
    const index = this.#refresh.findIndex((entry, position) => position < 16 && !this.#busySessions.has(entry.session))
    const entry = index < 0 ? undefined : this.#refresh.splice(index, 1)[0]
    if (entry === undefined) return undefined
    for (let slot = 0; slot < this.#access.length; slot++) {
      if (this.#access[slot]?.session === entry.session) this.#access[slot] = undefined
    }
    return entry
  }
}

export const status200 = (status: number): string | undefined => status === 200 ? undefined : String(status)

export function tokenPair (body: string): { access: string, refresh: string } | undefined {
  const parsed = JSON.parse(body) as { access_token?: unknown, refresh_token?: unknown }
  return typeof parsed.access_token === 'string' && typeof parsed.refresh_token === 'string'
    ? { access: parsed.access_token, refresh: parsed.refresh_token }
    : undefined
}

/** Turns a kind of request into a request, with the tokens of the pools and the check of its answer. */
export class RequestPlanner {
  readonly #basic: string
  readonly #pools: TokenPools
  #sessions = 0
  #revocations = 0

  constructor (clientId: string, clientSecret: string, pools: TokenPools) {
    this.#basic = 'Basic ' + Buffer.from(`${clientId}:${clientSecret}`).toString('base64')
    this.#pools = pools
  }

  /** undefined when there is no token to use yet. */
  plan (kind: Kind): Planned | undefined {
    switch (kind) {
      case 'client_credentials':
        return { kind, outgoing: this.#form('/oauth/token', 'grant_type=client_credentials'), check: this.#issued(this.#sessions++) }
      case 'refresh_token': {
        const entry = this.#pools.takeRefresh()
        if (entry === undefined) return undefined
        return { kind, outgoing: this.#form('/oauth/token', `grant_type=refresh_token&refresh_token=${encodeURIComponent(entry.token)}`), check: this.#issued(entry.session) }
      }
      case 'verify':
      case 'introspect':
        return this.#planTokenCheck(kind)
      case 'revoke':
        return this.#planRevoke()
      case 'jwks':
        return { kind, outgoing: { method: 'GET', path: '/.well-known/jwks.json', headers: {} }, check: status200 }
      case 'discovery':
        return { kind, outgoing: { method: 'GET', path: '/.well-known/openid-configuration', headers: {} }, check: status200 }
    }
  }

  #form (path: string, body: string): Outgoing {
    return { method: 'POST', path, headers: { authorization: this.#basic, 'content-type': FORM }, body }
  }

  #issued (session: number) {
    return (status: number, body: string): string | undefined => {
      if (status !== 200) return String(status)
      const pair = tokenPair(body)
      if (pair === undefined) return '200 without tokens'
      this.#pools.addAccess({ token: pair.access, session })
      this.#pools.addRefresh({ token: pair.refresh, session, access: pair.access })
      return undefined
    }
  }

  // A token of the pool must verify as valid and introspect as active.
  #planTokenCheck (kind: 'verify' | 'introspect'): Planned | undefined {
    const picked = this.#pools.pickAccess(false)
    if (picked === undefined) return undefined
    const { session, token } = picked.entry
    this.#pools.busy(session)
    const after = (): void => this.#pools.idle(session)
    if (kind === 'verify') {
      return {
        kind,
        outgoing: { method: 'POST', path: '/oauth/verify', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token }) },
        check: (status, body) => {
          if (status !== 200) return String(status)
          const result = JSON.parse(body) as { valid?: unknown, error?: unknown }
          return result.valid === true ? undefined : `200 valid:false (${String(result.error)})`
        },
        after
      }
    }
    return {
      kind,
      outgoing: this.#form('/oauth/introspect', `token=${encodeURIComponent(token)}`),
      check: (status, body) => {
        if (status !== 200) return String(status)
        return (JSON.parse(body) as { active?: unknown }).active === true ? undefined : '200 active:false'
      },
      after
    }
  }

  // In turn an access token (it leaves the pool) and a refresh token (its
  // whole session ends: its access tokens leave the pool too). Each comes
  // with the checks, on other instances, that what it revoked is refused.
  #planRevoke (): Planned | undefined {
    this.#revocations++
    if (this.#revocations % 2 === 0) {
      const picked = this.#pools.pickAccess(true)
      if (picked === undefined) return undefined
      this.#pools.dropAccess(picked.slot)
      const { token } = picked.entry
      return { kind: 'revoke', outgoing: this.#form('/oauth/revoke', `token=${encodeURIComponent(token)}&token_type_hint=access_token`), check: status200, crossChecks: [verifyRevoked(token)] }
    }
    const entry = this.#pools.takeIdleSession()
    if (entry === undefined) return undefined
    const crossChecks = [this.#refreshRevoked(entry.token)]
    // The session's access token must stop verifying with it.
    if (entry.access !== undefined) crossChecks.unshift(verifyRevoked(entry.access))
    return { kind: 'revoke', outgoing: this.#form('/oauth/revoke', `token=${encodeURIComponent(entry.token)}&token_type_hint=refresh_token`), check: status200, crossChecks }
  }

  #refreshRevoked (token: string): Planned {
    return {
      kind: 'refresh_revoked',
      outgoing: this.#form('/oauth/token', `grant_type=refresh_token&refresh_token=${encodeURIComponent(token)}`),
      check: (status, body) => {
        if (status === 200) return 'revoked but refreshed after 1 s'
        if (status !== 400) return String(status)
        const { error } = JSON.parse(body) as { error?: unknown }
        return error === 'invalid_grant' ? undefined : `400 ${String(error)}`
      }
    }
  }
}

/** A verify that must answer revoked. */
function verifyRevoked (token: string): Planned {
  return {
    kind: 'verify_revoked',
    outgoing: { method: 'POST', path: '/oauth/verify', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token }) },
    check: (status, body) => {
      if (status !== 200) return String(status)
      const result = JSON.parse(body) as { valid?: unknown, error?: unknown }
      if (result.valid === true) return 'revoked but still valid after 1 s'
      return result.error === 'revoked' ? undefined : `200 valid:false (${String(result.error)})`
    }
  }
}
