// Which real servers this run has, and the part of a tap Test the helpers use.
//
// Where no PostgreSQL server answers (never under CI: see ../backends.ts), a
// "database" is an embedded one in a folder of its own; where no Redis
// answers, the app keeps its state in the database. Tests that need a real
// server skip with `needs.postgres` or `needs.redis` as their reason.
import { TEST_DATABASE_URL, TEST_REDIS_URL, testBackends } from '../backends.ts'

export { TEST_DATABASE_URL, TEST_REDIS_URL }

/** Which real servers this run has (both, under CI). */
export const backends = await testBackends()

/** Skip reasons for tests that need a real server: false when it is there. */
export const needs = {
  postgres: backends.postgres ? false : 'needs a PostgreSQL server (none answers; the suite runs on the embedded database)',
  redis: backends.redis ? false : 'needs a Redis server (none answers; the suite runs on the in-database store)'
} as const

/** The part of a tap Test that the helpers use. */
export interface TestContext {
  teardown: (fn: () => unknown) => void
}
