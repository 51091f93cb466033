// `clients ...`: register, list, show, rotate, disable, enable and delete
// clients. Every change is announced to the running instances.
import { randomBytes, randomUUID } from 'node:crypto'
import { clientsRepository, ClientExistsError, MAX_SECRET_BYTES, type ClientRecord, type ClientStatus } from '../../storage/clients.js'
import { announceChange } from '../announce.js'
import { JSON_OPTION, noPositionals, type CommandContext, type CommandTable } from '../command.js'
import { withDatabase } from '../connection.js'
import { SCOPE_TOKEN } from '../../schemas/scope.js'
import { CliError, readInput, usage, type CliIo, type Output } from '../io.js'

const CLIENT_ID = /^[\x21-\x7E]{1,255}$/
const SECRET_SHOWN_ONCE = 'The secret is shown this once; store it now.'

/** A client as the CLI shows it: never its secret or hash. */
function clientView (client: ClientRecord): Record<string, unknown> {
  return {
    client_id: client.id,
    name: client.name,
    status: client.status,
    scopes: client.scopes,
    default_scopes: client.defaultScopes,
    audiences: client.audiences,
    rate_limit: client.rateLimit,
    authentication: [...(client.secretHash !== null ? ['client_secret'] : []),
      ...(client.jwksUri !== null || client.jwks !== null ? ['private_key_jwt'] : [])],
    created_at: client.createdAt.toISOString(),
    updated_at: client.updatedAt.toISOString()
  }
}

function printClient (out: Output, view: Record<string, unknown>): void {
  for (const [name, value] of Object.entries(view)) {
    const text = Array.isArray(value) ? (value.length === 0 ? '-' : value.join(' ')) : value === null ? '-' : String(value)
    out.print(`${`${name}:`.padEnd(16)}${text}`)
  }
}

function printClientTable (out: Output, clients: ClientRecord[]): void {
  const table = [['CLIENT_ID', 'STATUS', 'NAME', 'SCOPES', 'AUDIENCES'],
    ...clients.map((client) => [client.id, client.status, client.name === '' ? '-' : client.name,
      client.scopes.length === 0 ? '-' : client.scopes.join(' '), client.audiences.length === 0 ? '-' : client.audiences.join(' ')])]
  const widths = table[0]?.map((_, column) => Math.max(...table.map((line) => (line[column] ?? '').length))) ?? []
  for (const line of table) out.print(line.map((cell, column) => cell.padEnd(widths[column] ?? 0)).join('  ').trimEnd())
}

function listOption (values: string[] | undefined, what: string, command: string, pattern: RegExp): string[] {
  const items = (values ?? []).flatMap((value) => value.split(/[\s,]+/)).filter((item) => item !== '')
  const bad = items.find((item) => !pattern.test(item) || item.length > 255)
  if (bad !== undefined) throw usage(`"${bad}" is not a valid ${what}`, command)
  return [...new Set(items)]
}

function checkClientId (id: string, command: string): string {
  if (!CLIENT_ID.test(id)) throw usage(`"${id}" is not a valid client id (1 to 255 visible ASCII characters)`, command)
  return id
}

function clientIdArgument (positionals: string[], command: string): string {
  if (positionals.length !== 1) throw usage('give exactly one client id', command)
  return checkClientId(positionals[0] ?? '', command)
}

async function chooseSecret (fromStdin: boolean, io: CliIo, command: string): Promise<string> {
  if (!fromStdin) return randomBytes(32).toString('base64url')
  const secret = (await readInput(io)).replace(/\r?\n$/, '')
  if (secret.length === 0) throw usage('the secret read from stdin is empty', command)
  const bytes = Buffer.byteLength(secret, 'utf8')
  // bcrypt reads only the first 72 bytes: a longer secret would be truncated silently.
  if (bytes > MAX_SECRET_BYTES) throw usage(`the secret is ${bytes} bytes; at most ${MAX_SECRET_BYTES} are allowed (bcrypt ignores the rest)`, command)
  if (bytes < 16) throw usage('the secret is shorter than 16 bytes', command)
  return secret
}

