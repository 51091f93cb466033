// The data directory of the embedded mode (DATA_DIR): the embedded database,
// the generated signing key, the lock that keeps it to one service process,
// and the control socket through which the CLI reaches that process.
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, statSync, writeSync } from 'node:fs'
import { generateKeyPairSync } from 'node:crypto'
import { join, resolve } from 'node:path'

export type KeyAlgorithm = 'RS256' | 'ES256' | 'EdDSA'

export const PGDATA = 'pgdata'
export const SIGNING_KEY_FILE = 'signing-key.pem'
export const LOCK_FILE = 'service.lock'
export const CONTROL_SOCKET = 'control.sock'

/** Creates the directory (owner-only) when missing; returns its absolute path. */
export function ensureDataDir (dir: string): string {
  const path = resolve(dir)
  if (!existsSync(path)) mkdirSync(path, { recursive: true, mode: 0o700 })
  if (!statSync(path).isDirectory()) throw new Error(`${path} is not a directory`)
  return path
}

/** A new private key of the algorithm, as PKCS#8 PEM. */
export function generatePrivateKeyPem (algorithm: KeyAlgorithm): { privateKey: string, publicKey: string } {
  const pair = algorithm === 'RS256'
    ? generateKeyPairSync('rsa', { modulusLength: 2048 })
    : algorithm === 'ES256'
      ? generateKeyPairSync('ec', { namedCurve: 'P-256' })
      : generateKeyPairSync('ed25519')
  return {
    privateKey: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKey: pair.publicKey.export({ type: 'spki', format: 'pem' }).toString()
  }
}

/** Writes a new file readable by its owner only; refuses to replace one. */
export function writeOwnerOnly (path: string, content: string): void {
  const fd = openSync(path, 'wx', 0o600)
  try {
    writeSync(fd, content)
  } finally {
    closeSync(fd)
  }
  // The umask cannot widen it, but an odd filesystem might: say it once more.
  chmodSync(path, 0o600)
}

/**
 * The signing key kept in the data directory: read when it exists, generated
 * (and saved, owner-only) on the first start otherwise.
 */
export function dataDirSigningKey (dir: string, algorithm: KeyAlgorithm): { pem: string, path: string, generated: boolean } {
  const root = ensureDataDir(dir)
  const path = join(root, SIGNING_KEY_FILE)
  if (existsSync(path)) return { pem: readFileSync(path, 'utf8'), path, generated: false }
  writeOwnerOnly(path, generatePrivateKeyPem(algorithm).privateKey)
  return { pem: readFileSync(path, 'utf8'), path, generated: true }
}

function processAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** The pid of the live process holding the data directory's lock, if any. */
export function lockHolder (dir: string): number | undefined {
  const path = join(resolve(dir), LOCK_FILE)
  let pid: number
  try {
    pid = Number.parseInt(readFileSync(path, 'utf8'), 10)
  } catch {
    return undefined
  }
  return Number.isSafeInteger(pid) && pid > 0 && processAlive(pid) ? pid : undefined
}

export class DataDirInUseError extends Error {
  readonly pid: number
  constructor (dir: string, pid: number) {
    super(`the data directory ${dir} is in use by process ${pid}; the embedded database admits one process`)
    this.name = 'DataDirInUseError'
    this.pid = pid
  }
}

// Data directories this process holds (a pid check cannot tell them apart).
const heldHere = new Set<string>()

/**
 * Takes the data directory for this process: the embedded database may be
 * opened by one process only. A lock left by a process that died is taken
 * over. Returns the function that gives it back.
 */
export function lockDataDir (dir: string): () => void {
  const root = ensureDataDir(dir)
  const path = join(root, LOCK_FILE)
  if (heldHere.has(root)) throw new DataDirInUseError(root, process.pid)
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeOwnerOnly(path, `${process.pid}\n`)
      heldHere.add(root)
      return () => {
        heldHere.delete(root)
        let holder: string
        try {
          holder = readFileSync(path, 'utf8').trim()
        } catch {
          return // removed while held: nothing to give back
        }
        if (holder === String(process.pid)) rmSync(path, { force: true })
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      const holder = lockHolder(root)
      if (holder !== undefined && holder !== process.pid) throw new DataDirInUseError(root, holder)
      // Stale: its process is gone (or was an earlier process with our pid).
      rmSync(path, { force: true })
    }
  }
  throw new Error(`cannot take the lock ${path}`)
}
