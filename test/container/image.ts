// The container image, replayed without a Docker engine: each stage of the
// Dockerfile is rebuilt in a temporary folder from its own COPY, ENV and RUN
// lines (the build context filtered by .dockerignore), and its commands run
// as processes with exactly the image's environment.
import { execFile } from 'node:child_process'
import { existsSync, readFileSync, readdirSync } from 'node:fs'
import { chmod, cp, mkdir, stat, symlink } from 'node:fs/promises'
import { basename, join, posix, relative } from 'node:path'
import { promisify } from 'node:util'
import { PROJECT_DIR, type TestContext, TestProcess } from '../helper.ts'

// Every path the Dockerfile names inside the image must lie under its WORKDIR.
export const IMAGE_WORKDIR = '/app'
// docker-compose.yml's migrate service runs this in the image.
export const MIGRATE_COMMAND = ['node', 'dist/cli/migrate.js']

export const execFileAsync = promisify(execFile)

export interface Instruction {
  keyword: string
  args: string
}

export interface Stage {
  name: string
  base: string
  instructions: Instruction[]
}

/** The stages of a Dockerfile: comments dropped, continuation lines joined, global ARG defaults put into FROM. */
export function readDockerfile (text: string): Stage[] {
  const lines: string[] = []
  let pending = ''
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    // Comment lines (parser directives included) and blank lines may sit inside a continuation.
    if (line === '' || line.startsWith('#')) continue
    if (line.endsWith('\\')) {
      pending += line.slice(0, -1) + ' '
      continue
    }
    lines.push(pending + line)
    pending = ''
  }
  const globalArgs = new Map<string, string>()
  const stages: Stage[] = []
  for (const line of lines) {
    const [, word = '', args = ''] = /^(\S+)\s*(.*)$/.exec(line) ?? []
    const keyword = word.toUpperCase()
    const stage = stages.at(-1)
    if (keyword === 'FROM') {
      const [base = '', as, name] = args.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, braced?: string, bare?: string) => globalArgs.get(braced ?? bare ?? '') ?? '').split(/\s+/)
      stages.push({ name: as?.toUpperCase() === 'AS' && name !== undefined ? name : String(stages.length), base, instructions: [] })
    } else if (stage !== undefined) {
      stage.instructions.push({ keyword, args })
    } else if (keyword === 'ARG') {
      const [name = '', value = ''] = args.split('=')
      globalArgs.set(name.trim(), value.trim())
    }
  }
  return stages
}

/** Leading `--name=value` options of an instruction, and what follows them. */
export function splitOptions (args: string): { options: Map<string, string>, rest: string } {
  const options = new Map<string, string>()
  let rest = args
  for (let match = /^--([\w-]+)(?:=(\S*))?\s+/.exec(rest); match !== null; match = /^--([\w-]+)(?:=(\S*))?\s+/.exec(rest)) {
    options.set(match[1] ?? '', match[2] ?? '')
    rest = rest.slice(match[0].length)
  }
  return { options, rest }
}

/** An exec-form command (a JSON array of strings), or undefined for the shell form. */
export function execForm (text: string): string[] | undefined {
  try {
    const parsed: unknown = JSON.parse(text)
    return Array.isArray(parsed) && parsed.every((item) => typeof item === 'string') ? parsed : undefined
  } catch {
    return undefined
  }
}

export function instructions (stage: Stage | undefined, keyword: string): Instruction[] {
  return stage?.instructions.filter((instruction) => instruction.keyword === keyword) ?? []
}

// Dockerfile and .dockerignore patterns: `*` and `?` within a path segment, `**` across them.
export function globPattern (pattern: string): RegExp {
  const source = pattern.replace(/^\.?\/+|\/+$/g, '').split(/(\*\*|\*|\?)/).map((part) =>
    part === '**' ? '.*' : part === '*' ? '[^/]*' : part === '?' ? '[^/]' : part.replace(/[.+^${}()|[\]\\]/g, '\\$&')).join('')
  return new RegExp(`^${source}$`)
}

export const ignorePatterns = readFileSync(join(PROJECT_DIR, '.dockerignore'), 'utf8').split('\n')
  .map((line) => line.trim()).filter((line) => line !== '' && !line.startsWith('#'))
  .map((line) => {
    if (line.startsWith('!')) throw new Error(`.dockerignore: exceptions (${line}) are not replayed by this test`)
    return globPattern(line)
  })

/** Whether the build context leaves out this path (relative to the project): it or a folder above it matches .dockerignore. */
export function ignoredByContext (path: string): boolean {
  const segments = path.split(/[\\/]/)
  return segments.some((_, i) => {
    const prefix = segments.slice(0, i + 1).join('/')
    return ignorePatterns.some((pattern) => pattern.test(prefix))
  })
}

