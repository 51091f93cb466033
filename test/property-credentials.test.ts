// Property-based robustness of readCredentials: whatever the Authorization
// header and fields, it either reads credentials or refuses them with a 400
// OAuthError, never another exception.
import { test } from 'tap'
import fc from 'fast-check'
import { JWT_BEARER_ASSERTION, readCredentials, type PresentedCredentials } from '../client-auth/index.ts'
import { OAuthError } from '../plugins/errors.ts'
import { basicAuth } from './helper.ts'
import { SEED } from './property/spec.ts'
import { headerText } from './property/arbitraries.ts'
import { segmentOf } from './property/requests.ts'

// ---------------------------------------------------------------------------

const AUTH_METHODS = new Set(['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'none', 'unsupported_scheme'])

/** Whether a result of readCredentials is a well-formed PresentedCredentials for these inputs. */
function wellFormed (result: PresentedCredentials): string | undefined {
  if (!AUTH_METHODS.has(result.method)) return `unknown method ${String(result.method)}`
  for (const name of ['clientId', 'clientSecret', 'assertion'] as const) {
    if (result[name] !== undefined && typeof result[name] !== 'string') return `${name} is not a string`
  }
  if ((result.method === 'client_secret_basic' || result.method === 'client_secret_post') && (result.clientId === undefined || result.clientSecret === undefined)) return `${result.method} without an id and a secret`
  if (result.method === 'private_key_jwt' && result.assertion === undefined) return 'private_key_jwt without an assertion'
  if (result.method === 'unsupported_scheme' && (result.clientId !== undefined || result.clientSecret !== undefined)) return 'unsupported_scheme with credentials'
  return undefined
}

const jwtLike = fc.tuple(fc.jsonValue({ maxDepth: 2 }), fc.oneof(fc.jsonValue({ maxDepth: 2 }), fc.record({ sub: fc.oneof(fc.string(), fc.integer(), fc.constant(null)) })), fc.string({ maxLength: 8 }))
  .map(([header, payload, signature]) => `${segmentOf(header)}.${segmentOf(payload)}.${signature}`)
const field = fc.option(fc.oneof(fc.string({ unit: 'binary', maxLength: 40 }), fc.constantFrom('', JWT_BEARER_ASSERTION, 'prop-main'), jwtLike, fc.string({ unit: 'binary', maxLength: 12 }).map((s) => `a.${Buffer.from(s).toString('base64url')}.c`)), { freq: 2 })
const authorizationHeader = fc.option(fc.oneof(
  fc.string({ unit: 'binary', maxLength: 60 }),
  headerText(60),
  fc.string({ unit: 'binary', maxLength: 40 }).map((decoded) => `Basic ${Buffer.from(decoded).toString('base64')}`),
  fc.tuple(fc.constantFrom('Basic', 'basic', 'BASIC', 'Bearer', 'Basic\t', 'Basicx'), fc.constantFrom('', ' ', '  '), fc.base64String({ maxLength: 40 }), fc.constantFrom('', ' ', '=', '\n'))
    .map(([scheme, gap, b64, end]) => `${scheme}${gap}${b64}${end}`),
  fc.tuple(fc.string({ unit: 'binary', maxLength: 20 }), fc.string({ unit: 'binary', maxLength: 20 })).map(([id, secret]) => basicAuth(id, secret))
), { freq: 4 })

test('readCredentials: any Authorization header and fields give credentials or a 400 OAuthError, never another exception', async (t) => {
  let read = 0
  let refused = 0
  const details = fc.check(fc.property(authorizationHeader, fc.record({ client_id: field, client_secret: field, client_assertion_type: field, client_assertion: field }), (header, fields) => {
    const body = Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== null)) as Record<string, string>
    let result: PresentedCredentials
    try {
      result = readCredentials(header ?? undefined, body)
    } catch (err) {
      if (!(err instanceof OAuthError) || err.statusCode !== 400 || err.error !== 'invalid_request') {
        throw new Error(`threw ${err instanceof OAuthError ? `OAuthError ${err.statusCode} ${err.error}` : String(err)}`)
      }
      refused++
      return
    }
    const problem = wellFormed(result)
    if (problem !== undefined) throw new Error(`returned ${JSON.stringify(result)}: ${problem}`)
    read++
  }), { numRuns: 5000, seed: SEED, includeErrorInReport: true })
  t.comment(`seed ${details.seed}; ${details.numRuns} inputs: ${read} read, ${refused} refused`)
  t.notOk(details.failed, details.failed ? `readCredentials broke its contract (seed ${details.seed})` : `${details.numRuns} inputs: credentials or a 400 invalid_request`, { report: fc.defaultReportMessage(details) })
  t.ok(read > 0 && refused > 0, 'both outcomes were reached')

  // Basic credentials as RFC 6749 §2.3.1 encodes them read back as they were.
  const roundTrip = fc.check(fc.property(fc.string({ unit: 'binary', maxLength: 40 }), fc.string({ unit: 'binary', maxLength: 80 }), (id, secret) => {
    const result = readCredentials(basicAuth(id, secret), {})
    if (result.method !== 'client_secret_basic' || result.clientId !== id || result.clientSecret !== secret) throw new Error(`read back as ${JSON.stringify(result)}`)
  }), { numRuns: 2000, seed: SEED, includeErrorInReport: true })
  t.notOk(roundTrip.failed, roundTrip.failed ? `a Basic header did not read back (seed ${roundTrip.seed})` : `${roundTrip.numRuns} id/secret pairs read back from basicAuth()`, { report: fc.defaultReportMessage(roundTrip) })
})
