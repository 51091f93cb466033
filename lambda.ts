// First: tracing must be set up before pg and ioredis are loaded.
import { tracing } from './tracing.ts'
import Fastify from 'fastify'
import awsLambdaFastify from '@fastify/aws-lambda'
import serviceApp, { instanceOptions } from './app.ts'
import { ensureDataDirSigningKey, loadConfig } from './plugins/config.ts'

// Read once per execution environment, from the function's environment only
// (no .env file in a Lambda package). A bad setting throws its ConfigError
// here, during init, so Lambda reports the message that names the variable.
const config = loadConfig(process.env, { dataDirKey: ensureDataDirSigningKey(process.env) })

/** The instance behind the handler; exported so that tests can close it. */
export const app = Fastify(instanceOptions(config))

await app.register(serviceApp, { config })

// Turns API Gateway (HTTP API payload 2.0 or REST API) events into injected
// requests; it decorates the request, so it is created before ready().
const proxy = awsLambdaFastify(app)

// Lambda freezes the environment between invocations, so a batch of spans
// waiting for its timer might never leave: each invocation's are exported
// before it answers.
function flushingAfter (flush: () => Promise<void>): typeof proxy {
  return async (event, context) => {
    try {
      return await proxy(event, context)
    } finally {
      await flush()
    }
  }
}

export const handler = tracing === undefined ? proxy : flushingAfter(tracing.flush)

// Connections to PostgreSQL and Redis, migrations and keys are set up once,
// during init: no invocation waits for them, and a failure fails the init.
await app.ready()
