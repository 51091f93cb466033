// The admin API for signing keys kept in the database (KEY_STORE=database):
// what the CLI's `keys` commands do, over HTTP. Every route needs an admin
// access token (plugins/admin-auth.ts); every change is one transaction of
// signing-keys/stored.ts with its audit event, and this instance reads the
// keys again before it answers (the others within a poll, signing-keys/ring.ts).
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { preParsingAsyncHookHandler, preValidationAsyncHookHandler } from 'fastify'
import { OAuthError } from '../../plugins/errors.ts'
import type { AdminActor } from '../../plugins/admin-auth.ts'
import type { KeyRing } from '../../signing-keys/ring.ts'
import { KeyNotFoundError, KeyRuleError, keyPolicy, listKeyEvents, listKeys, retireKey, rotateKeys } from '../../signing-keys/stored.ts'
import {
  DEFAULT_KEY_EVENTS_PAGE, keyErrorResponses, keyEventList, keyEventListQuery, keyEventView, keyList, keyView, kidParams, MAX_KEY_EVENTS_PAGE,
  retireKeyBody, retirement, retirementView, rotateKeysBody, rotation, rotationView, SETTINGS_MODE
} from '../../schemas/keys.ts'

// Said of every operation here.
const ADMIN_AUTH = 'Needs an access token of this service carrying ADMIN_SCOPE, sent as a bearer token (RFC 6750 §2.1). ' +
  'With KEY_STORE=settings, 409: the keys come from the settings.'

/** The author of a change as the audit records it (as for clients). */
const actorOf = (actor: AdminActor | undefined): string => `client:${actor?.clientId ?? 'unknown'}`

/** A page size from the query: DEFAULT_KEY_EVENTS_PAGE when absent, at most MAX_KEY_EVENTS_PAGE. */
function pageSize (limit: string | undefined): number {
  const size = limit === undefined ? DEFAULT_KEY_EVENTS_PAGE : Number(limit)
  if (size > MAX_KEY_EVENTS_PAGE) throw new OAuthError(400, 'invalid_request', `limit may be at most ${MAX_KEY_EVENTS_PAGE}`)
  return size
}

/** The life cycle's refusals, as the caller's errors. */
function refusal (err: unknown): never {
  if (err instanceof KeyNotFoundError) throw new OAuthError(404, 'not_found', err.message)
  if (err instanceof KeyRuleError) throw new OAuthError(409, 'conflict', err.message)
  throw err
}

type AdminInstance = Parameters<FastifyPluginAsyncTypebox>[0]

/** The key ring of this instance; every route's onRequest hook has refused the settings mode already. */
function ringOf (fastify: AdminInstance): KeyRing {
  if (fastify.keyRing === undefined) throw new OAuthError(409, 'conflict', SETTINGS_MODE)
  return fastify.keyRing
}

/** The stored keys and their history: nothing changes. */
function readRoutes (fastify: AdminInstance): void {
  fastify.get('/admin/keys', {
    schema: {
      operationId: 'listSigningKeys',
      summary: 'The stored signing keys, and the one this instance signs with',
      description: 'Each key with its state and schedule and its public JWK (RFC 7517 §4), never a private part; current first, then next, ' +
        `then retired. \`signing_kid\` is the key this instance signs with: after a change, an instance that has not read the keys yet names the previous one. ${ADMIN_AUTH}`,
      response: { 200: keyList, ...keyErrorResponses }
    }
  }, async () => {
    const keys = await listKeys(fastify.db)
    return { signing_kid: fastify.keys.kid, keys: keys.map(keyView) }
  })

  fastify.get('/admin/keys/events', {
    schema: {
      operationId: 'listSigningKeyEvents',
      summary: 'The recorded changes of the signing keys, newest first',
      description: `Each step of the keys' life cycle with its author (\`scheduler\`, \`client:<id>\`, \`cli:<user>\`) and details. Pass \`next\` as \`before\` for older events. ${ADMIN_AUTH}`,
      querystring: keyEventListQuery,
      response: { 200: keyEventList, ...keyErrorResponses }
    }
  }, async (request) => {
    const limit = pageSize(request.query.limit)
    const { before } = request.query
    // One more than asked: whether there is an older page.
    const rows = await listKeyEvents(fastify.db, { limit: limit + 1, before: before === undefined ? undefined : Number(before) })
    const events = rows.slice(0, limit).map(keyEventView)
    return { events, next: rows.length > limit ? events[events.length - 1]?.id ?? null : null }
  })
}

