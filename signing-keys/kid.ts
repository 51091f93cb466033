// What a kid of ours looks like: an RFC 7638 SHA-256 thumbprint, 43
// base64url characters. The CLI, the admin API and the control socket refuse
// anything else before looking for the key.
export const KID_PATTERN = '^[A-Za-z0-9_-]{43}$'

const KID = new RegExp(KID_PATTERN)

export const isKid = (value: string): boolean => KID.test(value)
