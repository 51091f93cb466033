// `node dist/cli/migrate.js`: the same as `session-service migrate` (the
// docker-compose migrate service and `npm run migrate` run this).
import { main } from './index.ts'
import { processIo } from './io.ts'

process.exitCode = await main(['migrate', ...process.argv.slice(2)], processIo)
