// `clients ...`: register, list, show, update, rotate, disable, enable and
// delete clients, and read their history. Every change is recorded with the
// operator's name and announced to the running instances. The fields and
// their rules are those of schemas/client.ts, which the admin API shares.
import {
  clientsRepository, ClientExistsError, ClientRuleError, MAX_SECRET_BYTES, SecretTooLongError,
  type ClientEvent, type ClientRecord, type ClientStatus
} from '../../storage/clients.ts'
import {
  checkClientSecret, clientChangesFrom, clientEventView, clientView, generateClientSecret, InvalidClientError,
  isClientId, MIN_SECRET_BYTES, newClientFrom, type ClientPatchBody
} from '../../schemas/client.ts'
import { parseDurationMs } from '../../plugins/config.ts'
import { cliActor } from '../actor.ts'
import { announceChange } from '../announce.ts'
import { JSON_OPTION, noPositionals, wholeNumberOption, type CommandContext, type CommandTable } from '../command.ts'
import { withDatabase } from '../connection.ts'
import { CliError, printTable, readInput, usage, type CliIo, type Output } from '../io.ts'

const SECRET_SHOWN_ONCE = 'The secret is shown this once; store it now.'
/** Rows read per query when the CLI lists every client. */
const LIST_PAGE = 500

function printFields (out: Output, fields: Record<string, unknown>): void {
  for (const [name, value] of Object.entries(fields)) {
    const text = Array.isArray(value)
      ? (value.length === 0 ? '-' : value.join(' '))
      : value === null ? '-' : typeof value === 'object' ? JSON.stringify(value) : String(value)
    out.print(`${`${name}:`.padEnd(28)}${text}`)
  }
}

function printClientTable (out: Output, clients: ClientRecord[]): void {
  const table = [['CLIENT_ID', 'STATUS', 'NAME', 'SCOPES', 'AUDIENCES'],
    ...clients.map((client) => [client.id, client.status, client.name === '' ? '-' : client.name,
      client.scopes.length === 0 ? '-' : client.scopes.join(' '), client.audiences.length === 0 ? '-' : client.audiences.join(' ')])]
  printTable(out, table)
}

function clientIdArgument (positionals: string[], command: string): string {
  if (positionals.length !== 1) throw usage('give exactly one client id', command)
  const id = positionals[0] ?? ''
  if (!isClientId(id)) throw usage(`"${id}" is not a valid client id (1 to 255 visible ASCII characters)`, command)
  return id
}

/** The typed refusals of the schema and the repository, as the operator reads them. */
function refusal (err: unknown, command: string): unknown {
  if (err instanceof InvalidClientError) return usage(err.message, command)
  if (err instanceof ClientExistsError || err instanceof ClientRuleError || err instanceof SecretTooLongError) return new CliError(err.message)
  return err
}

async function refusing<T> (command: string, work: () => Promise<T>): Promise<T> {
  try {
    return await work()
  } catch (err) {
    throw refusal(err, command)
  }
}

interface ChosenSecret {
  secret: string
  /** made here, so printed this once; one the operator gave is never printed back */
  generated: boolean
}

/** The secret on standard input (without its line end), or a generated one. */
async function chooseSecret (fromStdin: boolean, io: CliIo, command: string): Promise<ChosenSecret> {
  if (!fromStdin) return { secret: generateClientSecret(), generated: true }
  const secret = (await readInput(io)).replace(/\r?\n$/, '')
  if (secret.length === 0) throw usage('the secret read from stdin is empty', command)
  await refusing(command, async () => { checkClientSecret(secret) })
  return { secret, generated: false }
}

// The operator has the secret they gave already; printed back it would only
// end up in terminal scrollback, CI logs or a script's captured output.
const SECRET_NOT_SHOWN = '(read from standard input, not shown)'

/** The client_secret field of --json output: present only for a generated secret. */
const secretJson = ({ secret, generated }: ChosenSecret): { client_secret?: string } => generated ? { client_secret: secret } : {}

/** The client_secret line of text output. */
const secretText = ({ secret, generated }: ChosenSecret): string => generated ? secret : SECRET_NOT_SHOWN

