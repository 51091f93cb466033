// Generated requests made real: the credentials and tokens they refer to,
// and the inject() options they turn into.
import { generateKeyPairSync, randomUUID, sign } from 'node:crypto'
import type { FastifyInstance, InjectOptions } from 'fastify'
import { JWT_BEARER_ASSERTION } from '../../client-auth/index.ts'
import { AdminRequest } from '../../plugins/admin-listener.ts'
import { basicAuth, insertClient, issueTokens, sql, testKeys } from '../helper.ts'
import { FORM_TYPE, BODY_LIMIT, ISSUER, ROUTES, STATIC_PREFIX, STATIC_FILES, type ClientName, type Value, type PathSpec, type AuthSpec, type RequestSpec } from './spec.ts'
import { toHeader } from './arbitraries.ts'

// ---------------------------------------------------------------------------
// Real credentials and tokens, made once per run.

export interface Fixtures {
  clients: Record<ClientName, { id: string, secret: string }>
  accessToken: string
  foreignAccessToken: string
  expiredAccessToken: string
  tamperedAccessToken: string
  refreshTokens: string[]
  usedRefreshToken: string
  usedAssertion: string
  makeAssertion: () => string
}

export const segmentOf = (v: unknown): string => Buffer.from(JSON.stringify(v)).toString('base64url')

export async function fixtures (app: FastifyInstance, databaseUrl: string): Promise<Fixtures> {
  const secret = (name: string): string => `${name}-Secret.${randomUUID()}`
  const clients: Fixtures['clients'] = {
    main: { id: 'prop-main', secret: secret('main') },
    limited: { id: 'prop-limited', secret: secret('limited') },
    disabled: { id: 'prop-disabled', secret: secret('disabled') },
    keys: { id: 'prop-keys', secret: secret('keys') }
  }
  await insertClient(databaseUrl, { ...clients.main, rateLimit: 1_000_000 })
  await sql(databaseUrl, `UPDATE clients SET scopes = '{read,write}', default_scopes = '{read}', audiences = '{https://orders.example.com}',
    grant_types = '{client_credentials,refresh_token,urn:ietf:params:oauth:grant-type:token-exchange}' WHERE client_id = $1`, [clients.main.id])
  await insertClient(databaseUrl, { ...clients.limited, rateLimit: 1 })
  await insertClient(databaseUrl, { ...clients.disabled, status: 'disabled' })
  // A private_key_jwt client (no secret): an inline P-256 key.
  const pair = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const jwk = { ...pair.publicKey.export({ format: 'jwk' }), kid: 'prop-key', alg: 'ES256', use: 'sig' }
  await sql(databaseUrl, 'INSERT INTO clients (client_id, jwks) VALUES ($1, $2)', [clients.keys.id, JSON.stringify({ keys: [jwk] })])
  const makeAssertion = (): string => {
    const now = Math.floor(Date.now() / 1000)
    const input = `${segmentOf({ alg: 'ES256', typ: 'JWT', kid: 'prop-key' })}.${segmentOf({ iss: clients.keys.id, sub: clients.keys.id, aud: ISSUER, iat: now, exp: now + 300, jti: randomUUID() })}`
    return `${input}.${sign('sha256', Buffer.from(input), { key: pair.privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`
  }

  const first = await issueTokens(app, clients.main.id, clients.main.secret)
  const refreshTokens: string[] = []
  for (let i = 0; i < 40; i++) refreshTokens.push((await issueTokens(app, clients.main.id, clients.main.secret)).refresh_token)
  const usedRefreshToken = refreshTokens.pop() ?? ''
  const refreshed = await app.inject({ method: 'POST', url: '/oauth/token', headers: { 'content-type': FORM_TYPE, authorization: basicAuth(clients.main.id, clients.main.secret) }, payload: new URLSearchParams({ grant_type: 'refresh_token', refresh_token: usedRefreshToken }).toString() })
  if (refreshed.statusCode !== 200) throw new Error(`refresh failed: ${refreshed.body}`)
  // The limited client spends its one request a minute here; the disabled
  // client's secret is verified once (and remembered, as the main one's).
  const foreignAccessToken = (await issueTokens(app, clients.limited.id, clients.limited.secret)).access_token
  await app.inject({ method: 'POST', url: '/oauth/token', headers: { 'content-type': FORM_TYPE }, payload: new URLSearchParams({ grant_type: 'client_credentials', client_id: clients.disabled.id, client_secret: clients.disabled.secret }).toString() })
  // The decoy hash that unknown clients are compared against is made at the
  // first need (a cost-12 bcrypt hash, about a second): made here, so that
  // the time bound measures requests, not that one-time start.
  await app.inject({ method: 'POST', url: '/oauth/token', headers: { 'content-type': FORM_TYPE, authorization: basicAuth('prop-unknown', 'x') }, payload: 'grant_type=client_credentials', remoteAddress: '192.0.2.1' })
  const usedAssertion = makeAssertion()
  await app.inject({ method: 'POST', url: '/oauth/token', headers: { 'content-type': FORM_TYPE }, payload: new URLSearchParams({ grant_type: 'client_credentials', client_assertion_type: JWT_BEARER_ASSERTION, client_assertion: usedAssertion }).toString() })

  // An access token signed with the service's key that expired an hour ago.
  const kid = (JSON.parse((await app.inject({ method: 'GET', url: '/.well-known/jwks.json' })).body) as { keys: Array<{ kid: string }> }).keys[0]?.kid
  const now = Math.floor(Date.now() / 1000)
  const input = `${segmentOf({ alg: 'RS256', typ: 'at+jwt', kid })}.${segmentOf({ iss: ISSUER, sub: clients.main.id, aud: 'api', iat: now - 7200, exp: now - 3600, jti: randomUUID(), client_id: clients.main.id })}`
  const expiredAccessToken = `${input}.${sign('RSA-SHA256', Buffer.from(input), testKeys.privateKey).toString('base64url')}`
  const signature = first.access_token.split('.')[2] ?? ''
  const tamperedAccessToken = `${first.access_token.split('.').slice(0, 2).join('.')}.${signature.startsWith('A') ? 'B' : 'A'}${signature.slice(1)}`
  return { clients, accessToken: first.access_token, foreignAccessToken, expiredAccessToken, tamperedAccessToken, refreshTokens, usedRefreshToken, usedAssertion, makeAssertion }
}

