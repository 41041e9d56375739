// Admin (role admin; the service refuses the calls otherwise): the workers the service has
// seen (GET /jobs/v1/admin/workers: last activity, jobs held, draining) with a drain toggle
// (POST .../drain|undrain), and a tenant's limit overrides (GET/PUT/DELETE
// /jobs/v1/admin/tenants/{tenant}/overrides), which act on any tenant.

import { api, session } from '../api.js';
import { h, fill, num, when, time, table, errorBox, announce, confirmAction, field } from '../dom.js';

const LIMITS = [
  ['max_active_jobs', 'Max active jobs'],
  ['enqueue_per_second', 'Enqueues per second (burst: twice this)'],
  ['max_payload_bytes', 'Max payload bytes'],
  ['max_concurrent_leases', 'Max concurrent leases'],
];
const UUID = '[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}';

export async function admin({ main, signal, setTitle }) {
  setTitle('Admin');
  main.append(h('h1', { tabindex: '-1' }, 'Admin'));
  if (!session.isAdmin()) {
    main.append(h('p', { class: 'notice' }, 'These pages need the admin role, and your token does not have it. Sign in as an administrator.'));
    return;
  }
  const status = h('div', { 'aria-live': 'polite' });
  const workersBox = h('div');
  const overrides = overridesEditor();
  main.append(
    status,
    h(
      'section',
      { 'aria-labelledby': 'workers-h' },
      h('h2', { id: 'workers-h' }, 'Workers'),
      h('p', { class: 'muted small' }, 'Every worker the service has seen, service-wide. Last activity is its latest lease, heartbeat, completion or failure (an idle worker waiting for jobs is not recorded). A draining worker gets no new leases and may finish what it holds.'),
      workersBox,
    ),
    h('section', { 'aria-labelledby': 'ovr-h' }, h('h2', { id: 'ovr-h' }, 'Tenant limit overrides'), overrides.el),
  );

  function done(text) {
    announce(text);
    status.replaceChildren(h('p', { class: 'notice', role: 'status', 'data-testid': 'admin-notice' }, text));
  }

  async function loadWorkers() {
    const items = [];
    let cursor;
    let more = false;
    do {
      const r = await api('GET', '/jobs/v1/admin/workers', { query: { limit: 100, cursor }, signal });
      items.push(...r.data);
      more = !!(r.page?.has_more && r.page.next_cursor);
      cursor = r.page?.next_cursor;
    } while (more && items.length < 500);
    const rows = items.map((w) =>
      h(
        'tr',
        { 'data-worker-id': w.worker_id },
        h('th', { scope: 'row', class: 'mono' }, w.worker_id),
        h('td', {}, time(w.last_seen)),
        h('td', {}, when(w.first_seen)),
        h('td', { class: 'num' }, num(w.leased_jobs)),
        h('td', { 'data-testid': 'draining' }, w.draining ? 'draining' : 'serving'),
        h(
          'td',
          {},
          h(
            'button',
            {
              type: 'button',
              class: w.draining ? 'btn btn-small' : 'btn btn-small btn-danger',
              'aria-label': `${w.draining ? 'Undrain' : 'Drain'} worker ${w.worker_id}`,
              onclick: () => toggle(w),
            },
            w.draining ? 'Undrain\u2026' : 'Drain\u2026',
          ),
        ),
      ),
    );
    fill(
      workersBox,
      table({
        caption: 'Workers',
        columns: [{ label: 'Worker' }, { label: 'Last activity' }, { label: 'First seen' }, { label: 'Jobs held', class: 'num' }, { label: 'State' }, { label: 'Actions' }],
        rows,
        empty: 'No worker has leased a job yet.',
        testid: 'workers',
      }),
      more ? h('p', { class: 'muted small' }, `The first ${items.length} workers are shown.`) : null,
      h('button', { type: 'button', class: 'btn', onclick: () => loadWorkers().then(() => announce('Workers reloaded.')).catch(show) }, 'Reload workers'),
    );
  }

  function show(e) {
    if (e?.name !== 'AbortError') status.replaceChildren(errorBox(e));
  }

  function toggle(w) {
    const drain = !w.draining;
    return confirmAction({
      title: `${drain ? 'Drain' : 'Undrain'} this worker?`,
      body: [
        h('p', {}, h('span', { class: 'mono' }, w.worker_id)),
        h('p', {}, drain
          ? `It will get no new leases (its lease requests answer empty) and may finish the ${num(w.leased_jobs)} job(s) it holds.`
          : 'It will get new leases again.'),
      ],
      confirm: drain ? 'Drain worker' : 'Undrain worker',
      danger: drain,
      run: async () => {
        await api('POST', `/jobs/v1/admin/workers/${encodeURIComponent(w.worker_id)}/${drain ? 'drain' : 'undrain'}`, { body: {}, signal });
        done(`Worker ${w.worker_id} ${drain ? 'is draining' : 'is serving again'}.`);
        await loadWorkers();
      },
    });
  }

  function overridesEditor() {
    const tenant = h('input', { name: 'tenant', required: true, pattern: UUID, value: session.get().claims.tenantId, class: 'mono', spellcheck: 'false', autocomplete: 'off' });
    const box = h('div');
    const form = h(
      'form',
      { class: 'filters', 'aria-label': 'Choose a tenant' },
      h('div', { class: 'wide' }, field('Tenant ID', tenant)),
      h('div', { class: 'filter-actions' }, h('button', { type: 'submit', class: 'btn' }, 'Load overrides')),
    );
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      if (form.reportValidity()) load(tenant.value.trim()).catch(show);
    });

    async function load(t) {
      const r = await api('GET', `/jobs/v1/admin/tenants/${encodeURIComponent(t)}/overrides`, { signal });
      const o = r.data.overrides || {};
      const inputs = Object.fromEntries(
        LIMITS.map(([k]) => [k, h('input', { name: k, type: 'number', min: '0', max: '1000000000', step: '1', value: o[k] ?? '', inputmode: 'numeric' })]),
      );
      const edit = h(
        'form',
        { class: 'stack', 'aria-label': `Overrides of tenant ${t}` },
        h('p', {}, r.data.updated_at
          ? ['Last changed ', time(r.data.updated_at), r.data.updated_by ? ` by ${r.data.updated_by.kind} ${r.data.updated_by.id}` : '', '.']
          : 'No overrides: the plan tier\u2019s limits apply.'),
        h('div', { class: 'filters' }, LIMITS.map(([k, label]) => field(label, inputs[k], 'Empty: the plan tier\u2019s value'))),
        h(
          'div',
          { class: 'filter-actions' },
          h('button', { type: 'submit', class: 'btn btn-primary' }, 'Save overrides\u2026'),
          h(
            'button',
            {
              type: 'button',
              class: 'btn btn-danger',
              disabled: !Object.keys(o).length,
              onclick: () =>
                confirmAction({
                  title: 'Remove every override?',
                  body: [h('p', {}, 'Tenant ', h('span', { class: 'mono' }, t), ' goes back to its plan tier\u2019s limits.')],
                  confirm: 'Remove overrides',
                  danger: true,
                  run: async () => {
                    await api('DELETE', `/jobs/v1/admin/tenants/${encodeURIComponent(t)}/overrides`, { signal });
                    done(`Overrides of tenant ${t} removed.`);
                    await load(t);
                  },
                }),
            },
            'Remove all overrides\u2026',
          ),
        ),
      );
      edit.addEventListener('submit', (e) => {
        e.preventDefault();
        if (!edit.reportValidity()) return;
        const body = {};
        for (const [k] of LIMITS) if (inputs[k].value !== '') body[k] = Number(inputs[k].value);
        confirmAction({
          title: 'Replace this tenant\u2019s overrides?',
          body: [
            h('p', {}, 'Tenant ', h('span', { class: 'mono' }, t), Object.keys(body).length ? ' gets exactly these overrides:' : ' keeps no override (every limit from the plan tier).'),
            h('ul', {}, Object.entries(body).map(([k, v]) => h('li', {}, `${LIMITS.find(([x]) => x === k)[1]}: ${num(v)}`))),
            h('p', { class: 'muted' }, 'A limit left empty uses the plan tier\u2019s value. The change is recorded as an event naming you.'),
          ],
          confirm: 'Save overrides',
          run: async () => {
            await api('PUT', `/jobs/v1/admin/tenants/${encodeURIComponent(t)}/overrides`, { body, signal });
            done(`Overrides of tenant ${t} saved.`);
            await load(t);
          },
        });
      });
      box.replaceChildren(edit);
    }

    return { el: h('div', { class: 'stack' }, form, box), load };
  }

  try {
    await loadWorkers();
  } catch (e) {
    show(e);
  }
  overrides.load(session.get().claims.tenantId).catch(show);
}
