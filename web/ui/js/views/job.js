// One job: GET /jobs/v1/jobs/{id}, its events (GET .../events, oldest first, paged) and, while
// it waits, GET .../explain. Actions (edit, cancel, retry, purge) each confirm in a dialog and
// send If-Match with the version shown, so a job that moved on meanwhile is not changed.

import { api } from '../api.js';
import { h, fill, badge, num, when, time, json, table, errorBox, announce, confirmAction, field, toLocalInput, fromLocalInput, statusLabel } from '../dom.js';

const WAITING = ['scheduled', 'pending'];
const FINISHED = ['completed', 'dead_lettered', 'cancelled'];

/** "JobDeadLettered" → "Dead lettered". */
const human = (type) =>
  String(type)
    .replace(/^Job/, '')
    .replace(/([a-z])([A-Z])/g, (_, a, b) => `${a} ${b.toLowerCase()}`);

function actorText(a) {
  if (!a) return 'unknown';
  if (a.kind === 'system') return 'the system';
  return `${a.kind} ${a.id}`;
}

/** The few fields of an event worth a line of their own. */
function summary(ev) {
  const d = ev.data || {};
  const err = (e) => (e ? `${e.code ? `${e.code}: ` : ''}${e.message}` : '');
  switch (ev.type) {
    case 'JobEnqueued':
      return `type ${d.type}, queue ${d.queue}, priority ${d.priority}, run at ${when(d.run_at)}, up to ${d.max_attempts} attempts`;
    case 'JobLeased':
      return `leased to ${d.worker_id} until ${when(d.expires_at)} (${d.lease_seconds} s)`;
    case 'JobHeartbeat':
      return `lease extended to ${when(d.expires_at)}${d.progress !== undefined ? `; progress ${JSON.stringify(d.progress)}` : ''}`;
    case 'JobFailed':
      return `${err(d.error)}; next attempt at ${when(d.next_run_at)}`;
    case 'JobLeaseExpired':
      return `the lease ran out; next attempt at ${when(d.next_run_at)}`;
    case 'JobDeadLettered':
      return err(d.error);
    case 'JobCancelRequested':
    case 'JobCancelled':
    case 'JobRequeued':
      return [d.reason, err(d.error)].filter(Boolean).join('; ');
    case 'JobUpdated':
      return `changed ${Object.keys(d).join(', ')}`;
    default:
      return '';
  }
}