/** The context entries a COPY source names, after .dockerignore. */
export function contextSources (source: string): string[] {
  if (!/[*?]/.test(source)) return ignoredByContext(posix.normalize(source)) ? [] : [source]
  const dir = posix.dirname(source)
  if (/[*?]/.test(dir)) throw new Error(`COPY ${source}: wildcards in folder names are not replayed by this test`)
  const pattern = globPattern(posix.basename(source))
  return readdirSync(join(PROJECT_DIR, dir)).filter((name) => pattern.test(name))
    .map((name) => posix.join(dir, name)).filter((path) => !ignoredByContext(path))
}

/** A path of the image (absolute, or relative to the WORKDIR) as a path in a stage's folder. */
export function stagePath (stageDir: string, imagePath: string): string {
  const absolute = posix.resolve(IMAGE_WORKDIR, imagePath)
  if (absolute !== IMAGE_WORKDIR && !absolute.startsWith(`${IMAGE_WORKDIR}/`)) {
    throw new Error(`${imagePath}: only paths under ${IMAGE_WORKDIR} are replayed by this test`)
  }
  return join(stageDir, posix.relative(IMAGE_WORKDIR, absolute))
}

/** ENV lines: `KEY=value ...`, or the older `KEY value`. */
export function envValues (args: string): Record<string, string> {
  const env: Record<string, string> = {}
  if (!args.includes('=')) {
    const [name = '', ...value] = args.split(/\s+/)
    env[name] = value.join(' ')
    return env
  }
  for (const pair of args.split(/\s+/)) {
    const [name = '', ...value] = pair.split('=')
    env[name] = value.join('=').replace(/^"(.*)"$/, '$1')
  }
  return env
}

// What a build step may see of this machine: where node and npm are, the npm
// cache (which --prefer-offline reads) and how to reach the registry. Nothing
// else: npm's own npm_config_* variables would point it at this project.
export function buildEnv (stageEnv: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {}
  for (const [name, value] of Object.entries(process.env)) {
    if (value === undefined) continue
    if (name === 'PATH' || name === 'HOME' || name === 'npm_config_cache' || name === 'npm_config_registry' ||
      /^(https?|no)_proxy$/i.test(name)) env[name] = value
  }
  return { ...env, ...stageEnv }
}

/**
 * `mkdir -p`, `chown` and `chmod` on absolute paths (a folder the image makes
 * for a volume): replayed under the stage's `rootfs/` folder, the owner left
 * as it is (this test does not run as the image's user). False for any other step.
 */
export async function replayFolderStep (stageDir: string, words: string[]): Promise<boolean> {
  const [command, ...args] = words
  if (command !== 'mkdir' && command !== 'chown' && command !== 'chmod') return false
  const paths = command === 'mkdir' ? args.filter((arg) => arg !== '-p') : args.slice(1)
  if (paths.length === 0 || !paths.every((path) => path.startsWith('/') && !path.includes('..'))) return false
  for (const path of paths) {
    const target = join(stageDir, 'rootfs', path)
    if (command === 'mkdir') await mkdir(target, { recursive: true })
    if (command === 'chmod') await chmod(target, Number.parseInt(args[0] ?? '', 8))
  }
  return true
}

/**
 * A RUN line, step by step. Only npm steps are replayed: `npm ci` (with
 * --omit=dev for real, from the npm cache; a full one by linking the
 * project's node_modules, which CI installed from the same lock file) and
 * `npm run <script>`. Anything else stops the test until it learns the step.
 */
