// Who the changes made with the CLI are recorded as, in the history of
// clients and of signing keys alike.
import { userInfo } from 'node:os'

/** The operating system's user running the command, as `cli:<user>`. */
export function cliActor (): string {
  try {
    return `cli:${userInfo().username}`
  } catch {
    // No passwd entry for this uid (some containers): its number instead.
    return `cli:uid-${process.getuid?.() ?? 'unknown'}`
  }
}