const noClient = (id: string): CliError => new CliError(`no client "${id}"`)

/** The option names of each setting: `clients create` takes repeatable singulars, `clients update` lists. */
interface SettingOptions { scopes: string, defaultScopes: string, audiences: string }
const CREATE_OPTIONS: SettingOptions = { scopes: 'scope', defaultScopes: 'default-scope', audiences: 'audience' }
const UPDATE_OPTIONS: SettingOptions = { scopes: 'scopes', defaultScopes: 'default-scopes', audiences: 'audiences' }

/**
 * The items of list options (each repeated, or space- or comma-separated),
 * merged; '' gives none; undefined when none of the options is given.
 */
function listItems (...values: unknown[]): string[] | undefined {
  const texts = values.filter((value) => value !== undefined).flatMap((value) => Array.isArray(value) ? value as string[] : [value as string])
  if (texts.length === 0) return undefined
  return [...new Set(texts.flatMap((text) => text.split(/[\s,]+/)).filter((item) => item !== ''))]
}

function rateLimitOption (text: string | undefined, command: string): number | null | undefined {
  if (text === undefined) return undefined
  if (text === 'default') return null
  if (!/^\d{1,9}$/.test(text) || Number(text) < 1) throw usage('--rate-limit must be a whole number of requests per minute, at least 1 (or "default")', command)
  return Number(text)
}

function claimsOption (text: string | undefined, command: string): Record<string, unknown> | undefined {
  if (text === undefined) return undefined
  let claims: unknown
  try {
    claims = JSON.parse(text)
  } catch {
    throw usage('--claims must be a JSON object', command)
  }
  if (typeof claims !== 'object' || claims === null || Array.isArray(claims)) throw usage('--claims must be a JSON object', command)
  return claims as Record<string, unknown>
}

/** --require-dpop: true; --no-require-dpop (update only): false; neither: unchanged. */
function requireDpopOption (values: Record<string, unknown>, command: string): boolean | undefined {
  const on = values['require-dpop'] === true
  const off = values['no-require-dpop'] === true
  if (on && off) throw usage('--require-dpop and --no-require-dpop contradict each other', command)
  return on ? true : off ? false : undefined
}

/** The client settings given as options, in the schema's fields; those not given are absent. */
function settingsFrom (values: Record<string, unknown>, names: SettingOptions, command: string): ClientPatchBody {
  const jwksUri = values['jwks-uri'] as string | undefined
  const settings: Record<string, unknown> = {
    name: values.name,
    scopes: listItems(values[names.scopes]),
    default_scopes: listItems(values[names.defaultScopes]),
    audiences: listItems(values[names.audiences]),
    rate_limit: rateLimitOption(values['rate-limit'] as string | undefined, command),
    claims: claimsOption(values.claims as string | undefined, command),
    jwks_uri: jwksUri === 'none' ? null : jwksUri,
    // --grant-types <list> and --grant-type <type>... add up.
    grant_types: listItems(values['grant-types'], values['grant-type']),
    may_exchange: listItems(values['may-exchange']),
    dpop_bound_access_tokens: requireDpopOption(values, command)
  }
  return Object.fromEntries(Object.entries(settings).filter(([, value]) => value !== undefined)) as ClientPatchBody
}

async function setStatus ({ positionals, config, out }: CommandContext, command: string, status: ClientStatus): Promise<void> {
  const id = clientIdArgument(positionals, command)
  await withDatabase(config, async (connection) => {
    if (await clientsRepository(connection.db).setStatus(id, status, cliActor()) === undefined) throw noClient(id)
    await announceChange(config, connection, id, out)
    if (out.json) out.data({ client_id: id, status })
    else out.print(`client ${id} ${status}`)
  })
}

