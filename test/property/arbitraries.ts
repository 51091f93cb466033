// The fast-check generators of requests (see spec.ts for what they make).
import fc from 'fast-check'
import { JWT_BEARER_ASSERTION } from '../../client-auth/index.ts'
import { FORM_TYPE, JSON_TYPE, ISSUER, ROUTES, STATIC_FILES, PARAMETERS, type ClientName, type Ref, type Value, type PathSpec, type BodySpec, type AuthSpec, type CredentialSpec, type RequestSpec } from './spec.ts'

// ---------------------------------------------------------------------------
// Generators

/** Header values as Node's HTTP parser admits them: tab, visible ASCII, space, obs-text. */
export const headerChar = fc.oneof(
  { weight: 8, arbitrary: fc.integer({ min: 0x20, max: 0x7e }) },
  { weight: 1, arbitrary: fc.integer({ min: 0x80, max: 0xff }) },
  { weight: 1, arbitrary: fc.constant(0x09) }
).map((code) => String.fromCharCode(code))
export const headerText = (maxLength: number): fc.Arbitrary<string> => fc.string({ unit: headerChar, maxLength })
/** null, except once in `oneIn` times (fc.option gives null once in `freq`). */
export const rarely = <T>(arbitrary: fc.Arbitrary<T>, oneIn: number): fc.Arbitrary<T | null> =>
  fc.oneof({ weight: oneIn - 1, arbitrary: fc.constant(null) }, { weight: 1, arbitrary })
export const toHeader = (value: string): string => value.replace(/[^\t\x20-\x7e\x80-\xff]/g, '?')

export const text = fc.oneof(
  fc.string({ maxLength: 24 }),
  fc.string({ unit: 'binary', maxLength: 24 }),
  fc.string({ unit: 'grapheme', maxLength: 12 }),
  fc.constantFrom('', ' ', '%', '%ZZ', '+', '\u0000', 'a.b.c', 'null', '[]', '{}', 'Basic', 'read write', 'https://orders.example.com'),
  // Over the schemas' maxLength (100, 255, 1024, 2048, 8192) and around them.
  fc.constantFrom(99, 101, 255, 256, 1025, 2049, 8193, 9000).map((length) => 'x'.repeat(length))
)
export const KNOWN_VALUES = ['client_credentials', 'refresh_token', 'password', 'authorization_code', JWT_BEARER_ASSERTION,
  'access_token', 'api', 'openid', ISSUER]
export const REFS: Ref[] = ['main.id', 'main.secret', 'limited.id', 'limited.secret', 'disabled.id', 'disabled.secret', 'keys.id',
  'accessToken', 'foreignAccessToken', 'expiredAccessToken', 'tamperedAccessToken', 'freshRefreshToken', 'usedRefreshToken',
  'assertion', 'usedAssertion']
export const value: fc.Arbitrary<Value> = fc.oneof(
  { weight: 3, arbitrary: text.map((t) => ({ text: t })) },
  { weight: 2, arbitrary: fc.constantFrom(...REFS).map((ref) => ({ ref })) },
  { weight: 2, arbitrary: fc.constantFrom(...KNOWN_VALUES).map((t) => ({ text: t })) },
  { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 2 }).map((json) => ({ json })) }
)
export const tokenValue: fc.Arbitrary<Value> = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom<Ref>('accessToken', 'foreignAccessToken', 'expiredAccessToken', 'tamperedAccessToken', 'freshRefreshToken', 'usedRefreshToken', 'assertion').map((ref) => ({ ref })) },
  { weight: 1, arbitrary: value }
)
export const clientName = fc.oneof({ weight: 4, arbitrary: fc.constant<ClientName>('main') }, fc.constantFrom<ClientName>('limited', 'disabled', 'keys'))
export const parameterName = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom(...PARAMETERS) },
  { weight: 1, arbitrary: fc.constantFrom('__proto__', 'constructor', 'toString', 'hasOwnProperty', 'grant_type[]', 'token[0]', '') },
  { weight: 1, arbitrary: fc.string({ maxLength: 12 }) }
)
export const pair = (name: string, v: Value): Array<[string, Value]> => [[name, v]]

export const grantType: fc.Arbitrary<Value> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom('client_credentials', 'refresh_token', 'urn:ietf:params:oauth:grant-type:token-exchange').map((t) => ({ text: t })) },
  { weight: 1, arbitrary: value }
)

/** The main client's scopes and audience (and some it does not have). */
export const scopeOrAudience: fc.Arbitrary<Value> = fc.constantFrom('read', 'write', 'read write', 'write  read', 'admin', 'access_token', 'refresh_token',
  'https://orders.example.com', 'https://other.example.com', 'api', 'https://orders.example.com#x').map((t) => ({ text: t }))

