// Jobs: GET /jobs/v1/jobs with the filters in the address (#/jobs?status=&type=&...), one page
// at a time by the API's opaque cursor. "Next" adds the cursor to the address, so the
// browser's back button returns to the previous page; "Previous" does the same.

import { api } from '../api.js';
import { h, STATUSES, learnStatuses, statusLabel, badge, num, time, jobLink, table, errorBox, announce, field, select, hashFor, toLocalInput, fromLocalInput } from '../dom.js';

const FILTERS = ['status', 'type', 'queue', 'priority', 'created_after', 'created_before', 'order', 'limit'];

/** Cursors of the pages before this one, per filter set (for "Previous"). */
const trail = new Map();

export async function jobs({ main, params, signal, setTitle }) {
  setTitle('Jobs');
  const f = Object.fromEntries(FILTERS.map((k) => [k, params.get(k) || '']));
  const cursor = params.get('cursor') || '';
  const filterKey = JSON.stringify(f);

  const status = select('status', [['', 'Any status'], ...STATUSES.map((s) => [s, statusLabel(s)])], f.status);
  const type = h('input', { name: 'type', value: f.type, list: 'known-types', autocomplete: 'off', spellcheck: 'false', pattern: '[A-Za-z0-9._:\\-]{1,128}' });
  const queue = h('input', { name: 'queue', value: f.queue, autocomplete: 'off', spellcheck: 'false', pattern: '[A-Za-z0-9._:\\-]{1,128}' });
  const priority = select('priority', [['', 'Any priority'], ...Array.from({ length: 11 }, (_, i) => [String(10 - i), String(10 - i)])], f.priority);
  const after = h('input', { name: 'created_after', type: 'datetime-local', value: toLocalInput(f.created_after) });
  const before = h('input', { name: 'created_before', type: 'datetime-local', value: toLocalInput(f.created_before) });
  const order = select('order', [['desc', 'Newest first'], ['asc', 'Oldest first']], f.order || 'desc');
  const limit = select('limit', [['20', '20'], ['50', '50'], ['100', '100']], f.limit || '20');
  const knownTypes = h('datalist', { id: 'known-types' });

  const form = h(
    'form',
    { class: 'filters', role: 'search', 'aria-label': 'Filter jobs' },
    field('Status', status),
    field('Type', type),
    field('Queue', queue),
    field('Priority', priority),
    field('Created after', after),
    field('Created before', before),
    field('Order', order),
    field('Per page', limit),
    h('div', { class: 'filter-actions' }, h('button', { type: 'submit', class: 'btn btn-primary' }, 'Apply filters'), h('a', { href: '#/jobs', class: 'btn' }, 'Clear')),
    knownTypes,
  );
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    if (!form.reportValidity()) return;
    location.hash = hashFor('jobs', {
      status: status.value,
      type: type.value.trim(),
      queue: queue.value.trim(),
      priority: priority.value,
      created_after: fromLocalInput(after.value),
      created_before: fromLocalInput(before.value),
      order: order.value === 'desc' ? '' : order.value,
      limit: limit.value === '20' ? '' : limit.value,
    });
  });

  const results = h('div', { 'aria-live': 'polite' });
  main.append(h('h1', { tabindex: '-1' }, 'Jobs'), form, results);

  // Offer the tenant's known types as suggestions (best effort).
  api('GET', '/jobs/v1/metrics', { signal })
    .then((r) => {
      knownTypes.replaceChildren(...r.data.by_type.map((t) => h('option', { value: t.type })));
      for (const st of learnStatuses(Object.keys(r.data.counts))) status.append(h('option', { value: st, selected: st === f.status }, statusLabel(st)));
    })
    .catch(() => {});

  let r;
  try {
    r = await api('GET', '/jobs/v1/jobs', { query: { ...f, cursor }, signal });
  } catch (e) {
    if (e?.name === 'AbortError') throw e;
    results.replaceChildren(errorBox(e, { title: 'The jobs could not be listed.' }));
    return;
  }
  const rows = r.data.map((j) =>
    h(
      'tr',
      { 'data-job-id': j.id, 'data-type': j.type, 'data-status': j.status },
      h('td', {}, jobLink(j.id)),
      h('td', {}, j.type),
      h('td', {}, j.queue),
      h('td', {}, badge(j.status)),
      h('td', { class: 'num' }, num(j.priority)),
      h('td', { class: 'num' }, `${j.attempts}/${j.max_attempts}`),
      h('td', {}, time(j.created_at)),
      h('td', {}, time(j.run_at)),
      h('td', { class: 'clip' }, j.last_error ? `${j.last_error.code ? `${j.last_error.code}: ` : ''}${j.last_error.message}` : ''),
    ),
  );
  const filtered = ['status', 'type', 'queue', 'priority', 'created_after', 'created_before'].some((k) => f[k]);
  const pages = trail.get(filterKey) || [];
  const here = pages.indexOf(cursor);
  const prevCursor = here > 0 ? pages[here - 1] : cursor ? '' : null;
  const nav = h(
    'nav',
    { class: 'pager', 'aria-label': 'Pages' },
    cursor && prevCursor !== '' ? h('a', { class: 'btn', href: hashFor('jobs', { ...f }) }, 'First page') : null,
    prevCursor !== null ? h('a', { class: 'btn', href: hashFor('jobs', { ...f, cursor: prevCursor }) }, 'Previous page') : null,
    r.page?.has_more && r.page.next_cursor
      ? h(
          'a',
          {
            class: 'btn',
            href: hashFor('jobs', { ...f, cursor: r.page.next_cursor }),
            onclick: () => {
              const t = trail.get(filterKey) || [''];
              const i = t.indexOf(cursor);
              trail.set(filterKey, [...(i >= 0 ? t.slice(0, i + 1) : [cursor]), r.page.next_cursor]);
            },
          },
          'Next page',
        )
      : null,
  );
  if (!trail.has(filterKey)) trail.set(filterKey, ['']);
  results.replaceChildren(
    h('p', { 'data-testid': 'result-count' }, `${r.data.length} job${r.data.length === 1 ? '' : 's'} on this page${r.page?.has_more ? ', more on the next' : ''}${filtered ? ' (filtered)' : ''}.`),
    table({
      caption: 'Jobs',
      columns: [
        { label: 'Job' },
        { label: 'Type' },
        { label: 'Queue' },
        { label: 'Status' },
        { label: 'Priority', class: 'num' },
        { label: 'Attempts', class: 'num' },
        { label: 'Created' },
        { label: 'Runs at' },
        { label: 'Last error' },
      ],
      rows,
      empty: filtered ? 'No job matches these filters.' : 'No jobs yet.',
      testid: 'jobs',
    }),
    nav,
  );
  announce(`${r.data.length} jobs listed.`);
}