async function createClient ({ values, positionals, config, out, io }: CommandContext): Promise<void> {
  const command = 'clients create'
  noPositionals(positionals, command)
  if (values.name === undefined) throw usage('--name is required', command)
  const chosen = await chooseSecret(values['secret-stdin'] === true, io, command)
  const { client } = await refusing(command, async () => newClientFrom({
    ...settingsFrom(values, CREATE_OPTIONS, command),
    name: values.name as string,
    ...(values.id === undefined ? {} : { client_id: values.id as string }),
    client_secret: chosen.secret
  }))
  await withDatabase(config, async (connection) => {
    const record = await refusing(command, async () => await clientsRepository(connection.db).insert(client, config.bcryptCost, cliActor()))
    await announceChange(config, connection, client.id, out)
    const view = clientView(record)
    if (out.json) {
      out.data({ ...view, ...secretJson(chosen) })
      return
    }
    out.print(`client created in ${connection.where}`)
    printFields(out, { ...view, client_secret: secretText(chosen) })
    if (chosen.generated) out.print(SECRET_SHOWN_ONCE)
  })
}

async function updateClient ({ values, positionals, config, out }: CommandContext): Promise<void> {
  const command = 'clients update'
  const id = clientIdArgument(positionals, command)
  const changes = await refusing(command, async () => clientChangesFrom(settingsFrom(values, UPDATE_OPTIONS, command)))
  await withDatabase(config, async (connection) => {
    const record = await refusing(command, async () => await clientsRepository(connection.db).update(id, changes, cliActor()))
    if (record === undefined) throw noClient(id)
    await announceChange(config, connection, id, out)
    if (out.json) out.data(clientView(record))
    else printFields(out, clientView(record))
  })
}

/** --grace: a duration in the settings' syntax (24h, 90m, 3600s, 500ms), or none. */
function graceOption (text: string | undefined, command: string): number {
  if (text === undefined || text === 'none') return 0
  try {
    return parseDurationMs('--grace', text, { allowZero: true })
  } catch {
    throw usage('--grace must be a duration (24h, 90m, 3600s, 7d, 500ms) or "none"', command)
  }
}

async function rotateSecret ({ values, positionals, config, out, io }: CommandContext): Promise<void> {
  const command = 'clients rotate-secret'
  const id = clientIdArgument(positionals, command)
  const graceMs = graceOption(values.grace as string | undefined, command)
  const chosen = await chooseSecret(values['secret-stdin'] === true, io, command)
  await withDatabase(config, async (connection) => {
    const rotation = { secret: chosen.secret, cost: config.bcryptCost, graceMs, actor: cliActor() }
    const rotated = await refusing(command, async () => await clientsRepository(connection.db).rotateSecret(id, rotation))
    if (rotated === undefined) throw noClient(id)
    await announceChange(config, connection, id, out)
    const previousUntil = rotated.previousSecretExpiresAt?.toISOString() ?? null
    if (out.json) {
      out.data({ client_id: id, ...secretJson(chosen), previous_secret_expires_at: previousUntil })
      return
    }
    printFields(out, { client_id: id, client_secret: secretText(chosen), previous_secret_expires_at: previousUntil })
    if (chosen.generated) out.print(SECRET_SHOWN_ONCE)
    out.print(previousUntil === null ? 'The previous secret no longer works.' : `The previous secret works until ${previousUntil}.`)
  })
}

async function showClient ({ positionals, config, out }: CommandContext): Promise<void> {
  const id = clientIdArgument(positionals, 'clients show')
  await withDatabase(config, async ({ db }) => {
    const record = await clientsRepository(db).findRecord(id)
    if (record === undefined) throw noClient(id)
    const view = clientView(record)
    if (out.json) out.data(view)
    else printFields(out, view)
  })
}

async function listClients ({ positionals, config, out }: CommandContext): Promise<void> {
  noPositionals(positionals, 'clients list')
  await withDatabase(config, async ({ db }) => {
    const clients: ClientRecord[] = []
    let after: string | undefined
    do {
      const page = await clientsRepository(db).list({ limit: LIST_PAGE, after })
      clients.push(...page.clients)
      after = page.next ?? undefined
    } while (after !== undefined)
    if (out.json) out.data(clients.map((client) => clientView(client)))
    else if (clients.length === 0) out.print('no clients')
    else printClientTable(out, clients)
  })
}

