// The admin API for clients: what the CLI's `clients` commands do, over
// HTTP, for automation. Every route needs an admin access token
// (plugins/admin-auth.ts); every change is recorded with its author
// (storage/clients.ts) and reaches every instance at once.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { OAuthError } from '../../plugins/errors.ts'
import type { AdminActor } from '../../plugins/admin-auth.ts'
import { parseDuration } from '../../plugins/config.ts'
import { ClientExistsError, ClientRuleError, clientsRepository, SecretTooLongError, type ClientsRepository } from '../../storage/clients.ts'
import { clientChangesFrom, clientEventView, clientView, generateClientSecret, InvalidClientError, newClientFrom } from '../../schemas/client.ts'
import {
  adminErrorResponses, clientIdParams, clientList, clientListQuery, createClientBody, createdClient, eventList, eventListQuery,
  DEFAULT_PAGE_SIZE, MAX_GRACE_SECONDS, MAX_PAGE_SIZE, noContent, patchClientBody, rotateSecretBody, rotatedSecret, viewOfClient
} from '../../schemas/admin.ts'

/** A page size from the query: DEFAULT_PAGE_SIZE when absent, at most MAX_PAGE_SIZE. */
function pageSize (limit: string | undefined): number {
  const size = limit === undefined ? DEFAULT_PAGE_SIZE : Number(limit)
  if (size > MAX_PAGE_SIZE) throw new OAuthError(400, 'invalid_request', `limit may be at most ${MAX_PAGE_SIZE}`)
  return size
}

// Said of every admin operation.
const ADMIN_AUTH = 'Needs an access token of this service carrying ADMIN_SCOPE, sent as a bearer token (RFC 6750 §2.1).'

const noSuchClient = (): OAuthError => new OAuthError(404, 'not_found', 'no client with this id')

/** The author of a change as the audit records it. */
const actorOf = (actor: AdminActor | undefined): string => `client:${actor?.clientId ?? 'unknown'}`

/** A grace period in the settings' syntax, as milliseconds; a bad one is the caller's error. */
function graceMs (grace: string | undefined): number {
  if (grace === undefined) return 0
  let seconds: number
  try {
    seconds = parseDuration('grace', grace, { allowZero: true })
  } catch {
    throw new OAuthError(400, 'invalid_request', 'grace is not a duration (use 3600s, 15m, 24h, 7d or seconds)')
  }
  if (seconds > MAX_GRACE_SECONDS) throw new OAuthError(400, 'invalid_request', `grace may be at most ${MAX_GRACE_SECONDS / 86400} days`)
  return seconds * 1000
}

/** The repository's and the field rules' refusals, as the caller's errors. */
function refusal (err: unknown): never {
  if (err instanceof ClientExistsError) throw new OAuthError(409, 'conflict', 'a client with this id already exists')
  if (err instanceof SecretTooLongError || err instanceof InvalidClientError || err instanceof ClientRuleError) {
    throw new OAuthError(400, 'invalid_request', err.message)
  }
  throw err
}

/** Runs `build`, turning a broken field rule into a 400. */
function checked<T> (build: () => T): T {
  try {
    return build()
  } catch (err) {
    return refusal(err)
  }
}

type AdminInstance = Parameters<FastifyPluginAsyncTypebox>[0]

/** What the routes that change a client share. */
interface ChangeContext {
  repository: ClientsRepository
  bcryptCost: number
  json: ReturnType<AdminInstance['requireMediaType']>
  /** Every instance drops its copy now (the same notice the CLI sends), and the change is logged. */
  changed: (clientId: string, action: string, actor: string) => Promise<void>
}

/** List, show and events: nothing changes. */
function readRoutes (fastify: AdminInstance, repository: ClientsRepository): void {
  fastify.get('/admin/clients', {
    schema: {
      operationId: 'listClients',
      summary: 'List clients, by client id, a page at a time',
      description: `Clients in client id order, without secrets. Pass \`next\` as \`after\` for the following page. ${ADMIN_AUTH}`,
      querystring: clientListQuery,
      response: { 200: clientList, ...adminErrorResponses }
    }
  }, async (request) => {
    const page = await repository.list({ limit: pageSize(request.query.limit), after: request.query.after })
    return { clients: page.clients.map((record) => clientView(record)), next: page.next }
  })

  fastify.get('/admin/clients/:client_id', {
    schema: {
      operationId: 'getClient',
      summary: 'One client, every field but its secrets',
      description: `404 when there is no client with this id. ${ADMIN_AUTH}`,
      params: clientIdParams,
      response: { 200: viewOfClient, ...adminErrorResponses }
    }
  }, async (request) => {
    const record = await repository.findRecord(request.params.client_id)
    if (record === undefined) throw noSuchClient()
    return clientView(record)
  })

  fastify.get('/admin/clients/:client_id/events', {
    schema: {
      operationId: 'listClientEvents',
      summary: 'The recorded changes of a client, newest first',
      description: `Each change with its author and the fields before and after (never a secret or its hash); the events outlive the client. ${ADMIN_AUTH}`,
      params: clientIdParams,
      querystring: eventListQuery,
      response: { 200: eventList, ...adminErrorResponses }
    }
  }, async (request) => {
    const { before } = request.query
    const page = await repository.events(request.params.client_id, { limit: pageSize(request.query.limit), before: before === undefined ? undefined : Number(before) })
    return { events: page.events.map(clientEventView), next: page.next }
  })
}

