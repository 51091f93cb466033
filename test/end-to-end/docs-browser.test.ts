// The API docs in a real browser: the page on the admin listener renders,
// and "Try it out" on the token endpoint, with the form as it comes and the
// client authorized with HTTP Basic, gets a token from the public listener
// (a cross-origin request).
import { existsSync } from 'node:fs'
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { chromium, type BrowserContext, type Page } from 'playwright-core'
import { test } from 'tap'
import { createDatabase, createRedisPrefix, freePort, insertClient, PROJECT_DIR, ServerProcess, testEnv, waitForHealth, type TestContext } from '../helper.ts'

const CHROMIUM = '/usr/bin/chromium'
const CLIENT = { id: 'docs-browser-client', secret: 'docs browser secret' }

// Without these, a machine without internet access leaves the browser
// waiting on its own background requests.
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync']

/** Chromium with a profile of its own, closed and removed at teardown. */
async function launchBrowser (t: TestContext): Promise<BrowserContext> {
  const dir = await mkdtemp(join(tmpdir(), 'ss-docs-browser-'))
  t.teardown(async () => await rm(dir, { recursive: true, force: true }))
  const context = await chromium.launchPersistentContext(join(dir, 'profile'), {
    executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 20_000
  })
  t.teardown(async () => await context.close())
  return context
}

/** Authorize with the client's id and secret in the Basic scheme, as a person does. */
async function authorizeBasic (page: Page): Promise<void> {
  await page.locator('.swagger-ui .auth-wrapper .btn.authorize').click()
  const scheme = page.locator('.auth-container').filter({ hasText: 'clientSecretBasic' })
  await scheme.locator('input[type=text]').fill(CLIENT.id)
  await scheme.locator('input[type=password]').fill(CLIENT.secret)
  await scheme.locator('button.authorize').click()
  await page.locator('.modal-ux .btn-done').first().click()
}

// Kept after the run, where tap keeps its own output (git-ignored).
const SCREENSHOT = join(PROJECT_DIR, '.tap', 'docs-try-it-out.png')

const missing = !existsSync(CHROMIUM)
const skip = missing && process.env.CI !== 'true' ? `${CHROMIUM} is missing: install Chromium to run the browser test` : false

test('the docs page: Authorize with Basic, then Try it out on POST /oauth/token gets a token', { skip }, async (t) => {
  if (missing) {
    t.fail(`${CHROMIUM} is missing; CI installs it`)
    return
  }
  const databaseUrl = await createDatabase(t)
  await insertClient(databaseUrl, CLIENT)
  const port = await freePort()
  const adminPort = await freePort()
  const publicUrl = `http://127.0.0.1:${port}`
  const server = new ServerProcess(t, testEnv(databaseUrl, createRedisPrefix(t), {
    SERVER_PORT: String(port), SERVER_HOST: '127.0.0.1', ADMIN_PORT: String(adminPort), PUBLIC_URL: publicUrl
  }))
  t.equal(await waitForHealth(publicUrl, () => server.running, 30_000), 200, 'the service is up')

  const context = await launchBrowser(t)
  const page = await context.newPage()
  page.setDefaultTimeout(15_000)
  const sentBodies: string[] = []
  page.on('request', (request) => {
    if (request.url() === `${publicUrl}/oauth/token`) sentBodies.push(request.postData() ?? '')
  })

  // The admin listener serves the page; Try it out calls the public one.
  await page.goto(`http://127.0.0.1:${adminPort}/docs/`)
  await page.locator('.swagger-ui .information-container .title').filter({ hasText: 'session-service' }).waitFor()
  t.equal(await page.locator('.swagger-ui .topbar').count(), 0, 'no top bar: no logo, no box to load another document')

  await authorizeBasic(page)
  const operation = page.locator('#operations-oauth-issueToken')
  await operation.locator('.opblock-summary').click()
  await operation.locator('.try-out__btn').click()
  await operation.locator('button.execute').click()
  const response = operation.locator('.live-responses-table tbody .response').first()
  await response.waitFor()

  t.equal((await response.locator('.response-col_status').innerText()).trim(), '200', 'the answer shown is 200')
  const body = JSON.parse(await response.locator('.response-col_description pre').first().innerText()) as Record<string, unknown>
  t.match(body, { token_type: 'Bearer', access_token: /^eyJ/, refresh_token: String }, 'with an access token')
  t.equal(sentBodies.length, 1, 'one request to the public listener')
  const sent = new URLSearchParams(sentBodies[0])
  t.equal(sent.get('grant_type'), 'client_credentials', 'the form as it comes: client_credentials')
  t.notOk([...sent.values()].some((value) => value !== '' && value !== 'client_credentials'), `nothing else but empty fields (${sentBodies[0] ?? ''})`)

  // What the screenshot shows is the operation with its 200 answer, not the
  // loading page: it is taken of the answer's element once it is there.
  await mkdir(join(PROJECT_DIR, '.tap'), { recursive: true })
  await operation.screenshot({ path: SCREENSHOT })
  const png = await stat(SCREENSHOT)
  t.ok(png.size > 10_000, `a rendered screenshot (${png.size} bytes at ${SCREENSHOT})`)
  t.equal(await page.locator('.swagger-ui .loading-container').count(), 0, 'not the loading spinner')
})
