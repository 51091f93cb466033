// `migrate`: the pending migrations, applied to the configured database.
import { applyMigrations } from '../../plugins/migrations.ts'
import { JSON_OPTION, noPositionals, type CommandTable } from '../command.ts'
import { withDatabase } from '../connection.ts'
import type { Settings } from '../../plugins/config.ts'

/** Applies pending migrations to the configured database; returns the names applied. */
async function migrate (config: Settings, onApplied: (name: string) => void): Promise<string[]> {
  return await withDatabase(config, async (connection) => {
    if (connection.service !== undefined) {
      const applied = await connection.service.migrate()
      applied.forEach(onApplied)
      return applied
    }
    return await applyMigrations(connection.db, { info: (fields) => onApplied((fields as { migration?: string }).migration ?? '') })
  })
}

export const migrateCommands: CommandTable = {
  migrate: {
    summary: 'apply pending database migrations',
    usage: 'migrate [--json]',
    help: 'Applies the migrations not yet applied to the configured database (each in its own transaction; safe to run while instances start).',
    options: JSON_OPTION,
    async run ({ positionals, config, out }) {
      noPositionals(positionals, 'migrate')
      const applied = await migrate(config, (name) => out.print(`migration applied: ${name}`))
      if (out.json) out.data({ applied })
      else out.print(applied.length === 0 ? 'migrate: nothing to apply' : `migrate: applied ${applied.length}`)
    }
  }
}
