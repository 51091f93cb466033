// Everything the tests share, by job (see helpers/): the servers of the run,
// databases, Redis, the app, HTTP requests, JWTs, processes, waiting and
// assertions. Test files import from here.
export * from './helpers/servers.js'
export * from './helpers/databases.js'
export * from './helpers/redis.js'
export * from './helpers/app.js'
export * from './helpers/http.js'
export * from './helpers/jwt.js'
export * from './helpers/processes.js'
export * from './helpers/waiting.js'
export * from './helpers/assertions.js'
export * from './helpers/metrics.js'
