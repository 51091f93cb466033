// Everything the tests share, by job (see helpers/): the servers of the run,
// databases, Redis (a server or a cluster), the app, HTTP requests, JWTs,
// processes, waiting and assertions. Test files import from here.
export * from './helpers/servers.ts'
export * from './helpers/databases.ts'
export * from './helpers/redis.ts'
export * from './helpers/redis-cluster.ts'
export * from './helpers/app.ts'
export * from './helpers/http.ts'
export * from './helpers/jwt.ts'
export * from './helpers/processes.ts'
export * from './helpers/waiting.ts'
export * from './helpers/assertions.ts'
export * from './helpers/metrics.ts'
