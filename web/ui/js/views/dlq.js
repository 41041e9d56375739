// Dead-letter queue: GET /jobs/v1/dlq (type and queue filters, cursor pages), a summary of the
// errors grouped by type and error code (from up to 1000 dead letters, read page by page),
// retry one (POST /dlq/{id}/retry) or purge one (DELETE /dlq/{id}), and bulk redrive by
// filter (POST /dlq/retry: a dry run first, then the real one after a confirmation).

import { api, collect } from '../api.js';
import { h, fill, num, when, time, jobLink, table, errorBox, announce, confirmAction, field, hashFor, select, fromLocalInput, shortId } from '../dom.js';

const SUMMARY_MAX = 1000;
const trail = new Map();

export async function dlq({ main, params, signal, setTitle }) {
  setTitle('Dead-letter queue');
  const f = { type: params.get('type') || '', queue: params.get('queue') || '', limit: params.get('limit') || '' };
  const cursor = params.get('cursor') || '';
  const filterKey = JSON.stringify(f);

  const type = h('input', { name: 'type', value: f.type, autocomplete: 'off', spellcheck: 'false', pattern: '[A-Za-z0-9._:\\-]{1,128}' });
  const queue = h('input', { name: 'queue', value: f.queue, autocomplete: 'off', spellcheck: 'false', pattern: '[A-Za-z0-9._:\\-]{1,128}' });
  const limit = select('limit', [['20', '20'], ['50', '50'], ['100', '100']], f.limit || '20');
  const filters = h(
    'form',
    { class: 'filters', role: 'search', 'aria-label': 'Filter dead letters' },
    field('Type', type),
    field('Queue', queue),
    field('Per page', limit),
    h('div', { class: 'filter-actions' }, h('button', { type: 'submit', class: 'btn btn-primary' }, 'Apply filters'), h('a', { class: 'btn', href: '#/dlq' }, 'Clear')),
  );
  filters.addEventListener('submit', (e) => {
    e.preventDefault();
    if (!filters.reportValidity()) return;
    location.hash = hashFor('dlq', { type: type.value.trim(), queue: queue.value.trim(), limit: limit.value === '20' ? '' : limit.value });
  });

  const status = h('div', { 'aria-live': 'polite' });
  const summaryBox = h('div');
  const listBox = h('div');
  const bulk = bulkForm();

  main.append(
    h('h1', { tabindex: '-1' }, 'Dead-letter queue'),
    h('p', { class: 'muted' }, 'Jobs that will not run again by themselves: their attempts ran out, or a worker reported a failure that retrying cannot fix.'),
    filters,
    status,
    h('section', { 'aria-labelledby': 'sum-h' }, h('h2', { id: 'sum-h' }, 'Errors by type and code'), summaryBox),
    h('section', { 'aria-labelledby': 'list-h' }, h('h2', { id: 'list-h' }, 'Dead letters'), listBox),
    h('section', { 'aria-labelledby': 'bulk-h' }, h('h2', { id: 'bulk-h' }, 'Bulk redrive'), bulk.el),
  );

  function done(text) {
    announce(text);
    status.replaceChildren(h('p', { class: 'notice', role: 'status', 'data-testid': 'dlq-notice' }, text));
  }

  async function loadSummary() {
    const { items, more } = await collect('/jobs/v1/dlq', { type: f.type, queue: f.queue }, SUMMARY_MAX, signal);
    const groups = new Map();
    for (const j of items) {
      const code = j.last_error?.code || '';
      const k = `${j.type}\u0000${code}`;
      const g = groups.get(k) || { type: j.type, code, n: 0, latest: null, message: '' };
      g.n += 1;
      if (!g.latest || (j.dead_lettered_at && j.dead_lettered_at > g.latest)) {
        g.latest = j.dead_lettered_at;
        g.message = j.last_error?.message || '';
      }
      groups.set(k, g);
    }
    const rows = [...groups.values()]
      .sort((a, b) => b.n - a.n)
      .map((g) =>
        h(
          'tr',
          { 'data-group': `${g.type}/${g.code}` },
          h('th', { scope: 'row' }, g.type),
          h('td', { class: 'mono' }, g.code || '(no code)'),
          h('td', { class: 'num' }, num(g.n)),
          h('td', {}, time(g.latest)),
          h('td', { class: 'clip' }, g.message),
          h(
            'td',
            {},
            h(
              'button',
              {
                type: 'button',
                class: 'btn btn-small',
                // The API filters by a code, not by its absence: "(no code)" redrives the type.
                'aria-label': g.code ? `Redrive ${g.type} jobs with ${g.code}` : `Redrive all ${g.type} jobs, any error code`,
                onclick: () => bulk.prefill({ type: g.type, error_code: g.code }),
              },
              'Redrive\u2026',
            ),
          ),
        ),
      );
    summaryBox.replaceChildren(
      items.length
        ? h('p', { class: 'muted small' }, more
          ? `From the first ${num(items.length)} dead letters only (there are more).`
          : `All ${num(items.length)} dead letter${items.length === 1 ? '' : 's'}${f.type || f.queue ? ' matching the filters' : ''}.`)
        : '',
      table({
        caption: 'Dead letters grouped by type and last error code',
        columns: [{ label: 'Type' }, { label: 'Error code' }, { label: 'Jobs', class: 'num' }, { label: 'Latest' }, { label: 'Latest message' }, { label: 'Actions' }],
        rows,
        empty: 'The dead-letter queue is empty.',
        testid: 'dlq-summary',
      }),
    );
  }

  async function loadList() {
    const r = await api('GET', '/jobs/v1/dlq', { query: { ...f, cursor }, signal });
    const rows = r.data.map((j) =>
      h(
        'tr',
        { 'data-job-id': j.id, 'data-type': j.type },
        h('td', {}, jobLink(j.id)),
        h('td', {}, j.type),
        h('td', {}, j.queue),
        h('td', { class: 'num' }, `${j.attempts}/${j.max_attempts}`),
        h('td', {}, time(j.dead_lettered_at)),
        h('td', { class: 'mono' }, j.last_error?.code || '\u2014'),
        h('td', { class: 'clip' }, j.last_error?.message || ''),
        h(
          'td',
          { class: 'actions' },
          h('button', { type: 'button', class: 'btn btn-small btn-primary', 'aria-label': `Retry job ${j.id}`, onclick: () => retryOne(j) }, 'Retry\u2026'),
          h('button', { type: 'button', class: 'btn btn-small btn-danger', 'aria-label': `Purge job ${j.id}`, onclick: () => purgeOne(j) }, 'Purge\u2026'),
        ),
      ),
    );
    const pages = trail.get(filterKey) || [''];
    if (!trail.has(filterKey)) trail.set(filterKey, pages);
    const here = pages.indexOf(cursor);
    const prev = here > 0 ? pages[here - 1] : cursor ? '' : null;
    listBox.replaceChildren(
      table({
        caption: 'Dead-lettered jobs, most recent first',
        columns: [
          { label: 'Job' },
          { label: 'Type' },
          { label: 'Queue' },
          { label: 'Attempts', class: 'num' },
          { label: 'Dead-lettered' },
          { label: 'Error code' },
          { label: 'Error' },
          { label: 'Actions' },
        ],
        rows,
        empty: f.type || f.queue ? 'No dead letter matches these filters.' : 'The dead-letter queue is empty.',
        testid: 'dlq',
      }),
      h(
        'nav',
        { class: 'pager', 'aria-label': 'Pages' },
        prev !== null ? h('a', { class: 'btn', href: hashFor('dlq', { ...f, cursor: prev }) }, 'Previous page') : null,
        r.page?.has_more && r.page.next_cursor
          ? h(
              'a',
              {
                class: 'btn',
                href: hashFor('dlq', { ...f, cursor: r.page.next_cursor }),
                onclick: () => {
                  const i = pages.indexOf(cursor);
                  trail.set(filterKey, [...(i >= 0 ? pages.slice(0, i + 1) : [cursor]), r.page.next_cursor]);
                },
              },
              'Next page',
            )
          : null,
      ),
    );
  }

  async function reload() {
    const results = await Promise.allSettled([loadList(), loadSummary()]);
    const failed = results.find((x) => x.status === 'rejected' && x.reason?.name !== 'AbortError');
    if (failed) status.replaceChildren(errorBox(failed.reason, { title: 'The dead-letter queue could not be read.' }));
  }

  function retryOne(j) {
    return confirmAction({
      title: `Retry job ${shortId(j.id)}?`,
      body: [
        h('p', {}, `The ${j.type} job `, h('span', { class: 'mono' }, j.id), ' goes back to pending with its attempts reset, and a worker will run it again.'),
        j.last_error ? h('p', { class: 'muted' }, `Its last error: ${j.last_error.code ? `${j.last_error.code}: ` : ''}${j.last_error.message}`) : null,
      ],
      confirm: 'Retry job',
      run: async () => {
        await api('POST', `/jobs/v1/dlq/${encodeURIComponent(j.id)}/retry`, { body: {}, ifMatch: j.version, signal });
        done(`Job ${j.id} retried: it is pending again.`);
        await reload();
      },
    });
  }

  function purgeOne(j) {
    return confirmAction({
      title: `Purge job ${shortId(j.id)}?`,
      body: [
        h('p', {}, `The ${j.type} job `, h('span', { class: 'mono' }, j.id), ' leaves every read model for good. Its events stay in the event stream for audit. This cannot be undone here.'),
      ],
      confirm: 'Purge job',
      danger: true,
      run: async () => {
        await api('DELETE', `/jobs/v1/dlq/${encodeURIComponent(j.id)}`, { ifMatch: j.version, signal });
        done(`Job ${j.id} purged.`);
        await reload();
      },
    });
  }

  function bulkForm() {
    const bType = h('input', { name: 'type', autocomplete: 'off', spellcheck: 'false' });
    const bQueue = h('input', { name: 'queue', autocomplete: 'off', spellcheck: 'false' });
    const bCode = h('input', { name: 'error_code', autocomplete: 'off', spellcheck: 'false' });
    const bAfter = h('input', { name: 'dead_lettered_after', type: 'datetime-local' });
    const bBefore = h('input', { name: 'dead_lettered_before', type: 'datetime-local' });
    const preview = h('div', { 'aria-live': 'polite' });
    const form = h(
      'form',
      { class: 'filters', 'aria-label': 'Bulk redrive filter' },
      field('Type', bType),
      field('Queue', bQueue),
      field('Error code', bCode),
      field('Dead-lettered after', bAfter),
      field('Dead-lettered before', bBefore),
      h('div', { class: 'filter-actions' }, h('button', { type: 'submit', class: 'btn' }, 'Preview (dry run)')),
    );
    const filter = () => {
      const b = {};
      if (bType.value.trim()) b.type = bType.value.trim();
      if (bQueue.value.trim()) b.queue = bQueue.value.trim();
      if (bCode.value.trim()) b.error_code = bCode.value.trim();
      if (bAfter.value) b.dead_lettered_after = fromLocalInput(bAfter.value);
      if (bBefore.value) b.dead_lettered_before = fromLocalInput(bBefore.value);
      return b;
    };
    const describeFilter = (b) =>
      Object.keys(b).length ? Object.entries(b).map(([k, v]) => `${k.replace(/_/g, ' ')} = ${k.startsWith('dead') ? when(v) : v}`).join(', ') : 'no filter: every dead letter of your tenant';
    form.addEventListener('input', () => preview.replaceChildren());
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const b = filter();
      preview.replaceChildren(h('p', {}, 'Counting\u2026'));
      try {
        const r = await api('POST', '/jobs/v1/dlq/retry', { body: { ...b, dry_run: true }, signal });
        const n = r.data.would_requeue ?? 0;
        fill(
          preview,
          h('p', { 'data-testid': 'would-requeue' }, `${num(n)} dead letter${n === 1 ? '' : 's'} match (${describeFilter(b)}).`),
          (r.data.sample || []).length
            ? h('ul', { class: 'sample' }, r.data.sample.map((j) => h('li', {}, jobLink(j.id), ` ${j.type} \u2014 ${j.last_error?.code || ''} ${j.last_error?.message || ''}`)))
            : null,
          n > 0
            ? h(
                'button',
                {
                  type: 'button',
                  class: 'btn btn-primary',
                  onclick: () =>
                    confirmAction({
                      title: `Requeue ${num(n)} job${n === 1 ? '' : 's'}?`,
                      body: [
                        h('p', {}, `Every dead letter matching (${describeFilter(b)}) goes back to pending with its attempts reset. The count may have changed since the preview.`),
                      ],
                      confirm: 'Requeue',
                      run: async () => {
                        const rr = await api('POST', '/jobs/v1/dlq/retry', { body: b, signal });
                        preview.replaceChildren();
                        done(`${num(rr.data.requeued ?? 0)} job${rr.data.requeued === 1 ? '' : 's'} requeued.`);
                        await reload();
                      },
                    }),
                },
                `Requeue ${num(n)} job${n === 1 ? '' : 's'}\u2026`,
              )
            : null,
        );
      } catch (err) {
        if (err?.name !== 'AbortError') preview.replaceChildren(errorBox(err));
      }
    });
    return {
      el: h('div', { class: 'stack' }, h('p', { class: 'muted' }, 'Requeue every dead letter matching a filter. Preview first: the real redrive asks for confirmation.'), form, preview),
      prefill(v) {
        bType.value = v.type || '';
        bCode.value = v.error_code || '';
        bQueue.value = '';
        bAfter.value = bBefore.value = '';
        preview.replaceChildren();
        bType.focus();
        form.scrollIntoView({ block: 'center' });
        announce('Bulk redrive filter filled in. Preview it to continue.');
      },
    };
  }

  await reload();
}
