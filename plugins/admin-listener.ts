// The second listener. Operators' endpoints (metrics, readiness, liveness,
// API docs, the admin API) answer only on it, and the public port's only
// there: one router serves both, and a route constraint decides which
// listener a route belongs to. A request belongs to the admin listener when
// its server built it as an AdminRequest, which no header can fake.
import { createServer, IncomingMessage, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import fp from 'fastify-plugin'
import type { FastifyInstance, FastifyPluginAsync, FastifyPluginCallback, FastifyPluginOptions, RouteOptions } from 'fastify'

/** A request received by the admin listener. */
export class AdminRequest extends IncomingMessage {}

/** Route option `constraints` of a route that answers on the admin listener only. */
export const ADMIN_ONLY = { listener: 'admin' } as const

// find-my-way's custom constraint: derived as 'admin' for the admin
// listener's requests, not at all for the public ones. mustMatchWhenDerived
// keeps the public routes (which carry no constraint) off the admin listener.
type ConstraintStrategy = Parameters<FastifyInstance['addConstraintStrategy']>[0]
type ConstraintStore = ReturnType<ConstraintStrategy['storage']>

const listenerConstraint: ConstraintStrategy = {
  name: 'listener',
  mustMatchWhenDerived: true,
  storage () {
    const stores = new Map<string, Parameters<ConstraintStore['set']>[1]>()
    return {
      get: (value: string) => stores.get(value) ?? null,
      set: (value: string, store) => { stores.set(value, store) }
    }
  },
  deriveConstraint: (request: unknown) => request instanceof AdminRequest ? ADMIN_ONLY.listener : undefined,
  validate (value: unknown) {
    if (value !== ADMIN_ONLY.listener) throw new Error(`unknown listener "${String(value)}"`)
  }
}

/** Registers `routes` so that every route they add answers on the admin listener only. */
export async function registerAdminRoutes<Options extends FastifyPluginOptions> (
  fastify: FastifyInstance, routes: FastifyPluginCallback<Options> | FastifyPluginAsync<Options>, options: Options
): Promise<void> {
  await fastify.register(async (admin) => {
    admin.addHook('onRoute', (route: RouteOptions) => {
      route.constraints = { ...route.constraints, ...ADMIN_ONLY }
    })
    await admin.register(routes, options)
  })
}

export interface AdminListenOptions {
  host: string
  port: number
}

declare module 'fastify' {
  interface FastifyInstance {
    /**
     * Opens the admin listener (server.ts does, after the public one; tests
     * and the Lambda handler do not). Closed with the instance.
     */
    listenAdmin: (options: AdminListenOptions) => Promise<AddressInfo>
  }
}

/** Closes the listener once its open connections are done, cutting those still open after `graceMs`. */
async function closeServer (server: Server, graceMs: number): Promise<void> {
  if (!server.listening) return
  const closed = new Promise<void>((resolve) => server.close(() => resolve()))
  server.closeIdleConnections()
  const cut = setTimeout(() => server.closeAllConnections(), graceMs)
  await closed
  clearTimeout(cut)
}

const ADMIN_CLOSE_GRACE_MS = 2_000

export default fp(async (fastify) => {
  fastify.addConstraintStrategy(listenerConstraint)

  let server: Server | undefined
  fastify.decorate('listenAdmin', async ({ host, port }: AdminListenOptions) => {
    if (server !== undefined) throw new Error('the admin listener is already open')
    // The same router as the public listener; the request's class marks it.
    server = createServer({ IncomingMessage: AdminRequest }, fastify.routing)
    // Bounded like the public listener (server.ts): no request hangs.
    server.requestTimeout = 30_000
    server.headersTimeout = 30_000
    const listening = server
    await new Promise<void>((resolve, reject) => {
      listening.once('error', reject)
      listening.listen({ host, port }, () => {
        listening.off('error', reject)
        resolve()
      })
    })
    const address = listening.address() as AddressInfo
    fastify.log.info({ address: address.address, port: address.port }, 'admin listener open')
    return address
  })

  fastify.addHook('onClose', async () => {
    if (server !== undefined) await closeServer(server, ADMIN_CLOSE_GRACE_MS)
  })
}, { name: 'admin-listener' })