async function deleteClient ({ positionals, config, out }: CommandContext): Promise<void> {
  const id = clientIdArgument(positionals, 'clients delete')
  await withDatabase(config, async (connection) => {
    if (!await clientsRepository(connection.db).delete(id, cliActor())) throw noClient(id)
    await announceChange(config, connection, id, out)
    if (out.json) out.data({ client_id: id, deleted: true })
    else out.print(`client ${id} deleted`)
  })
}

/** What an event changed, in one line: the fields whose values differ, or the grace period of a rotation. */
function eventSummary (event: ClientEvent): string {
  if (event.action === 'secret_rotated') {
    const end = event.after?.previous_secret_expires_at
    return typeof end === 'string' ? `previous secret until ${new Date(end).toISOString()}` : 'previous secret stopped at once'
  }
  if (event.action !== 'updated') return ''
  const before = event.before ?? {}
  const after = event.after ?? {}
  return Object.keys(after).filter((field) => JSON.stringify(before[field]) !== JSON.stringify(after[field]))
    .map((field) => `${field}: ${JSON.stringify(before[field])} -> ${JSON.stringify(after[field])}`).join('; ')
}

async function listEvents ({ values, positionals, config, out }: CommandContext): Promise<void> {
  const command = 'clients events'
  const id = clientIdArgument(positionals, command)
  const limit = Math.min(wholeNumberOption(values.limit as string | undefined, 'limit', 20, command) ?? 20, 1000)
  const before = wholeNumberOption(values.before as string | undefined, 'before', undefined, command)
  await withDatabase(config, async ({ db }) => {
    const page = await clientsRepository(db).events(id, { limit, before })
    if (out.json) {
      out.data({ events: page.events.map(clientEventView), next: page.next })
      return
    }
    if (page.events.length === 0) out.print(`no events of client ${id}`)
    for (const event of page.events) {
      out.print([event.id, event.at.toISOString(), event.action.padEnd(14), event.actor, eventSummary(event)].join('  ').trimEnd())
    }
    if (page.next !== null) out.print(`older events: --before ${page.next}`)
  })
}

const SETTINGS_HELP = `--rate-limit: token requests per minute, or "default" (RATE_LIMIT_DEFAULT).
--claims: a JSON object of claims added to each access token (registered
claims such as sub, aud or scope are refused). --jwks-uri: an https URL of
the client's JWK Set (private_key_jwt), or "none". --grant-types (a list) and
--grant-type (repeatable), together: the grants it may use (client_credentials,
refresh_token, urn:ietf:params:oauth:grant-type:token-exchange); a new client
gets client_credentials and refresh_token. --may-exchange (repeatable, or a list):
the clients whose access tokens it may exchange (token exchange), besides its
own, which it always may; "" lists none. --require-dpop: every token request
must carry a DPoP proof (RFC 9449), so that every token is bound to the
client's key (dpop_bound_access_tokens).`

const UPDATE_SETTINGS = {
  name: { type: 'string' },
  scopes: { type: 'string' },
  'default-scopes': { type: 'string' },
  audiences: { type: 'string' },
  'rate-limit': { type: 'string' },
  claims: { type: 'string' },
  'jwks-uri': { type: 'string' },
  'grant-types': { type: 'string' },
  'grant-type': { type: 'string', multiple: true },
  'may-exchange': { type: 'string', multiple: true },
  'require-dpop': { type: 'boolean' },
  'no-require-dpop': { type: 'boolean' }
} as const

