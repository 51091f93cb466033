// What the Redis implementations of storage/ share: their Lua scripts, kept
// in storage/lua as files of their own (copied next to the compiled modules
// by the build), and the check of a transaction's replies.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { ChainableCommander } from 'ioredis'

/** The text of storage/lua/<name>.lua; read at module load, so a missing script stops the start. */
export function luaScript (name: string): string {
  return readFileSync(join(import.meta.dirname, 'lua', `${name}.lua`), 'utf8')
}

/** Runs a pipeline or MULTI; throws the first error among its replies (ioredis resolves with them). */
export async function execAll (commands: ChainableCommander): Promise<void> {
  const results = await commands.exec()
  const failed = results?.find(([err]) => err !== null)?.[0]
  if (failed !== undefined && failed !== null) throw failed
}
