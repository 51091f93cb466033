// The reference servers of the benchmark's ceiling: a bare Fastify route
// returning a constant, and one that signs a JWT once per request with the
// same key and library as the service. Listens on BENCH_PORT.
import { readFileSync } from 'node:fs'
import Fastify from 'fastify'
import { createSigner } from 'fast-jwt'

const app = Fastify({ logger: false })
const sign = createSigner({ key: readFileSync(process.env.BENCH_KEY_FILE ?? '', 'utf8'), algorithm: 'RS256', kid: 'bench' })
let counter = 0

app.get('/constant', async () => ({ ok: true }))
app.get('/sign', async () => {
  const now = Math.floor(Date.now() / 1000)
  return { access_token: sign({ iss: 'bench', sub: 'bench', aud: 'api', iat: now, exp: now + 3600, jti: String(counter++) }) }
})

await app.listen({ host: '127.0.0.1', port: Number(process.env.BENCH_PORT) })
process.on('SIGTERM', () => {
  app.close().then(() => process.exit(0), () => process.exit(1))
})
