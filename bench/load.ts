// The load generator, run as a process of its own so that its CPU is not the
// service's. Reads one scenario (JSON) from BENCH_SCENARIO, drives it with
// autocannon, and prints one JSON line with the figures.
import { generateKeyPairSync, randomUUID, sign } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import autocannon from 'autocannon'

export interface Scenario {
  url: string
  connections: number
  /** seconds; ignored when `amount` is set */
  duration: number
  /** total requests instead of a duration */
  amount?: number
  /** requests per second over all connections (a fixed-rate run); unset: as fast as answered */
  overallRate?: number
  kind: 'get' | 'form' | 'dpop' | 'verify' | 'introspect' | 'refresh' | 'wrong-secrets'
  path: string
  /** form body for 'form' and 'dpop' */
  body?: string
  headers?: Record<string, string>
  /** file with a JSON array of tokens for 'verify', 'introspect' and 'refresh' */
  tokensFile?: string
  /** 'wrong-secrets': the client whose secret is guessed */
  clientId?: string
  /** 'refresh': where to write the refresh tokens still unused at the end, for the next run */
  tokensOut?: string
  /** 'dpop': the htu of the proofs, the token endpoint as the service names it */
  htu?: string
}

export interface LoadResult {
  requests: number
  rps: number
  p50: number
  p99: number
  errors: number
  timeouts: number
  non2xx: number
  /** CPU the load generator used, in seconds per second of the run (1 = one core saturated) */
  cpu: number
}

const FORM = 'application/x-www-form-urlencoded'

/**
 * A maker of DPoP proofs (RFC 9449 §4.2) for POST `htu`, signed with an ES256
 * key of this process: the header is the same for every proof, the claims
 * are new each time (a jti of their own, iat now), as a client makes them.
 */
function proofMaker (htu: string): () => string {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' })
  const { kty, crv, x, y } = publicKey.export({ format: 'jwk' })
  const part = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')
  const header = part({ typ: 'dpop+jwt', alg: 'ES256', jwk: { kty, crv, x, y } })
  return () => {
    const input = `${header}.${part({ jti: randomUUID(), htm: 'POST', htu, iat: Math.floor(Date.now() / 1000) })}`
    return `${input}.${sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url')}`
  }
}

/** 'refresh': the tokens not sent yet, written out when the run ends. */
let unusedRefreshTokens = (): string[] => []

function requestsFor (scenario: Scenario): autocannon.Request[] {
  const headers = scenario.headers ?? {}
  const tokens: string[] = scenario.tokensFile === undefined ? [] : JSON.parse(readFileSync(scenario.tokensFile, 'utf8'))
  let next = 0
  const take = (): string => {
    const token = tokens[next % tokens.length] ?? ''
    next++
    return token
  }
  switch (scenario.kind) {
    case 'get':
      return [{ method: 'GET', path: scenario.path, headers }]
    case 'form':
      return [{ method: 'POST', path: scenario.path, headers: { ...headers, 'content-type': FORM }, body: scenario.body ?? '' }]
    case 'dpop': {
      // A fresh proof per request: the service accepts each proof once.
      const proof = proofMaker(scenario.htu ?? '')
      return [{
        method: 'POST',
        path: scenario.path,
        body: scenario.body ?? '',
        setupRequest: (request) => ({ ...request, headers: { ...headers, 'content-type': FORM, dpop: proof() } })
      }]
    }
    case 'verify':
      // Each request a different token, drawn in turn from the whole pool.
      return [{
        method: 'POST',
        path: scenario.path,
        headers: { ...headers, 'content-type': 'application/json' },
        setupRequest: (request) => ({ ...request, body: JSON.stringify({ token: take() }) })
      }]
    case 'introspect':
      return [{
        method: 'POST',
        path: scenario.path,
        headers: { ...headers, 'content-type': FORM },
        setupRequest: (request) => ({ ...request, body: `token=${encodeURIComponent(take())}` })
      }]
    case 'wrong-secrets': {
      // A different wrong secret each time, as a guesser sends: no two share
      // a compare.
      let guess = 0
      return [{
        method: 'POST',
        path: scenario.path,
        body: scenario.body ?? '',
        setupRequest: (request) => ({
          ...request,
          headers: {
            ...headers,
            'content-type': FORM,
            authorization: 'Basic ' + Buffer.from(`${scenario.clientId ?? ''}:guess-${process.pid}-${guess++}`).toString('base64')
          }
        })
      }]
    }
    case 'refresh': {
      // Each refresh token is sent once, as a client would: the pool at
      // first, then the tokens the responses return. (autocannon's
      // per-connection context is reset after every request when the
      // scenario has a single request, so it cannot carry them.)
      const fresh = [...tokens]
      let head = 0
      unusedRefreshTokens = () => fresh.slice(head)
      return [{
        method: 'POST',
        path: scenario.path,
        headers: { ...headers, 'content-type': FORM },
        setupRequest: (request) => {
          const token = fresh[head] ?? ''
          head++
          return { ...request, body: `grant_type=refresh_token&refresh_token=${encodeURIComponent(token)}` }
        },
        onResponse: (status: number, body: string) => {
          if (status === 200) fresh.push((JSON.parse(body) as { refresh_token: string }).refresh_token)
        }
      }]
    }
  }
}

function cpuShare (since: { cpu: NodeJS.CpuUsage, at: number }): number {
  const used = process.cpuUsage(since.cpu)
  return Math.round((used.user + used.system) / 1000 / (performance.now() - since.at) * 100) / 100
}

const scenario = JSON.parse(process.env.BENCH_SCENARIO ?? '{}') as Scenario
const started = { cpu: process.cpuUsage(), at: performance.now() }
const result = await autocannon({
  url: scenario.url,
  connections: scenario.connections,
  ...(scenario.amount === undefined ? { duration: scenario.duration } : { amount: scenario.amount }),
  ...(scenario.overallRate === undefined ? {} : { overallRate: scenario.overallRate }),
  requests: requestsFor(scenario),
  timeout: 10
})
const summary: LoadResult = {
  requests: result.requests.total,
  rps: result.requests.average,
  p50: result.latency.p50,
  p99: result.latency.p99,
  errors: result.errors,
  timeouts: result.timeouts,
  non2xx: result.non2xx,
  cpu: cpuShare(started)
}
if (scenario.tokensOut !== undefined) writeFileSync(scenario.tokensOut, JSON.stringify(unusedRefreshTokens()))
process.stdout.write(JSON.stringify(summary) + '\n')
