// The operator dashboard (/jobs/v1/ui/) in headless Chromium, offline: signs in through the
// form, checks the overview's counts, filters the jobs list, opens a job's timeline, retries a
// dead-lettered job through the confirmation dialog (by keyboard), redrives the rest of its
// group by filter (dry run first), pauses a queue on the Queues page, then looks at every page at 390 px, and as the admin user
// drains a worker. Every request beyond the gateway is refused
// and recorded; console errors (a CSP violation is one) are recorded too.
// Usage: node ui.mjs <gateway base URL> <screenshot dir> <expectations JSON>.
// Prints one JSON line; exit 0 = every step ran (the Rust test judges the result).
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '../../web/package.json'));
const { chromium } = require('playwright-core');

const [base, shots, expectJson] = process.argv.slice(2);
const want = JSON.parse(expectJson);
const origin = new URL(base).origin;
const result = { external: [], gateway: [], errors: [], shownErrors: [], steps: [], checks: {} };
const step = (s) => result.steps.push(s);
// A screenshot, and any error the page shows at that moment (there should be none).
const shot = async (page, name) => {
  const shown = await page.locator('.error').allTextContents();
  if (shown.length) result.shownErrors.push({ page: name, errors: shown });
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
};

const browser = await chromium.launch({
  executablePath: process.env.JOBS_TEST_CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

/** The numbers in an element's text ("1,234" → 1234). */
const count = async (loc) => Number((await loc.textContent()).replace(/[^0-9]/g, ''));

/** Every form control has a label (by <label for>, or aria-label). */
const unlabelled = (page) =>
  page.evaluate(() =>
    [...document.querySelectorAll('input, select, textarea')]
      .filter((el) => el.type !== 'hidden' && !el.labels?.length && !el.getAttribute('aria-label'))
      .map((el) => el.name || el.outerHTML.slice(0, 80)),
  );

/** Wider than the window (a page that scrolls sideways as a whole). */
const overflow = (page) => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);

async function signIn(page, email, password) {
  await page.getByLabel('E-mail').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { level: 1, name: 'Overview' }).waitFor();
}