// ---------------------------------------------------------------------------
// From a generated request to app.inject options, and what the answer may be.

export interface Built {
  options: InjectOptions & { method: string, url: string, headers: Record<string, string> }
  /** the registered route it reaches: a key of ROUTES, 'static' (/docs/static/*), or undefined */
  route: string | undefined
  /** a path whose percent-encoding does not decode (Fastify answers before any route) */
  badUrl: boolean
  /** sent to the admin listener */
  admin: boolean
  /** the Content-Type header sent, if any */
  contentType: string | undefined
  /** its media type as the service's hook reads it */
  media: string
  bytes: number
  /** the body is of the route's own media type as clients send it, byte for byte */
  canonicalType: boolean
  /** for a static file: whether @fastify/swagger-ui has it */
  staticFile: boolean
}

export function resolve (fx: Fixtures, v: Value): unknown {
  if ('text' in v) return v.text
  if ('json' in v) return v.json
  switch (v.ref) {
    case 'accessToken': return fx.accessToken
    case 'foreignAccessToken': return fx.foreignAccessToken
    case 'expiredAccessToken': return fx.expiredAccessToken
    case 'tamperedAccessToken': return fx.tamperedAccessToken
    case 'freshRefreshToken': return fx.refreshTokens.pop() ?? fx.usedRefreshToken
    case 'usedRefreshToken': return fx.usedRefreshToken
    case 'assertion': return fx.makeAssertion()
    case 'usedAssertion': return fx.usedAssertion
  }
  const [client, field] = v.ref.split('.') as [ClientName, 'id' | 'secret']
  return fx.clients[client][field]
}

export const asText = (v: unknown): string => typeof v === 'string' ? v : JSON.stringify(v)
export const mediaOf = (contentType: string | undefined): string => (contentType ?? '').split(';')[0]?.trim().toLowerCase() ?? ''

export function renderPath (spec: PathSpec): { url: string, decoded: string } {
  const withQuery = (p: string, q: string | null): string => q === null ? p : `${p}?${q}`
  switch (spec.kind) {
    case 'route': {
      if (spec.variant === 'trailing-slash') return { url: withQuery(`${spec.path}/`, spec.query), decoded: `${spec.path}/` }
      if (spec.variant === 'upper-case') return { url: withQuery(spec.path.toUpperCase(), spec.query), decoded: spec.path.toUpperCase() }
      if (spec.variant === 'encoded') {
        // One character percent-encoded (never a slash): the router decodes it.
        const positions = [...spec.path].map((c, i) => c === '/' ? -1 : i).filter((i) => i >= 0)
        const at = positions[spec.at % positions.length] ?? 1
        const hex = (spec.path.charCodeAt(at)).toString(16).padStart(2, '0')
        const encoded = `${spec.path.slice(0, at)}%${spec.at % 2 === 0 ? hex.toUpperCase() : hex}${spec.path.slice(at + 1)}`
        return { url: withQuery(encoded, spec.query), decoded: spec.path }
      }
      return { url: withQuery(spec.path, spec.query), decoded: spec.path }
    }
    case 'static': return { url: withQuery(`${STATIC_PREFIX}${spec.name}`, spec.query), decoded: `${STATIC_PREFIX}${spec.name}` }
    case 'random': {
      const p = `${spec.prefix}/${spec.segments.join('/')}`
      return { url: withQuery(p, spec.query), decoded: p }
    }
    case 'bad-percent': return { url: `${spec.path}/${spec.junk}`, decoded: '' }
  }
}

