// The data directory of the embedded mode (DATA_DIR): the embedded database,
// the generated signing key, the lock that keeps it to one service process,
// and the control socket through which the CLI reaches that process.
import { chmodSync, closeSync, existsSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeSync, type Stats } from 'node:fs'
import { join, resolve } from 'node:path'
import type { SigningAlgorithm } from '../signing-keys/algorithms.ts'
import { generatePrivateKeyPem } from '../signing-keys/generate.ts'

export const PGDATA = 'pgdata'
export const SIGNING_KEY_FILE = 'signing-key.pem'
export const LOCK_FILE = 'service.lock'
export const CONTROL_SOCKET = 'control.sock'

const GROUP_OTHER = 0o077
const GROUP_OTHER_WRITE = 0o022
const modeText = (stats: Stats): string => `0${(stats.mode & 0o777).toString(8).padStart(3, '0')}`

/** The effective uid of this process; undefined where there are none (Windows). */
const processUid = (): number | undefined => process.geteuid?.()

/** Why a file or folder of this process's own is not: another owner, or open to group or others. */
function ownerOnlyProblem (path: string, stats: Stats, uid: number, chmodTo: string): string | undefined {
  if (stats.uid !== uid) return `${path} is owned by uid ${stats.uid}, not by this process (uid ${uid}); chown ${uid} ${path}`
  if ((stats.mode & GROUP_OTHER) !== 0) return `${path} is open to group or others (mode ${modeText(stats)}); chmod ${chmodTo} ${path}`
  return undefined
}

/**
 * Why DATA_DIR may not hold this service's secrets: owned by another user,
 * or open to group or others. Undefined when it is fine, or does not exist
 * yet (it is then created owner-only). The text suits a ConfigError for
 * DATA_DIR: the path, what is wrong, and the command that fixes it.
 */
export function dataDirPermissionProblem (dir: string): string | undefined {
  const path = resolve(dir)
  let stats: Stats
  try {
    stats = statSync(path)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined
    return `cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`
  }
  if (!stats.isDirectory()) return `${path} is not a directory`
  const uid = processUid()
  return uid === undefined ? undefined : ownerOnlyProblem(path, stats, uid, '700')
}

/**
 * Why a private key file (JWT_PRIVATE_KEY_FILE) must not be used. A file of
 * this process's user must be closed to group and others. A file owned by
 * root is accepted even when group or others may read it: that is how
 * platforms mount secrets (Kubernetes, Docker) for a service that does not
 * run as root, and root reads everything anyway; it must still not be
 * writable by group or others. A file of any other user is refused.
 */
export function keyFilePermissionProblem (file: string): string | undefined {
  const path = resolve(file)
  let stats: Stats
  try {
    stats = statSync(path)
  } catch (err) {
    return `cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`
  }
  const uid = processUid()
  if (uid === undefined) return undefined
  if (stats.uid === 0) {
    if ((stats.mode & GROUP_OTHER_WRITE) !== 0) return `${path} is writable by group or others (mode ${modeText(stats)}); chmod go-w ${path}`
    return undefined
  }
  if (stats.uid !== uid) return `${path} is owned by uid ${stats.uid}, neither this process's user (uid ${uid}) nor root; chown ${uid} ${path}`
  return ownerOnlyProblem(path, stats, uid, '600')
}

/**
 * Takes group and other permissions away from everything under `dir`
 * (symbolic links are left alone). PGlite writes the files of a new database
 * world-readable and world-writable (0666), whatever the umask: the WAL and
 * the tables hold client records and refresh-token hashes.
 */
export function restrictToOwner (dir: string): void {
  const walk = (path: string): void => {
    try {
      const stats = lstatSync(path)
      if (stats.isSymbolicLink()) return
      if ((stats.mode & GROUP_OTHER) !== 0) chmodSync(path, stats.mode & 0o7700)
      if (stats.isDirectory()) {
        for (const name of readdirSync(path)) walk(join(path, name))
      }
    } catch {
      // Removed meanwhile, or not ours to change: DATA_DIR itself is checked
      // to be owner-only, so nothing under it is reachable by others anyway.
    }
  }
  walk(resolve(dir))
}

/** Creates the directory (owner-only) when missing; returns its absolute path. */
export function ensureDataDir (dir: string): string {
  const path = resolve(dir)
  if (!existsSync(path)) mkdirSync(path, { recursive: true, mode: 0o700 })
  if (!statSync(path).isDirectory()) throw new Error(`${path} is not a directory`)
  return path
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
 * The signing key kept in the data directory, if there is one. Written by
 * this service into its own folder: no exception for a root-owned file here.
 */
export function readDataDirSigningKey (dir: string): { pem: string, path: string } | undefined {
  const path = join(resolve(dir), SIGNING_KEY_FILE)
  if (!existsSync(path)) return undefined
  const uid = processUid()
  const problem = uid === undefined ? undefined : ownerOnlyProblem(path, statSync(path), uid, '600')
  if (problem !== undefined) throw new Error(problem)
  return { pem: readFileSync(path, 'utf8'), path }
}

/**
 * Creates the data directory (owner-only) and a signing key in it, saved
 * owner-only, unless it has one already: a key is never replaced.
 */
export function createDataDirSigningKey (dir: string, algorithm: SigningAlgorithm): { path: string, generated: boolean } {
  const path = join(ensureDataDir(dir), SIGNING_KEY_FILE)
  if (readDataDirSigningKey(dir) !== undefined) return { path, generated: false }
  writeOwnerOnly(path, generatePrivateKeyPem(algorithm).privateKey)
  return { path, generated: true }
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
 * Whether this very process holds the data directory (a service started in
 * it), as opposed to a lock file left with our pid by an earlier process.
 */
export function heldByThisProcess (dir: string): boolean {
  return heldHere.has(resolve(dir))
}

/**
 * Takes the data directory for this process: the embedded database may be
 * opened by one process only. A lock left by a process that died is taken
 * over. Returns the function that gives it back. The embedded database's
 * files are made owner-only when it is taken (a folder written by an
 * earlier version) and when it is given back (files created meanwhile).
 */
export function lockDataDir (dir: string): () => void {
  const root = ensureDataDir(dir)
  const path = join(root, LOCK_FILE)
  if (heldHere.has(root)) throw new DataDirInUseError(root, process.pid)
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      writeOwnerOnly(path, `${process.pid}\n`)
      heldHere.add(root)
      restrictToOwner(join(root, PGDATA))
      return () => {
        heldHere.delete(root)
        restrictToOwner(join(root, PGDATA))
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