try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
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
  page.on('console', (m) => {
    if (m.type() === 'error') result.errors.push(m.text());
  });
  page.on('pageerror', (e) => result.errors.push(String(e)));

  // Sign in through the form (the dev login), as the seed's developer.
  await page.goto(`${base}/jobs/v1/ui/`);
  await page.getByRole('heading', { level: 1, name: 'Sign in' }).waitFor();
  result.checks.signinUnlabelled = await unlabelled(page);
  await shot(page, 'signin-1280');
  await signIn(page, want.email, want.password);
  result.checks.who = await page.getByTestId('who').textContent();
  result.checks.tenant = await page.getByTestId('tenant').textContent();
  result.checks.roles = await page.getByTestId('roles').textContent();
  step('signed in');

  // Overview: the counts the test created, by status and by type.
  await page.waitForFunction(
    (c) => Object.entries(c).every(([st, n]) => document.querySelector(`[data-count="${st}"]`)?.textContent === String(n)),
    want.counts,
    { timeout: 20000 },
  ).catch(() => {});
  result.checks.counts = {};
  for (const st of Object.keys(want.counts)) {
    result.checks.counts[st] = await count(page.locator(`[data-count="${st}"]`));
  }
  result.checks.byType = {};
  for (const t of Object.keys(want.byType)) {
    const row = page.locator(`[data-testid="by-type"] tr[data-type="${t}"]`);
    result.checks.byType[t] = {};
    for (const st of Object.keys(want.byType[t])) {
      result.checks.byType[t][st] = await count(row.locator(`td[data-status="${st}"]`));
    }
  }
  result.checks.projector = await page.getByTestId('projector-state').textContent();
  result.checks.overviewUnlabelled = await unlabelled(page);
  await shot(page, 'overview-1280');
  step('overview');

  // Jobs: filter by type, then by type and status.
  await page.getByRole('link', { name: 'Jobs', exact: true }).click();
  await page.getByRole('heading', { level: 1, name: 'Jobs' }).waitFor();
  await page.getByLabel('Type').fill(want.filter.type);
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await page.waitForFunction((t) => location.hash.includes(`type=${encodeURIComponent(t)}`), want.filter.type);
  const rows = page.locator('[data-testid="jobs"] tbody tr[data-job-id]');
  await rows.first().waitFor();
  result.checks.filteredByType = await rows.evaluateAll((trs) => trs.map((tr) => ({ id: tr.dataset.jobId, type: tr.dataset.type, status: tr.dataset.status })));
  result.checks.jobsUnlabelled = await unlabelled(page);
  await shot(page, 'jobs-filtered-1280');
  await page.getByLabel('Status').selectOption(want.filter.status);
  await page.getByRole('button', { name: 'Apply filters' }).click();
  await page.waitForFunction((s) => location.hash.includes(`status=${s}`), want.filter.status);
  await page.getByTestId('result-count').waitFor();
  await page.waitForFunction(
    (s) => [...document.querySelectorAll('[data-testid="jobs"] tbody tr[data-job-id]')].every((tr) => tr.dataset.status === s),
    want.filter.status,
  );
  result.checks.filteredByTypeAndStatus = await rows.evaluateAll((trs) => trs.map((tr) => ({ id: tr.dataset.jobId, type: tr.dataset.type, status: tr.dataset.status })));
  step('filtered');

  // The dead-lettered job's page: its error and its timeline (who did what, when).
  await page.goto(`${base}/jobs/v1/ui/#/jobs/${want.dlqId}`);
  await page.getByTestId('timeline').locator('li').first().waitFor();
  result.checks.jobStatus = await page.getByTestId('job-status').textContent();
  result.checks.lastError = await page.getByTestId('last-error').textContent();
  result.checks.timeline = await page.getByTestId('timeline').locator('li').evaluateAll((lis) =>
    lis.map((li) => ({ event: li.dataset.event, text: li.querySelector('.tl-head').textContent })));
  await shot(page, 'job-dead-lettered-1280');
  step('job page');

  // DLQ: the summary, then retry the job by keyboard through the confirmation dialog.
  await page.getByRole('link', { name: 'Dead letters' }).click();
  await page.getByRole('heading', { level: 1, name: 'Dead-letter queue' }).waitFor();
  const dlqRow = page.locator(`[data-testid="dlq"] tr[data-job-id="${want.dlqId}"]`);
  await dlqRow.waitFor();
  await page.getByTestId('dlq-summary').waitFor();
  result.checks.dlqSummary = await page.locator('[data-testid="dlq-summary"] tbody tr[data-group]').evaluateAll((trs) =>
    trs.map((tr) => ({ group: tr.dataset.group, n: Number(tr.querySelector('td.num').textContent.replace(/[^0-9]/g, '')) })));
  result.checks.dlqUnlabelled = await unlabelled(page);
  await shot(page, 'dlq-1280');

  // Purge's dialog starts on Cancel, and Escape closes it with nothing done.
  await dlqRow.getByRole('button', { name: /^Purge job/ }).focus();
  await page.keyboard.press('Enter');
  const purgeDialog = page.getByRole('dialog', { name: /Purge job/ });
  await purgeDialog.waitFor();
  result.checks.purgeDialogFocus = await page.evaluate(() => document.activeElement?.textContent);
  await page.keyboard.press('Escape');
  await purgeDialog.waitFor({ state: 'detached' });
  result.checks.focusAfterEscape = await page.evaluate(() => document.activeElement?.getAttribute('aria-label'));

  await dlqRow.getByRole('button', { name: /^Retry job/ }).focus();
  await page.keyboard.press('Enter');
  const dialog = page.getByRole('dialog', { name: /Retry job/ });
  await dialog.waitFor();
  await shot(page, 'dlq-retry-dialog-1280');
  const [retry] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith(`/jobs/v1/dlq/${want.dlqId}/retry`) && r.request().method() === 'POST'),
    page.keyboard.press('Enter'), // the confirm button has the focus
  ]);
  result.retry = { status: retry.status(), seq: Number(retry.headers()['x-event-seq']) };
  await dialog.waitFor({ state: 'detached' });
  await page.getByTestId('dlq-notice').waitFor();
  result.checks.dlqNotice = await page.getByTestId('dlq-notice').textContent();
  await dlqRow.waitFor({ state: 'detached', timeout: 10000 }).catch(() => {});
  result.checks.dlqRowGone = (await dlqRow.count()) === 0;
  await shot(page, 'dlq-retried-1280');
  step('retried');

  // Bulk redrive of what is left of the group: from the summary's button, a dry run, then the
  // real one after its confirmation.
  await page.getByRole('button', { name: /^Redrive invoice\.sync jobs with E_TEST/ }).click();
  await page.getByRole('button', { name: 'Preview (dry run)' }).click();
  await page.getByTestId('would-requeue').waitFor();
  result.checks.wouldRequeue = await page.getByTestId('would-requeue').textContent();
  await page.getByRole('button', { name: /^Requeue 1 job/ }).click();
  const redriveDialog = page.getByRole('dialog', { name: /^Requeue/ });
  await redriveDialog.waitFor();
  const [redrive] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/jobs/v1/dlq/retry') && !r.request().postData()?.includes('dry_run')),
    redriveDialog.getByRole('button', { name: 'Requeue' }).click(),
  ]);
  result.redrive = { status: redrive.status(), seq: Number(redrive.headers()['x-event-seq']) };
  await page.waitForFunction(() => document.querySelector('[data-testid="dlq-notice"]')?.textContent.includes('requeued'));
  result.checks.redriveNotice = await page.getByTestId('dlq-notice').textContent();
  await shot(page, 'dlq-redriven-1280');
  step('redriven');

  // Queues: pause the queue "reports" through its dialog (by keyboard: the confirm button has
  // the focus), then the row says paused.
  await page.getByRole('link', { name: 'Queues', exact: true }).click();
  await page.getByRole('heading', { level: 1, name: 'Queues' }).waitFor();
  const queueRow = page.locator(`[data-testid="queues"] tr[data-name="${want.queue}"]`);
  await queueRow.waitFor();
  await page.getByTestId('schedules').waitFor();
  result.checks.queuesUnlabelled = await unlabelled(page);
  await queueRow.getByRole('button', { name: `Pause queue ${want.queue}` }).focus();
  await page.keyboard.press('Enter');
  const pauseDialog = page.getByRole('dialog', { name: `Pause the queue ${want.queue}?` });
  await pauseDialog.waitFor();
  const [paused] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith(`/jobs/v1/queues/${want.queue}/pause`) && r.request().method() === 'POST'),
    page.keyboard.press('Enter'),
  ]);
  result.pause = { status: paused.status(), seq: Number(paused.headers()['x-event-seq']) };
  await pauseDialog.waitFor({ state: 'detached' });
  await page.locator(`[data-testid="queues"] tr[data-name="${want.queue}"][data-paused="true"]`).waitFor({ timeout: 10000 }).catch(() => {});
  result.checks.queueState = (await queueRow.getByTestId('state').textContent()).trim();
  result.checks.queuesNotice = await page.getByTestId('queues-notice').textContent();
  await shot(page, 'queues-1280');
  step('queue paused');

  // The same pages on a phone's width: nothing wider than the screen.
  await page.setViewportSize({ width: 390, height: 844 });
  result.checks.overflow390 = {};
  // Each page is shot once its data is in (the page is still growing before that).
  for (const [name, hash, ready] of [
    ['overview', '#/overview', () => document.querySelector('[data-testid="updated"]')?.textContent.startsWith('Updated')],
    ['jobs', `#/jobs?type=${encodeURIComponent(want.filter.type)}`, () => !!document.querySelector('[data-testid="result-count"]')],
    ['job', `#/jobs/${want.dlqId}`, () => !!document.querySelector('[data-testid="timeline"] li')],
    ['dlq', '#/dlq', () => !!document.querySelector('[data-testid="dlq"]') && !!document.querySelector('[data-testid="dlq-summary"]')],
    ['queues', '#/queues', () => !!document.querySelector('[data-testid="queues"]') && !!document.querySelector('[data-testid="schedules"]')],
  ]) {
    await page.goto(`${base}/jobs/v1/ui/${hash}`);
    await page.waitForFunction(ready);
    result.checks.overflow390[name] = await overflow(page);
    await shot(page, `${name}-390`);
  }
  step('phone width');

  // The admin user: the Admin page lists the test's worker; drain it through the dialog.
  await page.setViewportSize({ width: 1280, height: 900 });
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { level: 1, name: 'Sign in' }).waitFor();
  await signIn(page, want.admin.email, want.admin.password);
  await page.getByRole('link', { name: 'Admin' }).click();
  await page.getByRole('heading', { level: 1, name: 'Admin' }).waitFor();
  const workerRow = page.locator('[data-testid="workers"] tr').filter({ hasText: want.admin.worker });
  await workerRow.waitFor();
  result.checks.adminUnlabelled = await unlabelled(page);
  await workerRow.getByRole('button', { name: /^Drain worker/ }).click();
  const drain = page.getByRole('dialog', { name: /Drain this worker/ });
  await drain.waitFor();
  const [drained] = await Promise.all([
    page.waitForResponse((r) => r.url().includes('/jobs/v1/admin/workers/') && r.url().endsWith('/drain')),
    drain.getByRole('button', { name: 'Drain worker' }).click(),
  ]);
  result.drain = { status: drained.status(), path: new URL(drained.url()).pathname };
  await page.getByTestId('admin-notice').waitFor();
  await shot(page, 'admin-1280');
  await page.setViewportSize({ width: 390, height: 844 });
  result.checks.overflow390.admin = await overflow(page);
  await shot(page, 'admin-390');
  step('admin');
} catch (e) {
  result.failure = String(e?.stack || e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
process.exit(result.failure ? 1 : 0);
