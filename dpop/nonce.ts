// Server nonces (RFC 9449 §8) that no store holds: a nonce is its time
// window and an HMAC of it under a key of the database's, so every instance
// makes and accepts the same ones, and a stolen Redis grants nothing.
import { createHmac, timingSafeEqual } from 'node:crypto'

/** Length of a nonce's time window; the current and the previous window are accepted. */
export const NONCE_WINDOW_SECONDS = 300

const NONCE = /^([0-9a-z]{1,12})\.([A-Za-z0-9_-]{43})$/

const mac = (key: Buffer, window: number): Buffer => createHmac('sha256', key).update(`dpop-nonce\0${window}`).digest()

const windowOf = (now: number): number => Math.floor(now / NONCE_WINDOW_SECONDS)

/** A nonce for the window of `now` (seconds since epoch). */
export function makeNonce (key: Buffer, now: number): string {
  const window = windowOf(now)
  return `${window.toString(36)}.${mac(key, window).toString('base64url')}`
}

/** Whether `nonce` was made with `key` in the window of `now` or the one before. */
export function isCurrentNonce (key: Buffer, nonce: string, now: number): boolean {
  const match = NONCE.exec(nonce)
  if (match === null) return false
  const window = parseInt(match[1] as string, 36)
  const current = windowOf(now)
  if (window !== current && window !== current - 1) return false
  const given = Buffer.from(match[2] as string, 'base64url')
  const expected = mac(key, window)
  return given.length === expected.length && timingSafeEqual(given, expected)
}