/** Body fields other than the credentials: a grant, a token, a scope or audience, and random ones (repeats possible). */
export const fields: fc.Arbitrary<Array<[string, Value]>> = fc.tuple(
  fc.option(grantType.map((v) => pair('grant_type', v)), { freq: 10 }),
  fc.option(tokenValue.map((v) => pair('token', v)), { freq: 6 }),
  fc.option(fc.oneof(fc.constant<Value>({ ref: 'freshRefreshToken' }), tokenValue).map((v) => pair('refresh_token', v)), { freq: 2 }),
  fc.option(fc.tuple(fc.constantFrom('token_type_hint', 'scope', 'audience', 'resource'), fc.oneof(scopeOrAudience, value)).map(([name, v]) => pair(name, v)), { freq: 2 }),
  // A token exchange's subject, typed as the service accepts it.
  fc.option(tokenValue.map((v): Array<[string, Value]> => [['subject_token', v], ['subject_token_type', { text: 'urn:ietf:params:oauth:token-type:access_token' }]]), { freq: 3 }),
  fc.oneof(
    { weight: 4, arbitrary: fc.constant<Array<[string, Value]>>([]) },
    { weight: 1, arbitrary: fc.array(fc.tuple(parameterName, value), { minLength: 1, maxLength: 4 }) }
  )
).map(([grant, token, refresh, extra, subject, random]) => [...(grant ?? []), ...(token ?? []), ...(refresh ?? []), ...(extra ?? []), ...(subject ?? []), ...random])

export const body: fc.Arbitrary<BodySpec> = fc.oneof(
  { weight: 30, arbitrary: fields.map((f): BodySpec => ({ kind: 'fields', fields: f })) },
  { weight: 1, arbitrary: fc.constant<BodySpec>({ kind: 'none' }) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 200 }).map((t): BodySpec => ({ kind: 'text', text: t })) },
  { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 3 }).map((v): BodySpec => ({ kind: 'json', value: v })) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 300 }).map((bytes): BodySpec => ({ kind: 'bytes', bytes })) },
  { weight: 1, arbitrary: fc.integer({ min: -16, max: 4096 }).map((delta): BodySpec => ({ kind: 'oversized', delta })) }
)

export const authorization: fc.Arbitrary<AuthSpec> = fc.oneof(
  { weight: 4, arbitrary: fc.tuple(clientName, fc.option(value, { freq: 2 })).map(([client, secret]): AuthSpec => ({ kind: 'client', client, secret })) },
  { weight: 2, arbitrary: fc.tuple(fc.string({ unit: 'binary', maxLength: 20 }), fc.string({ unit: 'binary', maxLength: 80 })).map(([id, secret]): AuthSpec => ({ kind: 'basic', id, secret })) },
  { weight: 2, arbitrary: fc.oneof(fc.string({ unit: 'binary', maxLength: 30 }), fc.constantFrom('no-colon', ':', '%ZZ:x', 'x:%E0%A4%A', '%00:%00', 'a:b:c')).map((decoded): AuthSpec => ({ kind: 'basic-decoded', decoded })) },
  { weight: 1, arbitrary: fc.oneof(fc.base64String({ maxLength: 40 }), headerText(30), fc.constantFrom('', ' ', '=', '====', 'Og==', 'YTpi\t')).map((t): AuthSpec => ({ kind: 'basic-text', text: t })) },
  { weight: 2, arbitrary: tokenValue.map((token): AuthSpec => ({ kind: 'bearer', token })) },
  { weight: 2, arbitrary: fc.oneof(headerText(60), fc.constantFrom('Basic', 'basic ', 'Digest x', 'Bearer', 'Negotiate abc=')).map((header): AuthSpec => ({ kind: 'raw', header })) },
  { weight: 1, arbitrary: fc.integer({ min: 1000, max: 3000 }).map((size): AuthSpec => ({ kind: 'huge', size })) }
)

export const credentialName = fc.constantFrom<string>('client_id', 'client_secret', 'client_assertion', 'client_assertion_type')
/**
 * How the client authenticates: mostly one method as clients use them (a
 * real client's Basic header or body credentials, right or wrong secret; a
 * client assertion; none), sometimes anything in the header and the body.
 */
export const credentials: fc.Arbitrary<CredentialSpec> = fc.oneof(
  { weight: 5, arbitrary: fc.tuple(clientName, rarely(value, 4)).map(([client, secret]): CredentialSpec => ({ authorization: { kind: 'client', client, secret }, fields: [] })) },
  {
    weight: 5,
    arbitrary: fc.tuple(clientName, rarely(value, 4)).map(([client, secret]): CredentialSpec => ({
      authorization: null,
      fields: [['client_id', { ref: `${client}.id` }], ['client_secret', secret ?? { ref: `${client}.secret` }]]
    }))
  },
  {
    weight: 2,
    arbitrary: fc.tuple(fc.constantFrom<Value>({ ref: 'assertion' }, { ref: 'assertion' }, { ref: 'usedAssertion' }, { ref: 'accessToken' }, { text: 'a.b.c' }), fc.constantFrom(true, true, true, false), fc.boolean())
      .map(([assertion, withType, withId]): CredentialSpec => ({
        authorization: null,
        fields: [
          ...(withType ? pair('client_assertion_type', { text: JWT_BEARER_ASSERTION }) : []),
          ['client_assertion', assertion],
          ...(withId ? pair('client_id', { ref: 'keys.id' }) : [])
        ]
      }))
  },
  { weight: 1, arbitrary: fc.constant<CredentialSpec>({ authorization: null, fields: [] }) },
  { weight: 1, arbitrary: clientName.map((client): CredentialSpec => ({ authorization: null, fields: pair('client_id', { ref: `${client}.id` }) })) },
  {
    weight: 3,
    arbitrary: fc.tuple(fc.option(authorization, { freq: 2 }), fc.array(fc.tuple(credentialName, value), { maxLength: 4 }))
      .map(([header, pairs]): CredentialSpec => ({ authorization: header, fields: pairs }))
  }
)

