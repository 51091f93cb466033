import { createHash } from 'node:crypto'
import { isIPv4, isIPv6 } from 'node:net'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { OAuthError } from '../plugins/errors.ts'

/**
 * The address a request is counted under: an IPv4 address as it is, an IPv6
 * address by its /64 (one host commonly holds a whole /64, so counting single
 * addresses would let it count afresh from each of 2^64).
 */
export function addressKey (ip: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip)
  if (mapped !== null) return mapped[1] as string
  if (isIPv4(ip) || !isIPv6(ip)) return ip
  const zoneless = ip.split('%')[0] as string
  const [head = '', tail] = zoneless.split('::')
  const headGroups = head === '' ? [] : head.split(':')
  const tailGroups = tail === undefined || tail === '' ? [] : tail.split(':')
  // An embedded IPv4 tail (::1.2.3.4) lies in the last 32 bits: outside the /64.
  const groups = tail === undefined ? headGroups : [...headGroups, ...Array(8 - headGroups.length - tailGroups.length).fill('0')]
  return `${groups.slice(0, 4).map((group) => Number.parseInt(group === '' ? '0' : group, 16).toString(16)).join(':')}::/64`
}

export interface AttemptThrottle {
  countAttempt: (request: FastifyRequest, clientId: string | undefined) => Promise<void>
  countCheapFailure: (request: FastifyRequest, clientId: string | undefined) => void
  refundAttempt: (request: FastifyRequest, clientId: string) => void
  /** attempts refused (429) since start */
  stats: { refused: number }
}

// Attempts that cost real work (a bcrypt compare, a client assertion) are
// counted per client id from one address and per address, before the
// work, atomically: each attempt increments the counters and compares what
// it gets back with the limits, so a concurrent burst cannot pass whole.
// Over either limit the attempt is refused (429) before any work: guessing
// stops, and so does the CPU it burns. A success takes its count back, so
// only failures accumulate; a secret already verified (remembered in this
// process) costs nothing and is not counted. Since the client id's counter
// is per address, an attacker elsewhere cannot lock a client out of its
// own address.
export function attemptThrottle (fastify: FastifyInstance): AttemptThrottle {
  const { config, store } = fastify
  const ATTEMPT_WINDOW_SECONDS = 60
  const stats = { refused: 0 }
  const attemptKeys = (request: FastifyRequest, clientId: string | undefined): [string, string] => {
    const address = addressKey(request.ip)
    const id = createHash('sha256').update(clientId ?? '').digest('base64url')
    return [`auth-failures:client:${id}:${address}`, `auth-failures:address:${address}`]
  }
  async function countAttempt (request: FastifyRequest, clientId: string | undefined): Promise<void> {
    const [forClient = 0, forAddress = 0] = await store.counters.count(attemptKeys(request, clientId), ATTEMPT_WINDOW_SECONDS)
    if (forClient <= config.authFailureLimit && forAddress <= config.authFailureLimitPerAddress) return
    stats.refused++
    request.log.warn({ clientId, address: addressKey(request.ip) }, 'client authentication throttled after repeated failures')
    throw new OAuthError(429, 'rate_limit_exceeded', `too many failed client authentications; retry in ${ATTEMPT_WINDOW_SECONDS} s`, {
      'retry-after': String(ATTEMPT_WINDOW_SECONDS)
    })
  }
  function countCheapFailure (request: FastifyRequest, clientId: string | undefined): void {
    store.counters.count(attemptKeys(request, clientId), ATTEMPT_WINDOW_SECONDS)
      .catch((err: Error) => request.log.warn({ cause: err.message }, 'could not count a failed authentication'))
  }
  function refundAttempt (request: FastifyRequest, clientId: string): void {
    // In the background: the answer does not wait for it, and a failure is
    // logged, never turned into another answer.
    store.counters.refund(attemptKeys(request, clientId))
      .catch((err: Error) => request.log.warn({ cause: err.message }, 'could not take back a counted authentication attempt'))
  }
  return { countAttempt, countCheapFailure, refundAttempt, stats }
}
