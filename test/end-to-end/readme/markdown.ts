// The documentation read the way the walk-through needs it: its fenced code
// blocks (a ```sh block runs, any other is shown only), the `# →` lines that
// say what a command prints, its headings as GitHub anchors, and its links.

export interface CodeBlock {
  /** the info string after the opening fence: `sh`, `console`, `json`… */
  language: string
  /** the block's text, without its fences */
  text: string
  /** 1-based line of the opening fence, for messages */
  line: number
}

const FENCE = /^```(\S*)\s*$/

/** The fenced code blocks of a Markdown page, in order. */
export function codeBlocks (markdown: string): CodeBlock[] {
  const blocks: CodeBlock[] = []
  let open: { language: string, line: number, lines: string[] } | undefined
  markdown.split('\n').forEach((line, index) => {
    const fence = FENCE.exec(line)
    if (open === undefined) {
      if (fence !== null) open = { language: fence[1] ?? '', line: index + 1, lines: [] }
    } else if (fence !== null && fence[1] === '') {
      blocks.push({ language: open.language, text: open.lines.join('\n'), line: open.line })
      open = undefined
    } else {
      open.lines.push(line)
    }
  })
  return blocks
}

/** The lines of a page outside its code blocks (headings and links are read there only). */
export function proseLines (markdown: string): string[] {
  const lines: string[] = []
  let inBlock = false
  for (const line of markdown.split('\n')) {
    if (FENCE.test(line)) inBlock = !inBlock
    else if (!inBlock) lines.push(line)
  }
  return lines
}

const EXPECTATION = /^\s*# → (.*)$/

/** What a block's commands must print: the text of its `# →` lines, in order. */
export function expectations (block: CodeBlock): string[] {
  return block.text.split('\n').flatMap((line) => {
    const match = EXPECTATION.exec(line)
    return match === null ? [] : [match[1] ?? '']
  })
}

/**
 * Where `expected` is found in `output` from `from` on, `…` standing for
 * anything: the end of the match, or -1. Each piece between the ellipses
 * must follow the one before.
 */
export function matchEnd (output: string, expected: string, from: number): number {
  let cursor = from
  for (const piece of expected.split('…')) {
    if (piece === '') continue
    const at = output.indexOf(piece, cursor)
    if (at === -1) return -1
    cursor = at + piece.length
  }
  return cursor
}

/** The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens. */
export function headingSlug (heading: string): string {
  return heading.trim().toLowerCase().replace(/[^\p{L}\p{N}\p{M}\s_-]/gu, '').replace(/\s/g, '-')
}

/** Every anchor of a page, a repeated heading's with GitHub's -1, -2… suffix. */
export function anchors (markdown: string): Set<string> {
  const seen = new Map<string, number>()
  const result = new Set<string>()
  for (const line of proseLines(markdown)) {
    const heading = /^#{1,6}\s+(.*)$/.exec(line)
    if (heading === null) continue
    const slug = headingSlug(heading[1] ?? '')
    const count = seen.get(slug) ?? 0
    seen.set(slug, count + 1)
    result.add(count === 0 ? slug : `${slug}-${count}`)
  }
  return result
}

/** The targets of a page's Markdown links that stay inside the repository (no scheme). */
export function relativeLinks (markdown: string): string[] {
  const targets: string[] = []
  for (const line of proseLines(markdown)) {
    for (const match of line.matchAll(/\]\(([^)\s]+)\)/g)) {
      const target = match[1] ?? ''
      if (!/^[a-z][a-z0-9+.-]*:/i.test(target)) targets.push(target)
    }
  }
  return targets
}

const SOURCE_FOLDERS = ['test', 'migrations', 'schemas', 'plugins', 'storage', 'routes', 'grants', 'client-auth', 'tokens', 'cli', 'signing-keys', 'dpop', 'workers', 'bench', 'docs']
const SOURCE_PATH = new RegExp(`^(?:${SOURCE_FOLDERS.join('|')})/[\\w./*-]+\\.(?:ts|sql|lua|md|json)$`)

/** The files of the repository a page names in code spans (`test/keys.test.ts`), `*` standing for any name part. */
export function sourcePaths (markdown: string): string[] {
  const paths = new Set<string>()
  for (const line of proseLines(markdown)) {
    for (const match of line.matchAll(/`([^`\s]+)`/g)) {
      const span = match[1] ?? ''
      if (SOURCE_PATH.test(span)) paths.add(span)
    }
  }
  return [...paths]
}