const noClient = (id: string): CliError => new CliError(`no client "${id}"`)

async function setStatus ({ positionals, config, out }: CommandContext, command: string, status: ClientStatus): Promise<void> {
  const id = clientIdArgument(positionals, command)
  await withDatabase(config, async (connection) => {
    if (!await clientsRepository(connection.db).setStatus(id, status)) throw noClient(id)
    await announceChange(config, connection, id, out)
    if (out.json) out.data({ client_id: id, status })
    else out.print(`client ${id} ${status}`)
  })
}

/** The settings of `clients create`, checked. */
function newClientOptions (values: Record<string, unknown>, command: string): { id: string, name: string, scopes: string[], defaultScopes: string[], audiences: string[], rateLimit: number | null } {
  const name = values.name as string | undefined
  if (name === undefined || name.trim() === '') throw usage('--name is required', command)
  if (name.length > 200) throw usage('--name is longer than 200 characters', command)
  const id = checkClientId((values.id as string | undefined) ?? randomUUID(), command)
  const scopes = listOption(values.scope as string[] | undefined, 'scope', command, SCOPE_TOKEN)
  const defaultScopes = listOption(values['default-scope'] as string[] | undefined, 'scope', command, SCOPE_TOKEN)
  const notAllowed = defaultScopes.find((scope) => !scopes.includes(scope))
  if (notAllowed !== undefined) throw usage(`default scope "${notAllowed}" is not among --scope`, command)
  const audiences = listOption(values.audience as string[] | undefined, 'audience', command, /^[\x21-\x7E]+$/)
  let rateLimit: number | null = null
  if (values['rate-limit'] !== undefined) {
    const text = values['rate-limit'] as string
    rateLimit = /^\d{1,9}$/.test(text) ? Number(text) : Number.NaN
    if (!(rateLimit >= 1)) throw usage('--rate-limit must be a whole number of requests per minute, at least 1', command)
  }
  return { id, name, scopes, defaultScopes, audiences, rateLimit }
}

async function createClient ({ values, positionals, config, out, io }: CommandContext): Promise<void> {
  const command = 'clients create'
  noPositionals(positionals, command)
  const client = newClientOptions(values, command)
  const secret = await chooseSecret(values['secret-stdin'] === true, io, command)
  await withDatabase(config, async (connection) => {
    const clients = clientsRepository(connection.db)
    try {
      await clients.insert({ ...client, secret }, config.bcryptCost)
    } catch (err) {
      if (err instanceof ClientExistsError) throw new CliError(err.message)
      throw err
    }
    await announceChange(config, connection, client.id, out)
    const record = await clients.findRecord(client.id)
    if (record === undefined) throw noClient(client.id)
    const view = clientView(record)
    if (out.json) {
      out.data({ ...view, client_secret: secret })
      return
    }
    out.print(`client created in ${connection.where}`)
    printClient(out, view)
    out.print(`${'client_secret:'.padEnd(16)}${secret}`)
    out.print(SECRET_SHOWN_ONCE)
  })
}

async function rotateSecret ({ values, positionals, config, out, io }: CommandContext): Promise<void> {
  const command = 'clients rotate-secret'
  const id = clientIdArgument(positionals, command)
  const secret = await chooseSecret(values['secret-stdin'] === true, io, command)
  await withDatabase(config, async (connection) => {
    if (!await clientsRepository(connection.db).setSecret(id, secret, config.bcryptCost)) throw noClient(id)
    await announceChange(config, connection, id, out)
    if (out.json) {
      out.data({ client_id: id, client_secret: secret })
      return
    }
    out.print(`${'client_id:'.padEnd(16)}${id}`)
    out.print(`${'client_secret:'.padEnd(16)}${secret}`)
    out.print(SECRET_SHOWN_ONCE)
  })
}

async function showClient ({ positionals, config, out }: CommandContext): Promise<void> {
  const id = clientIdArgument(positionals, 'clients show')
  await withDatabase(config, async ({ db }) => {
    const record = await clientsRepository(db).findRecord(id)
    if (record === undefined) throw noClient(id)
    const view = clientView(record)
    if (out.json) out.data(view)
    else printClient(out, view)
  })
}