export const query = rarely(fc.string({ unit: fc.constantFrom(...'abXY09=&%+._~-'.split('')), maxLength: 24 }), 4)
export const segment = fc.string({ unit: fc.constantFrom(...'abcdefxyzABZ0189-_~'.split('')), minLength: 1, maxLength: 12 })
export const ROUTE_PATHS = Object.keys(ROUTES)
export const API_PATHS = ['/oauth/token', '/oauth/token', '/oauth/revoke', '/oauth/introspect', '/oauth/verify']
export const path: fc.Arbitrary<PathSpec> = fc.oneof(
  {
    weight: 20,
    arbitrary: fc.record({
      kind: fc.constant('route' as const),
      path: fc.oneof({ weight: 4, arbitrary: fc.constantFrom(...API_PATHS) }, { weight: 1, arbitrary: fc.constantFrom(...ROUTE_PATHS) }),
      variant: fc.oneof({ weight: 12, arbitrary: fc.constant('exact' as const) }, fc.constantFrom('trailing-slash' as const, 'upper-case' as const, 'encoded' as const)),
      at: fc.nat(40),
      query
    })
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('static' as const), name: fc.oneof(fc.constantFrom('', ...STATIC_FILES), segment), query }) },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('random' as const),
      prefix: fc.constantFrom('', '/oauth', '/.well-known', '/docs', '/docs/static', '/health'),
      segments: fc.array(segment, { maxLength: 3 }),
      query
    })
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('bad-percent' as const), path: fc.constantFrom('', ...ROUTE_PATHS), junk: fc.constantFrom('%', '%Z', '%ZZ', '%C0%80', '%E0%A4%A', '%FF', '%ED%A0%80') }) }
)

export const contentType = fc.oneof(
  { weight: 30, arbitrary: fc.constant('auto') },
  { weight: 2, arbitrary: fc.constantFrom(FORM_TYPE, JSON_TYPE, 'text/plain', 'multipart/form-data; boundary=x', `${FORM_TYPE}; charset=utf-8`, `${JSON_TYPE}; charset=utf-8`, 'Application/JSON', `${FORM_TYPE} ; q=1`, 'application/json-patch+json', ';', '') },
  { weight: 1, arbitrary: fc.constant(null) },
  { weight: 1, arbitrary: headerText(40) }
)

export const host = rarely(fc.oneof(
  fc.constantFrom('localhost', 'localhost:8080', 'auth.example.com', '127.0.0.1:3000', '[::1]:8080', 'a b', 'exa_mple.com', 'a..b',
    'h:99999', '999.999.999.999', '[::::]', 'x'.repeat(300)),
  fc.domain(),
  headerText(40)
), 3)

export const request: fc.Arbitrary<RequestSpec> = fc.record({
  method: fc.oneof({ weight: 16, arbitrary: fc.constant('auto' as const) }, fc.constantFrom('GET' as const, 'POST' as const, 'PUT' as const, 'DELETE' as const, 'PATCH' as const, 'HEAD' as const, 'OPTIONS' as const)),
  path,
  contentType,
  body,
  credentials,
  host,
  accept: fc.option(fc.oneof(fc.constantFrom('application/json', 'text/html', '*/*', 'application/xml', 'text/plain;q=0.5, */*;q=0.1'), headerText(40))),
  headers: fc.dictionary(fc.oneof(fc.stringMatching(/^x-[a-z0-9-]{1,16}$/), fc.constantFrom('x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', 'forwarded', 'cookie', 'origin')), headerText(60), { maxKeys: 3 }),
  // A header of up to 10 kB: the whole head stays within Node's 16 kB.
  padding: rarely(fc.integer({ min: 1000, max: 10_000 }), 8),
  // Mostly the route's own listener; sometimes the other, where it must not answer.
  listener: fc.oneof({ weight: 8, arbitrary: fc.constant('auto' as const) }, fc.constantFrom('public' as const, 'admin' as const)),
  // Mostly one address, whose failed authentications add up to the throttle.
  remoteAddress: fc.oneof({ weight: 4, arbitrary: fc.constant('127.0.0.1') }, fc.constantFrom('10.0.0.7', '::1'), { weight: 2, arbitrary: fc.ipV4() })
})
