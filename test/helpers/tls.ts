// TLS material for tests of Redis over TLS: a CA of the test's own, a server
// certificate it signed for 127.0.0.1 and localhost, and a second CA that
// signed nothing here (the wrong CA for the server).
import { execFileSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'

export interface TestCertificates {
  caFile: string
  otherCaFile: string
  certFile: string
  keyFile: string
}

/** Writes the CAs, the server key and its certificate into `dir` (valid two days). */
export function makeTestCertificates (dir: string): TestCertificates {
  const file = (name: string): string => join(dir, name)
  const openssl = (...args: string[]): void => { execFileSync('openssl', args, { stdio: 'pipe' }) }
  const makeCa = (name: string): void => {
    openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', file(`${name}.key`), '-out', file(`${name}.crt`), '-days', '2', '-subj', `/CN=session-service test ${name}`,
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign')
  }
  makeCa('ca')
  makeCa('other-ca')
  openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', file('server.key'), '-out', file('server.csr'), '-subj', '/CN=localhost')
  writeFileSync(file('server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n')
  openssl('x509', '-req', '-in', file('server.csr'), '-CA', file('ca.crt'), '-CAkey', file('ca.key'), '-CAcreateserial',
    '-out', file('server.crt'), '-days', '2', '-extfile', file('server.ext'))
  return { caFile: file('ca.crt'), otherCaFile: file('other-ca.crt'), certFile: file('server.crt'), keyFile: file('server.key') }
}

/**
 * The commands of the service user that docs/security.md lists: what the
 * service, its subscribers and the CLI send (the Lua scripts' calls included).
 * ioredis also sends CLIENT SETINFO, which Redis knows from 7.2 on only.
 */
export const SERVICE_REDIS_COMMANDS = [
  'ping', 'info', 'client|setname', 'select', 'quit',
  'get', 'mget', 'set', 'del', 'exists', 'expire', 'expireat', 'pexpire', 'pttl', 'incr', 'decr',
  'hget', 'hmget', 'hset', 'multi', 'exec', 'eval', 'evalsha', 'publish', 'subscribe'
]