export const clientsCommands: CommandTable = {
  'clients create': {
    summary: 'register a client and print its generated secret (shown once)',
    usage: 'clients create --name <name> [--id <client_id>] [--scope <scope>]... [--default-scope <scope>]... [--audience <aud>]... [--rate-limit <n>] [--claims <json>] [--jwks-uri <url>] [--grant-types <list>] [--grant-type <type>]... [--may-exchange <client_id>]... [--require-dpop] [--secret-stdin] [--json]',
    help: `Registers a client that authenticates with a secret. Without --id, the id is a
random UUID. The secret is generated (32 random bytes, base64url) and printed
once; only its bcrypt hash is stored. --secret-stdin reads the secret from
standard input instead (${MIN_SECRET_BYTES} to ${MAX_SECRET_BYTES} bytes) and never prints it back (--json
leaves client_secret out).
Scopes and audiences may be repeated or given as one space- or comma-separated
list. --default-scope: granted when a token request names no scope (must be
among --scope).
${SETTINGS_HELP}`,
    options: {
      name: { type: 'string' },
      id: { type: 'string' },
      scope: { type: 'string', multiple: true },
      'default-scope': { type: 'string', multiple: true },
      audience: { type: 'string', multiple: true },
      'rate-limit': { type: 'string' },
      claims: { type: 'string' },
      'jwks-uri': { type: 'string' },
      'grant-types': { type: 'string' },
      'grant-type': { type: 'string', multiple: true },
      'may-exchange': { type: 'string', multiple: true },
      'require-dpop': { type: 'boolean' },
      'secret-stdin': { type: 'boolean' },
      ...JSON_OPTION
    },
    run: createClient
  },
  'clients list': {
    summary: 'list the clients',
    usage: 'clients list [--json]',
    help: 'Lists every client by id: id, status, name, scopes and audiences (--json: every setting). Secrets are never shown.',
    options: JSON_OPTION,
    run: listClients
  },
  'clients show': {
    summary: 'show one client',
    usage: 'clients show <client_id> [--json]',
    help: `Shows every setting of a client, how it authenticates, and until when the
secret before its last rotation still works. Secrets and their hashes are never shown.`,
    options: JSON_OPTION,
    run: showClient
  },
  'clients update': {
    summary: 'change a client\'s settings (only those given)',
    usage: 'clients update <client_id> [--name <name>] [--scopes <list>] [--default-scopes <list>] [--audiences <list>] [--rate-limit <n>] [--claims <json>] [--jwks-uri <url>] [--grant-types <list>] [--grant-type <type>]... [--may-exchange <client_id>]... [--require-dpop | --no-require-dpop] [--json]',
    help: `Changes the settings given and leaves the others as they are; prints the
client. A list replaces the stored one whole (space- or comma-separated; ""
empties it); so do the repeatable --grant-type and --may-exchange, whose
values make up the new list. The default scopes must stay among the scopes.
${SETTINGS_HELP}`,
    options: { ...UPDATE_SETTINGS, ...JSON_OPTION },
    run: updateClient
  },
  'clients rotate-secret': {
    summary: 'give a client a new secret (a generated one shown once), the old one kept for --grace',
    usage: 'clients rotate-secret <client_id> [--grace <duration>] [--secret-stdin] [--json]',
    help: `Gives the client a new secret, printed once; --secret-stdin reads it from
standard input instead (${MIN_SECRET_BYTES} to ${MAX_SECRET_BYTES} bytes) and never prints it back (--json
leaves client_secret out). With --grace (24h, 90m, 3600s, 7d; default none)
the current secret keeps working for that long, so that the client's
deployments can move to the new one; previous_secret_expires_at says until
when. Without it, the old secret is refused from then on: at once where this
command can tell the running instances, else within CLIENT_CACHE_TTL. A
second rotation during a grace period ends the first one's previous secret.
Tokens already issued stay valid until they expire.`,
    options: { grace: { type: 'string' }, 'secret-stdin': { type: 'boolean' }, ...JSON_OPTION },
    run: rotateSecret
  },
  'clients events': {
    summary: 'show the recorded changes of a client, newest first',
    usage: 'clients events <client_id> [--limit <n>] [--before <event_id>] [--json]',
    help: `Lists who changed the client, when, and how (created, updated, secret_rotated,
enabled, disabled, deleted), newest first, --limit at a time (default 20, at
most 1000); --before <id> shows the page after the one that ended there. The
history outlives a deleted client. It holds no secret or hash: a rotation
records only when the previous secret stops working.`,
    options: { limit: { type: 'string' }, before: { type: 'string' }, ...JSON_OPTION },
    run: listEvents
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
    summary: 'remove a client for good (its history stays)',
    usage: 'clients delete <client_id> [--json]',
    help: 'Deletes a client. Its token requests fail as for an unknown client; tokens already issued stay valid until they expire. Its events stay (clients events).',
    options: JSON_OPTION,
    run: deleteClient
  }
}
