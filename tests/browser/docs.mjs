// The API reference page in headless Chromium, offline: loads /jobs/v1/docs from the gateway,
// waits for Scalar to render the document, opens "Log in (development only)" in the API client
// and sends it, then checks the request reached the gateway and answered with a token.
// Usage: node docs.mjs <gateway base URL> <screenshot dir>. Prints one JSON line; exit 0 = ok.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '../../web/package.json'));
const { chromium } = require('playwright-core');

const [base, shots] = process.argv.slice(2);
const origin = new URL(base).origin;
const result = { external: [], gateway: [], steps: [] };
const step = (s) => result.steps.push(s);

const browser = await chromium.launch({
  executablePath: process.env.JOBS_TEST_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  // No network beyond the gateway: anything else is recorded and refused.
  await page.route('**/*', (route) => {
    const url = new URL(route.request().url());
    if (url.origin === origin || url.protocol === 'data:' || url.protocol === 'blob:') {
      return route.continue();
    }
    result.external.push(url.href);
    return route.abort();
  });
  page.on('response', (r) => {
    const url = new URL(r.url());
    if (url.origin === origin) {
      result.gateway.push({ method: r.request().method(), path: url.pathname, status: r.status() });
    }
  });
  await page.goto(`${base}/jobs/v1/docs`);
  await page.getByText('Jobs Service API').first().waitFor({ timeout: 60000 });
  step('rendered');
  await page.screenshot({ path: path.join(shots, 'docs.png'), fullPage: false });

  // The seed's walk-through, in the playground: log in...
  await page.getByRole('button', { name: 'Open Group - auth' }).click();
  await page.getByText('Log in (development only)').first().click();
  const testRequest = page.getByRole('button', { name: /Test Request/ });
  await testRequest.first().waitFor({ timeout: 20000 });
  result.testRequestButtons = await testRequest.count();
  await page.screenshot({ path: path.join(shots, 'login-operation.png') });
  await testRequest.first().click();
  const send = page.getByRole('button', { name: /^Send/ }).first();
  await send.waitFor({ timeout: 20000 });
  step('client opened');
  // The example body is the seed's: dev@eventzr.com / Password123!.
  const [login] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/auth/v1/login'), { timeout: 20000 }),
    send.click(),
  ]);
  result.login = { status: login.status() };
  const token = (await login.json()).data?.accessToken;
  if (!token) throw new Error('no accessToken in the login answer');
  step('logged in');
  await page.screenshot({ path: path.join(shots, 'login-sent.png') });
  await page.keyboard.press('Escape');

  // ...then enqueue the seed's job with the token.
  await page.getByText('Enqueue a job').first().click();
  await testRequest.first().waitFor({ timeout: 20000 });
  await testRequest.first().click();
  await send.waitFor({ timeout: 20000 });
  const bearer = page.getByPlaceholder('Token').last();
  await bearer.click();
  await page.keyboard.type(token);
  const [enqueue] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/jobs/v1/enqueue'), { timeout: 20000 }),
    send.click(),
  ]);
  const body = await enqueue.json();
  result.enqueue = {
    status: enqueue.status(), id: body.data?.id, type: body.data?.type, token,
    seq: Number(enqueue.headers()['x-event-seq']),
  };
  step('enqueued');
  await page.waitForTimeout(300);
  await page.screenshot({ path: path.join(shots, 'enqueue-sent.png') });
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