/** The body of a request, encoded as its content type says. */
function bodyPayload (fx: Fixtures, spec: RequestSpec, json: boolean): string | Buffer | undefined {
  const b = spec.body
  switch (b.kind) {
    case 'none': return undefined
    case 'fields': {
      const pairs = [...b.fields, ...spec.credentials.fields].map(([name, v]): [string, unknown] => [name, resolve(fx, v)])
      return json
        ? `{${pairs.map(([name, v]) => `${JSON.stringify(name)}:${JSON.stringify(v)}`).join(',')}}`
        : pairs.reduce((form, [name, v]) => { form.append(name, asText(v)); return form }, new URLSearchParams()).toString()
    }
    case 'text': return b.text
    case 'json': return JSON.stringify(b.value)
    case 'bytes': return Buffer.from(b.bytes)
    case 'oversized': {
      const [head, tail] = json ? ['{"token":"', '"}'] : ['grant_type=client_credentials&token=', '']
      return `${head}${'a'.repeat(Math.max(0, BODY_LIMIT + b.delta - head.length - tail.length))}${tail}`
    }
  }
}

function authorizationHeader (fx: Fixtures, a: AuthSpec): string {
  switch (a.kind) {
    case 'client': {
      const { id, secret } = fx.clients[a.client]
      return basicAuth(id, a.secret === null ? secret : asText(resolve(fx, a.secret)))
    }
    case 'basic': return basicAuth(a.id, a.secret)
    case 'basic-decoded': return `Basic ${Buffer.from(a.decoded).toString('base64')}`
    case 'basic-text': return `Basic ${a.text}`
    case 'bearer': return toHeader(`Bearer ${asText(resolve(fx, a.token))}`)
    case 'raw': return a.header
    case 'huge': return `Basic ${'QUJD'.repeat(Math.ceil(a.size / 4))}`
  }
}

export function buildRequest (fx: Fixtures, spec: RequestSpec): Built {
  const { url, decoded } = renderPath(spec.path)
  const badUrl = spec.path.kind === 'bad-percent'
  const routeSpec = badUrl ? undefined : ROUTES[decoded]
  const method = spec.method === 'auto' ? routeSpec?.methods[0] ?? 'GET' : spec.method
  // The static files of the docs are on the admin listener too.
  const routeOnAdmin = routeSpec?.admin === true || (routeSpec === undefined && decoded.startsWith(STATIC_PREFIX))
  const admin = spec.listener === 'auto' ? routeOnAdmin : spec.listener === 'admin'
  let route: string | undefined
  let staticFile = false
  if (admin !== routeOnAdmin) {
    route = undefined
  } else if (routeSpec !== undefined) {
    route = routeSpec.methods.includes(method) ? decoded : undefined
  } else if (!badUrl && decoded.startsWith(STATIC_PREFIX) && (method === 'GET' || method === 'HEAD')) {
    route = 'static'
    const name = decoded.slice(STATIC_PREFIX.length)
    staticFile = name === '' || STATIC_FILES.includes(name)
  }

  const headers: Record<string, string> = {}
  for (const [name, v] of Object.entries(spec.headers)) headers[name] = v
  const contentType = spec.contentType === 'auto' ? (method === 'POST' ? routeSpec?.media ?? null : null) : spec.contentType
  if (contentType !== null) headers['content-type'] = contentType
  const media = mediaOf(contentType ?? undefined)
  const json = media.includes('json')

  const payload = bodyPayload(fx, spec, json)
  const authorization = spec.credentials.authorization
  if (authorization !== null) headers.authorization = authorizationHeader(fx, authorization)
  if (spec.host !== null) headers.host = spec.host
  if (spec.accept !== null) headers.accept = spec.accept
  if (spec.padding !== null) headers['x-padding'] = 'p'.repeat(spec.padding)

  const bytes = payload === undefined ? 0 : Buffer.byteLength(payload)
  const canonicalType = routeSpec?.media !== undefined && (contentType === routeSpec.media || contentType === `${routeSpec.media}; charset=utf-8`)
  return {
    options: { method, url, headers, remoteAddress: spec.remoteAddress, ...(admin ? { Request: AdminRequest } : {}), ...(payload === undefined ? {} : { payload }) },
    route,
    admin,
    badUrl,
    contentType: contentType ?? undefined,
    media,
    bytes,
    canonicalType,
    staticFile
  }
}

/** A short account of a request, for reports. */
export function describe (built: Built): string {
  const { method, url, headers, payload } = built.options
  const shown = Object.entries(headers).map(([name, v]) => `${name}: ${v.length > 80 ? `${v.slice(0, 80)}… (${v.length} chars)` : v}`)
  const bodyText = payload === undefined ? '(no body)' : Buffer.isBuffer(payload) ? `(${payload.length} bytes)` : String(payload)
  return `${built.admin ? '(admin) ' : ''}${method} ${url} [${shown.join(' | ')}] from ${String(built.options.remoteAddress)} body: ${bodyText.length > 200 ? `${bodyText.slice(0, 200)}… (${built.bytes} bytes)` : bodyText}`
}