/** Create, update and delete. */
function changeRoutes (fastify: AdminInstance, { repository, bcryptCost, json, changed }: ChangeContext): void {
  fastify.post('/admin/clients', {
    preParsing: json,
    schema: {
      operationId: 'createClient',
      summary: 'Register a client; its secret is in this answer only',
      description: '201 Created (RFC 9110 §15.3.2) with the client and its generated secret, which is stored only as a bcrypt hash and ' +
        `cannot be read again. 409 when the client id is taken. ${ADMIN_AUTH}`,
      body: createClientBody,
      response: { 201: createdClient, ...adminErrorResponses }
    }
  }, async (request, reply) => {
    const actor = actorOf(request.adminActor)
    const { client, secret } = checked(() => newClientFrom(request.body))
    const record = await repository.insert(client, bcryptCost, actor).catch(refusal)
    await changed(record.id, 'created', actor)
    return reply.code(201).send({ ...clientView(record), client_secret: secret })
  })

  fastify.patch('/admin/clients/:client_id', {
    preParsing: json,
    schema: {
      operationId: 'updateClient',
      summary: 'Change some of a client\'s fields',
      description: `A partial update (RFC 5789): the fields sent change, the others stay. Every instance applies it at once. ${ADMIN_AUTH}`,
      params: clientIdParams,
      body: patchClientBody,
      response: { 200: viewOfClient, ...adminErrorResponses }
    }
  }, async (request) => {
    const actor = actorOf(request.adminActor)
    const changes = checked(() => clientChangesFrom(request.body))
    const record = await repository.update(request.params.client_id, changes, actor).catch(refusal)
    if (record === undefined) throw noSuchClient()
    await changed(record.id, 'updated', actor)
    return clientView(record)
  })

  fastify.delete('/admin/clients/:client_id', {
    schema: {
      operationId: 'deleteClient',
      summary: 'Delete a client (its events stay)',
      description: `204 No Content (RFC 9110 §15.3.5). It can no longer obtain tokens; its recorded events stay. ${ADMIN_AUTH}`,
      params: clientIdParams,
      response: { 204: noContent, ...adminErrorResponses }
    }
  }, async (request, reply) => {
    const actor = actorOf(request.adminActor)
    if (!await repository.delete(request.params.client_id, actor)) throw noSuchClient()
    await changed(request.params.client_id, 'deleted', actor)
    return reply.code(204).send(null)
  })
}

/** Enable and disable. */
function statusRoutes (fastify: AdminInstance, { repository, changed }: ChangeContext): void {
  for (const status of ['enabled', 'disabled'] as const) {
    const verb = status === 'enabled' ? 'enable' : 'disable'
    fastify.post(`/admin/clients/:client_id/${verb}`, {
      schema: {
        operationId: `${verb}Client`,
        summary: `${verb[0]?.toUpperCase() ?? ''}${verb.slice(1)} a client`,
        description: `A ${status} client ${status === 'enabled' ? 'may' : 'may not'} obtain tokens (a disabled one gets unauthorized_client, RFC 6749 §5.2). ${ADMIN_AUTH}`,
        params: clientIdParams,
        response: { 200: viewOfClient, ...adminErrorResponses }
      }
    }, async (request) => {
      const actor = actorOf(request.adminActor)
      const record = await repository.setStatus(request.params.client_id, status, actor)
      if (record === undefined) throw noSuchClient()
      await changed(record.id, status, actor)
      return clientView(record)
    })
  }
}

/** Secret rotation, with or without a grace period for the previous secret. */
function rotationRoute (fastify: AdminInstance, { repository, bcryptCost, json, changed }: ChangeContext): void {
  fastify.post('/admin/clients/:client_id/secret', {
    preParsing: async (request, reply, payload) => {
      // The body is optional; when there is one, it is JSON.
      if (request.headers['content-type'] !== undefined) await json.call(fastify, request, reply, payload)
    },
    preValidation: async (request) => {
      request.body ??= {}
    },
    schema: {
      operationId: 'rotateClientSecret',
      summary: 'Rotate the secret; with a grace period the previous one keeps working until it ends',
      description: `A new generated secret, in this answer only. Without \`grace\` the previous secret stops at once. ${ADMIN_AUTH}`,
      params: clientIdParams,
      body: rotateSecretBody,
      response: { 200: rotatedSecret, ...adminErrorResponses }
    }
  }, async (request) => {
    const actor = actorOf(request.adminActor)
    const secret = generateClientSecret()
    const rotated = await repository.rotateSecret(request.params.client_id, {
      secret, cost: bcryptCost, graceMs: graceMs(request.body.grace), actor
    }).catch(refusal)
    if (rotated === undefined) throw noSuchClient()
    await changed(request.params.client_id, 'secret_rotated', actor)
    return {
      client_id: request.params.client_id,
      client_secret: secret,
      previous_secret_expires_at: rotated.previousSecretExpiresAt?.toISOString() ?? null
    }
  })
}

const adminClientsRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  const { config, db, clients, store } = fastify
  const repository = clientsRepository(db)
  const context: ChangeContext = {
    repository,
    bcryptCost: config.bcryptCost,
    json: fastify.requireMediaType('application/json'),
    async changed (clientId, action, actor) {
      await clients.forget(clientId)
      await store.clientCache.announce(clientId)
      fastify.log.info({ clientId, action, actor }, 'client changed through the admin API')
    }
  }

  fastify.addHook('onRequest', fastify.noStore)
  fastify.addHook('onRequest', fastify.authenticateAdmin)
  readRoutes(fastify, repository)
  changeRoutes(fastify, context)
  statusRoutes(fastify, context)
  rotationRoute(fastify, context)
}

export default adminClientsRoutes