export async function replayRun (stageDir: string, args: string, stageEnv: Record<string, string>): Promise<void> {
  const { rest } = splitOptions(args)
  for (const step of rest.split('&&').map((part) => part.trim())) {
    const words = step.split(/\s+/)
    if (await replayFolderStep(stageDir, words)) continue
    if (/[;|<>$`'"\\]/.test(step) || words[0] !== 'npm' || (words[1] !== 'ci' && words[1] !== 'run')) {
      throw new Error(`RUN ${step}: not replayed by this test; teach replayRun this step`)
    }
    const env = buildEnv(stageEnv)
    // npm ci starts by removing node_modules: never through a link to the project's.
    if (words[1] === 'ci' && existsSync(join(stageDir, 'node_modules'))) throw new Error(`RUN ${step}: a second npm ci in one stage is not replayed`)
    if (words[1] === 'ci' && !words.includes('--omit=dev') && env.NODE_ENV !== 'production') {
      await symlink(join(PROJECT_DIR, 'node_modules'), join(stageDir, 'node_modules'), 'dir')
      continue
    }
    const npmArgs = words[1] === 'ci' ? [...words.slice(1), '--prefer-offline'] : words.slice(1)
    try {
      await execFileAsync('npm', npmArgs, { cwd: stageDir, env, maxBuffer: 64 * 1024 * 1024 })
    } catch (err) {
      const { stdout = '', stderr = '' } = err as { stdout?: string, stderr?: string }
      throw new Error(`RUN ${step} failed: ${(err as Error).message}\n${stdout}\n${stderr}`)
    }
  }
}

/** A COPY line: from the build context, or with --from from an earlier stage's folder. */
export async function replayCopy (stageDir: string, args: string, stageDirs: Map<string, string>): Promise<void> {
  const { options, rest } = splitOptions(args)
  const paths = execForm(rest) ?? rest.split(/\s+/)
  const dest = paths.pop()
  if (dest === undefined || paths.length === 0) throw new Error(`COPY ${args}: needs sources and a destination`)
  const from = options.get('from')
  let sources: string[]
  if (from === undefined) {
    sources = paths.flatMap(contextSources).map((path) => join(PROJECT_DIR, path))
  } else {
    const fromDir = stageDirs.get(from)
    if (fromDir === undefined) throw new Error(`COPY --from=${from}: no earlier stage of that name`)
    sources = paths.map((path) => stagePath(fromDir, path))
  }
  if (sources.length === 0) throw new Error(`COPY ${args}: no source in the build context (.dockerignore?)`)
  // As docker does: a folder's contents go into dest; files go into dest when
  // it ends with a slash or several sources are copied, else become dest.
  const target = stagePath(stageDir, dest)
  const intoFolder = dest.endsWith('/') || sources.length > 1
  for (const source of sources) {
    if (!existsSync(source)) throw new Error(`COPY ${args}: ${source} does not exist`)
    const isDir = (await stat(source)).isDirectory()
    await cp(source, isDir || !intoFolder ? target : join(target, basename(source)), {
      recursive: true,
      verbatimSymlinks: true,
      filter: (path) => from !== undefined || !ignoredByContext(relative(PROJECT_DIR, path))
    })
  }
}

export interface Image {
  dir: string
  stage: Stage
  /** the final stage's ENV */
  env: Record<string, string>
  cmd: string[]
  healthcheck: string[]
  user: string
}

/** Every stage of the Dockerfile in a folder of `root`; the last one is the image. */
export async function buildImage (root: string, stages: Stage[]): Promise<Image> {
  const stageDirs = new Map<string, string>()
  let image: Image | undefined
  for (const stage of stages) {
    const dir = join(root, `stage-${stage.name}`)
    await mkdir(dir, { recursive: true })
    const env: Record<string, string> = {}
    let cmd: string[] = []
    let healthcheck: string[] = []
    let user = 'root'
    for (const { keyword, args } of stage.instructions) {
      switch (keyword) {
        case 'WORKDIR':
          if (args !== IMAGE_WORKDIR) throw new Error(`WORKDIR ${args}: this test replays ${IMAGE_WORKDIR} only`)
          break
        case 'ENV': Object.assign(env, envValues(args)); break
        case 'COPY': await replayCopy(dir, args, stageDirs); break
        case 'RUN': await replayRun(dir, args, env); break
        case 'USER': user = args; break
        case 'CMD': cmd = execForm(args) ?? ['/bin/sh', '-c', args]; break
        case 'HEALTHCHECK': {
          const { rest } = splitOptions(args)
          healthcheck = execForm(rest.replace(/^CMD\s+/i, '')) ?? ['/bin/sh', '-c', rest.replace(/^CMD\s+/i, '')]
          break
        }
        // A volume is a mount point at run time; the folder itself is made by a RUN.
        case 'ARG': case 'EXPOSE': case 'LABEL': case 'STOPSIGNAL': case 'VOLUME': break
        default: throw new Error(`${keyword}: not replayed by this test`)
      }
    }
    stageDirs.set(stage.name, dir)
    image = { dir, stage, env, cmd, healthcheck, user }
  }
  if (image === undefined) throw new Error('the Dockerfile has no stage')
  return image
}

/** A command of the image, run in its folder with exactly `env` (the image's `node` is this node). */
export class ContainerProcess extends TestProcess {
  constructor (t: TestContext, image: Image, argv: string[], env: Record<string, string>) {
    const [command = '', ...args] = argv
    super(t, command === 'node' ? process.execPath : command, args, { cwd: image.dir, env })
  }

  /** The JSON lines of stdout (npm and node may print others). */
  override logLines (): Array<Record<string, unknown>> {
    return this.stdout.split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as Record<string, unknown>)
  }
}