async function deleteClient ({ positionals, config, out }: CommandContext): Promise<void> {
  const id = clientIdArgument(positionals, 'clients delete')
  await withDatabase(config, async (connection) => {
    if (!await clientsRepository(connection.db).delete(id)) throw noClient(id)
    await announceChange(config, connection, id, out)
    if (out.json) out.data({ client_id: id, deleted: true })
    else out.print(`client ${id} deleted`)
  })
}

export const clientsCommands: CommandTable = {
  'clients create': {
    summary: 'register a client and print its secret (shown once)',
    usage: 'clients create --name <name> [--id <client_id>] [--scope <scope>]... [--default-scope <scope>]... [--audience <aud>]... [--rate-limit <n>] [--secret-stdin] [--json]',
    help: `Registers a client that authenticates with a secret. Without --id, the id is a
random UUID. The secret is generated (32 random bytes, base64url) and printed
once; only its bcrypt hash is stored. --secret-stdin reads the secret from
standard input instead (16 to ${MAX_SECRET_BYTES} bytes).
Scopes and audiences may be repeated or given as one space- or comma-separated
list. --default-scope: granted when a token request names no scope (must be
among --scope). --rate-limit: token requests per minute (default: RATE_LIMIT_DEFAULT).`,
    options: {
      name: { type: 'string' },
      id: { type: 'string' },
      scope: { type: 'string', multiple: true },
      'default-scope': { type: 'string', multiple: true },
      audience: { type: 'string', multiple: true },
      'rate-limit': { type: 'string' },
      'secret-stdin': { type: 'boolean' },
      ...JSON_OPTION
    },
    run: createClient
  },
  'clients list': {
    summary: 'list the clients',
    usage: 'clients list [--json]',
    help: 'Lists every client: id, status, name, scopes and audiences. Secrets are never shown.',
    options: JSON_OPTION,
    async run ({ positionals, config, out }) {
      noPositionals(positionals, 'clients list')
      await withDatabase(config, async ({ db }) => {
        const clients = await clientsRepository(db).list()
        if (out.json) out.data(clients.map(clientView))
        else if (clients.length === 0) out.print('no clients')
        else printClientTable(out, clients)
      })
    }
  },
  'clients show': {
    summary: 'show one client',
    usage: 'clients show <client_id> [--json]',
    help: 'Shows a client\'s settings. The secret is never shown (only its hash is stored).',
    options: JSON_OPTION,
    run: showClient
  },
  'clients rotate-secret': {
    summary: 'give a client a new secret (shown once); the old one stops working',
    usage: 'clients rotate-secret <client_id> [--secret-stdin] [--json]',
    help: `Replaces the client's secret with a new one, printed once (or read from
standard input with --secret-stdin, 16 to ${MAX_SECRET_BYTES} bytes). The old secret is refused
from then on: at once where this command can tell the running instances, else
within CLIENT_CACHE_TTL. Tokens already issued stay valid until they expire.`,
    options: { 'secret-stdin': { type: 'boolean' }, ...JSON_OPTION },
    run: rotateSecret
  },
  'clients disable': {
    summary: 'refuse a client\'s token requests (kept, can be enabled again)',
    usage: 'clients disable <client_id> [--json]',
    help: 'Disables a client: its token requests are refused with unauthorized_client. Tokens already issued stay valid until they expire (revoke them to end them sooner).',
    options: JSON_OPTION,
    run: async (context) => await setStatus(context, 'clients disable', 'disabled')
  },
  'clients enable': {
    summary: 'accept a disabled client again',
    usage: 'clients enable <client_id> [--json]',
    help: 'Enables a client that was disabled.',
    options: JSON_OPTION,
    run: async (context) => await setStatus(context, 'clients enable', 'enabled')
  },
  'clients delete': {
    summary: 'remove a client for good',
    usage: 'clients delete <client_id> [--json]',
    help: 'Deletes a client. Its token requests fail as for an unknown client; tokens already issued stay valid until they expire.',
    options: JSON_OPTION,
    run: deleteClient
  }
}
