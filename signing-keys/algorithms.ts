// The signing algorithms this service supports: the one list that the
// settings schema, the key checks, key generation and the CLI all read.
// RS256 first: the default, and the only one AWS API Gateway HTTP APIs accept.
export const SIGNING_ALGORITHMS = ['RS256', 'ES256', 'EdDSA'] as const

export type SigningAlgorithm = typeof SIGNING_ALGORITHMS[number]

export const DEFAULT_SIGNING_ALGORITHM: SigningAlgorithm = 'RS256'

export function isSigningAlgorithm (value: string): value is SigningAlgorithm {
  return (SIGNING_ALGORITHMS as readonly string[]).includes(value)
}