interface ChangeContext {
  /** the hooks of a route whose JSON body is optional */
  optionalJson: { preParsing: preParsingAsyncHookHandler, preValidation: preValidationAsyncHookHandler }
  /** after a change: this instance reads the keys again, and the change is logged */
  changed: (kid: string, action: string, actor: string) => Promise<void>
}

/** What rotate and retire share: an optional JSON body (none, or an empty one, is {}) and the read-back after a change. */
function changeContext (fastify: AdminInstance): ChangeContext {
  const json = fastify.requireMediaType('application/json')
  const parseJson = fastify.getDefaultJsonParser('error', 'error')
  fastify.removeContentTypeParser('application/json')
  fastify.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    if (body === '') done(null, undefined)
    else parseJson(request, body as string, done)
  })
  return {
    optionalJson: {
      preParsing: async (request, reply, payload) => {
        if (request.headers['content-type'] !== undefined && request.headers['content-length'] !== '0') await json.call(fastify, request, reply, payload)
      },
      preValidation: async (request) => {
        if (request.body === undefined) request.body = {}
      }
    },
    changed: async (kid, action, actor) => {
      // This instance answers with the new keys at once; the others read them within a poll.
      await ringOf(fastify).refresh()
      fastify.log.info({ kid, action, actor }, 'signing keys changed through the admin API')
    }
  }
}

function rotateRoute (fastify: AdminInstance, { optionalJson, changed }: ChangeContext): void {
  fastify.post('/admin/keys/rotate', {
    ...optionalJson,
    schema: {
      operationId: 'rotateSigningKeys',
      summary: 'Rotate: a next key that signs once published KEY_PUBLISH_AHEAD, or at once with `now`',
      description: 'Always 200 (RFC 9110 §15.3.1), `created` saying whether the key was made now: a rotation while a next key waits uses that key ' +
        '(and brings its activation forward to KEY_PUBLISH_AHEAD after it was published). With `now` it signs at once and the current key retires: ' +
        'gateways that cached the JWKS before the key was published refuse its tokens until they read it again. 409 when `algorithm` differs from ' +
        `the waiting key's. ${ADMIN_AUTH}`,
      body: rotateKeysBody,
      response: { 200: rotation, ...keyErrorResponses }
    }
  }, async (request) => {
    const actor = actorOf(request.adminActor)
    const ring = ringOf(fastify)
    const { config } = fastify
    const result = await rotateKeys(fastify.db, config.keyEncryptionKey, keyPolicy(config), ring.clock(), {
      immediately: request.body.now === true, algorithm: request.body.algorithm, actor
    }).catch(refusal)
    await changed(result.kid, result.state === 'current' ? 'rotated_now' : 'rotated', actor)
    return rotationView(result)
  })
}

function retireRoute (fastify: AdminInstance, { optionalJson, changed }: ChangeContext): void {
  fastify.post('/admin/keys/:kid/retire', {
    ...optionalJson,
    schema: {
      operationId: 'retireSigningKey',
      summary: 'Retire a key: a next key leaves at once; a retired one leaves early only with `now`',
      description: 'A next key signed nothing and leaves the JWKS at once. A retired key leaves by itself once its last token has expired; ' +
        '`now` removes it at once, and every token it signed stops being valid (for a key that leaked). The current key cannot retire ' +
        `(409): a rotation replaces it. 404 when no stored key has this kid. ${ADMIN_AUTH}`,
      params: kidParams,
      body: retireKeyBody,
      response: { 200: retirement, ...keyErrorResponses }
    }
  }, async (request) => {
    const actor = actorOf(request.adminActor)
    const ring = ringOf(fastify)
    const result = await retireKey(fastify.db, request.params.kid, ring.clock(), { immediately: request.body.now === true, actor }).catch(refusal)
    await changed(result.kid, result.outcome, actor)
    return retirementView(result)
  })
}

const adminKeysRoutes: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.addHook('onRequest', fastify.noStore)
  fastify.addHook('onRequest', fastify.authenticateAdmin)
  // After authentication, so that only an administrator learns the mode; before the body is read.
  fastify.addHook('onRequest', async () => { ringOf(fastify) })
  readRoutes(fastify)
  const context = changeContext(fastify)
  rotateRoute(fastify, context)
  retireRoute(fastify, context)
}

export default adminKeysRoutes