export async function job({ main, parts, signal, setTitle }) {
  const id = parts[1];
  setTitle(`Job ${id}`);
  const heading = h('h1', { tabindex: '-1' }, 'Job');
  const toolbar = h('div', { class: 'toolbar', role: 'toolbar', 'aria-label': 'Job actions' });
  const status = h('div', { 'aria-live': 'polite' });
  const body = h('div', { class: 'stack' });
  main.append(h('p', {}, h('a', { href: '#/jobs' }, '\u2190 All jobs')), heading, toolbar, status, body);

  let j;

  async function load() {
    const [jr, er, xr] = await Promise.all([
      api('GET', `/jobs/v1/jobs/${encodeURIComponent(id)}`, { signal }),
      api('GET', `/jobs/v1/jobs/${encodeURIComponent(id)}/events`, { query: { limit: 100 }, signal }),
      api('GET', `/jobs/v1/jobs/${encodeURIComponent(id)}/explain`, { signal }).catch((e) => ({ error: e })),
    ]);
    j = jr.data;
    render(er, xr);
  }

  async function act(name, method, path, reqBody, done) {
    const r = await api(method, path, { body: reqBody, ifMatch: j.version, signal });
    announce(done);
    status.replaceChildren(h('p', { class: 'notice', role: 'status' }, done));
    if (name === 'purge') {
      location.hash = '#/dlq';
      return r;
    }
    await load();
    return r;
  }

  function actions() {
    const out = [];
    const base = `/jobs/v1/jobs/${encodeURIComponent(j.id)}`;
    if (WAITING.includes(j.status)) {
      out.push(h('button', { type: 'button', class: 'btn', onclick: editDialog }, 'Edit\u2026'));
    }
    if ([...WAITING, 'leased'].includes(j.status) && !j.cancel_requested) {
      out.push(
        h(
          'button',
          {
            type: 'button',
            class: 'btn btn-danger',
            onclick: () => {
              const reason = h('input', { name: 'reason', maxlength: '500' });
              confirmAction({
                title: 'Cancel this job?',
                body: [
                  h('p', {}, j.status === 'leased'
                    ? 'A worker holds it: it is asked to stop at its next heartbeat, and the job ends cancelled when it stops or its lease ends.'
                    : 'It will not run. You can retry it later.'),
                ],
                fields: [field('Reason (optional)', reason)],
                confirm: 'Cancel job',
                danger: true,
                run: () => act('cancel', 'POST', `${base}/cancel`, reason.value.trim() ? { reason: reason.value.trim() } : {}, 'Job cancelled.'),
              });
            },
          },
          'Cancel\u2026',
        ),
      );
    }
    if (FINISHED.includes(j.status)) {
      out.push(
        h(
          'button',
          {
            type: 'button',
            class: 'btn btn-primary',
            onclick: () =>
              confirmAction({
                title: 'Retry this job?',
                body: [h('p', {}, `It is ${statusLabel(j.status)}. Retrying puts it back to pending with its attempts reset, and a worker will run it again.`)],
                confirm: 'Retry job',
                run: () => act('retry', 'POST', `${base}/retry`, {}, 'Job retried: it is pending again.'),
              }),
          },
          'Retry\u2026',
        ),
      );
    }
    if (j.status === 'dead_lettered') {
      out.push(
        h(
          'button',
          {
            type: 'button',
            class: 'btn btn-danger',
            onclick: () =>
              confirmAction({
                title: 'Purge this job?',
                body: [h('p', {}, 'It leaves every read model for good (the list, this page, the dead-letter queue). Its events stay in the event stream for audit. This cannot be undone here.')],
                confirm: 'Purge job',
                danger: true,
                run: () => act('purge', 'DELETE', `/jobs/v1/dlq/${encodeURIComponent(j.id)}`, undefined, 'Job purged.'),
              }),
          },
          'Purge\u2026',
        ),
      );
    }
    out.push(h('button', { type: 'button', class: 'btn', onclick: () => load().then(() => announce('Job reloaded.')).catch(showError) }, 'Reload'));
    return out;
  }

  function editDialog() {
    const priority = h('input', { name: 'priority', type: 'number', min: '0', max: '10', step: '1', required: true, value: j.priority });
    const runAt = h('input', { name: 'run_at', type: 'datetime-local', value: toLocalInput(j.run_at) });
    const maxAttempts = h('input', { name: 'max_attempts', type: 'number', min: '1', max: '100', step: '1', required: true, value: j.max_attempts });
    const queue = h('input', { name: 'queue', required: true, value: j.queue, pattern: '[A-Za-z0-9._:\\-]{1,128}', spellcheck: 'false' });
    const payload = h('textarea', { name: 'payload', rows: '8', class: 'mono', spellcheck: 'false' }, JSON.stringify(j.payload, null, 2));
    confirmAction({
      title: 'Edit this job',
      body: [h('p', { class: 'muted' }, `Only a scheduled or pending job can change. Only the fields you change are sent (with If-Match: version ${j.version}).`)],
      fields: [
        field('Priority (0\u201310, higher runs first)', priority),
        field('Run at (your local time)', runAt),
        field('Max attempts (1\u2013100)', maxAttempts),
        field('Queue', queue),
        field('Payload (JSON)', payload),
      ],
      confirm: 'Save changes',
      run: () => {
        const patch = {};
        if (Number(priority.value) !== j.priority) patch.priority = Number(priority.value);
        if (runAt.value && runAt.value !== toLocalInput(j.run_at)) patch.run_at = fromLocalInput(runAt.value);
        if (Number(maxAttempts.value) !== j.max_attempts) patch.max_attempts = Number(maxAttempts.value);
        if (queue.value.trim() !== j.queue) patch.queue = queue.value.trim();
        let p;
        try {
          p = JSON.parse(payload.value);
        } catch (e) {
          payload.focus();
          throw new Error(`The payload is not valid JSON: ${e.message}`);
        }
        if (JSON.stringify(p) !== JSON.stringify(j.payload)) patch.payload = p;
        if (!Object.keys(patch).length) throw new Error('Nothing was changed.');
        return act('edit', 'PATCH', `/jobs/v1/jobs/${encodeURIComponent(j.id)}`, patch, 'Job updated.');
      },
    });
  }

  function showError(e) {
    if (e?.name !== 'AbortError') status.replaceChildren(errorBox(e));
  }

  function timeline(items) {
    return items.map((ev) =>
      h(
        'li',
        { 'data-event': ev.type },
        h('div', { class: 'tl-head' },
          h('strong', {}, human(ev.type)),
          ' ',
          h('span', { class: 'muted' }, 'by '),
          h('span', { class: ev.actor?.kind === 'system' ? '' : 'mono' }, actorText(ev.actor)),
        ),
        h('div', { class: 'muted small' }, h('time', { datetime: ev.at }, when(ev.at)), ` \u00b7 event ${ev.seq}`),
        summary(ev) ? h('div', {}, summary(ev)) : null,
        ev.data && Object.keys(ev.data).length
          ? h('details', {}, h('summary', {}, 'Event data'), json(ev.data))
          : null,
      ),
    );
  }

  function render(er, xr) {
    heading.replaceChildren(`Job ${j.type} `, badge(j.status));
    setTitle(`Job ${j.type} ${j.id}`);
    toolbar.replaceChildren(...actions());
    const facts = [
      ['ID', h('span', { class: 'mono', 'data-testid': 'job-id' }, j.id)],
      ['Status', h('span', { 'data-testid': 'job-status' }, statusLabel(j.status), j.cancel_requested ? ' (cancel requested)' : '')],
      ['Type', j.type],
      ['Queue', j.queue],
      ['Priority', num(j.priority)],
      ['Attempts', `${j.attempts} of ${j.max_attempts}`],
      ['Runs at', h('span', {}, when(j.run_at), ' (', time(j.run_at), ')')],
      ['Timeout', `${j.timeout_seconds} s`],
      ['Backoff', j.backoff ? `${j.backoff.base_seconds} s doubling, at most ${j.backoff.max_seconds} s` : '\u2014'],
      ['Created', when(j.created_at)],
      ['Updated', when(j.updated_at)],
      j.completed_at ? ['Completed', when(j.completed_at)] : null,
      j.dead_lettered_at ? ['Dead-lettered', when(j.dead_lettered_at)] : null,
      j.lease ? ['Lease', h('span', {}, 'held by ', h('span', { class: 'mono' }, j.lease.worker_id), ` until ${when(j.lease.expires_at)}`)] : null,
      ['Version', h('span', { class: 'mono' }, String(j.version))],
    ].filter(Boolean);
    const reasons =
      xr.error || FINISHED.includes(j.status)
        ? null
        : h(
            'section',
            { 'aria-labelledby': 'why-h' },
            h('h2', { id: 'why-h' }, 'Why is it not running?'),
            xr.data.reasons.length
              ? h('ul', {}, xr.data.reasons.map((r) => h('li', {}, h('span', { class: 'mono' }, r.code), ` \u2014 ${r.message}`)))
              : h('p', {}, 'Nothing holds it back.'),
          );
    const errs = j.errors || [];
    const events = er.data || [];
    const list = h('ol', { class: 'timeline', 'data-testid': 'timeline' }, timeline(events));
    let next = er.page?.has_more ? er.page.next_cursor : null;
    const more = h('button', { type: 'button', class: 'btn' }, 'Load later events');
    more.hidden = !next;
    more.addEventListener('click', async () => {
      try {
        const r = await api('GET', `/jobs/v1/jobs/${encodeURIComponent(j.id)}/events`, { query: { limit: 100, cursor: next }, signal });
        list.append(...timeline(r.data));
        next = r.page?.has_more ? r.page.next_cursor : null;
        more.hidden = !next;
        announce(`${r.data.length} more events.`);
      } catch (e) {
        showError(e);
      }
    });
    fill(
      body,
      h('dl', { class: 'facts' }, facts.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)])),
      reasons,
      j.last_error
        ? h(
            'section',
            { 'aria-labelledby': 'err-h' },
            h('h2', { id: 'err-h' }, 'Last error'),
            h('p', { class: 'error-text', 'data-testid': 'last-error' }, j.last_error.code ? h('span', { class: 'mono' }, `${j.last_error.code}: `) : null, j.last_error.message),
            errs.length
              ? table({
                  caption: 'Every failed attempt',
                  columns: [{ label: 'Attempt', class: 'num' }, { label: 'When' }, { label: 'Worker' }, { label: 'Code' }, { label: 'Message' }],
                  rows: errs.map((e) =>
                    h('tr', {}, h('td', { class: 'num' }, e.attempt), h('td', {}, when(e.at)), h('td', { class: 'mono' }, e.worker_id || '\u2014'), h('td', { class: 'mono' }, e.code || '\u2014'), h('td', {}, e.message)),
                  ),
                })
              : null,
          )
        : null,
      h('div', { class: 'grid-2' },
        h('section', { 'aria-labelledby': 'payload-h' }, h('h2', { id: 'payload-h' }, 'Payload'), json(j.payload)),
        h('section', { 'aria-labelledby': 'result-h' }, h('h2', { id: 'result-h' }, 'Result'), j.result === null || j.result === undefined ? h('p', { class: 'muted' }, 'None yet.') : json(j.result)),
        j.progress !== null && j.progress !== undefined ? h('section', { 'aria-labelledby': 'progress-h' }, h('h2', { id: 'progress-h' }, 'Progress'), json(j.progress)) : null,
        j.metadata && Object.keys(j.metadata).length ? h('section', { 'aria-labelledby': 'meta-h' }, h('h2', { id: 'meta-h' }, 'Metadata'), json(j.metadata)) : null,
      ),
      h('section', { 'aria-labelledby': 'tl-h' }, h('h2', { id: 'tl-h' }, 'Timeline'), h('p', { class: 'muted small' }, 'Every event of this job, oldest first: who did it (a user, a worker, or the system) and when.'), list, more),
    );
  }

  try {
    await load();
  } catch (e) {
    if (e?.name === 'AbortError') throw e;
    heading.textContent = 'Job not available';
    body.replaceChildren(errorBox(e));
  }
}
