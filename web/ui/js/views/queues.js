// Queues: the tenant's queues (GET /jobs/v1/queues) and job types (GET /jobs/v1/types) with
// their depth and pause state, each paused or resumed after a confirmation
// (POST /jobs/v1/{queues|types}/{name}/pause|resume); and the tenant's schedules
// (GET /jobs/v1/schedules, read-only, up to 500).

import { api, collect } from '../api.js';
import { h, num, time, table, errorBox, announce, confirmAction } from '../dom.js';

const SCHEDULES_MAX = 500;

function actorText(a) {
  if (!a) return '';
  if (a.kind === 'system') return 'the system';
  return `${a.kind} ${a.id}`;
}

export async function queues({ main, signal, setTitle }) {
  setTitle('Queues');
  const status = h('div', { 'aria-live': 'polite' });
  const queuesBox = h('div');
  const typesBox = h('div');
  const schedulesBox = h('div');

  main.append(
    h('h1', { tabindex: '-1' }, 'Queues'),
    h('p', { class: 'muted' }, 'While a queue or a job type is paused, its pending jobs are not leased to workers (jobs already leased run on).'),
    h('p', {}, h('button', { type: 'button', class: 'btn', onclick: () => reload() }, 'Reload')),
    status,
    h('section', { 'aria-labelledby': 'queues-h' }, h('h2', { id: 'queues-h' }, 'Queues'), queuesBox),
    h('section', { 'aria-labelledby': 'types-h' }, h('h2', { id: 'types-h' }, 'Job types'), typesBox),
    h('section', { 'aria-labelledby': 'schedules-h' }, h('h2', { id: 'schedules-h' }, 'Schedules'), schedulesBox),
  );

  function done(text) {
    announce(text);
    status.replaceChildren(h('p', { class: 'notice', role: 'status', 'data-testid': 'queues-notice' }, text));
  }

  // kind: 'queue' (under /queues) or 'type' (under /types).
  function pauseTable(kind, items) {
    const noun = kind === 'queue' ? 'queue' : 'job type';
    const rows = items.map((q) =>
      h(
        'tr',
        { 'data-name': q.name, 'data-paused': String(!!q.paused) },
        h('th', { scope: 'row', class: 'mono' }, q.name),
        h('td', { class: 'num' }, num(q.depth?.scheduled)),
        h('td', { class: 'num' }, num(q.depth?.pending)),
        h('td', { class: 'num' }, num(q.depth?.leased)),
        h(
          'td',
          { 'data-testid': 'state' },
          q.paused
            ? h('span', { class: 'badge badge-cancelled' }, 'paused')
            : h('span', { class: 'badge badge-completed' }, 'running'),
          q.paused && (q.paused_at || q.paused_by)
            ? h('span', { class: 'muted small' }, ' ', time(q.paused_at), q.paused_by ? ` by ${actorText(q.paused_by)}` : '')
            : null,
        ),
        h(
          'td',
          { class: 'actions' },
          h(
            'button',
            {
              type: 'button',
              class: q.paused ? 'btn btn-small btn-primary' : 'btn btn-small',
              'aria-label': `${q.paused ? 'Resume' : 'Pause'} ${noun} ${q.name}`,
              onclick: () => toggle(kind, q),
            },
            q.paused ? 'Resume\u2026' : 'Pause\u2026',
          ),
        ),
      ),
    );
    return table({
      caption: kind === 'queue' ? 'Queues with jobs waiting or running, and paused ones' : 'Job types with jobs waiting or running, and paused ones',
      columns: [
        { label: kind === 'queue' ? 'Queue' : 'Type' },
        { label: 'Scheduled', class: 'num' },
        { label: 'Pending', class: 'num' },
        { label: 'Leased', class: 'num' },
        { label: 'State' },
        { label: 'Actions' },
      ],
      rows,
      empty: kind === 'queue' ? 'No queue has jobs waiting or running, and none is paused.' : 'No job type has jobs waiting or running, and none is paused.',
      testid: kind === 'queue' ? 'queues' : 'types',
    });
  }

  function toggle(kind, q) {
    const noun = kind === 'queue' ? 'queue' : 'job type';
    const verb = q.paused ? 'resume' : 'pause';
    const base = kind === 'queue' ? '/jobs/v1/queues' : '/jobs/v1/types';
    return confirmAction({
      title: `${q.paused ? 'Resume' : 'Pause'} the ${noun} ${q.name}?`,
      body: [
        h(
          'p',
          {},
          q.paused
            ? `Workers lease the ${noun}\u2019s pending jobs again (${num(q.depth?.pending)} pending now).`
            : `Workers stop leasing the ${noun}\u2019s pending jobs until it is resumed (${num(q.depth?.pending)} pending now). Jobs already leased run on.`,
        ),
      ],
      confirm: q.paused ? `Resume ${noun}` : `Pause ${noun}`,
      run: async () => {
        const r = await api('POST', `${base}/${encodeURIComponent(q.name)}/${verb}`, { body: {}, signal });
        done(`The ${noun} ${q.name} is ${r.data?.paused ? 'paused' : 'running'}.`);
        await reload();
      },
    });
  }

  async function loadPausable(kind, box) {
    const r = await api('GET', kind === 'queue' ? '/jobs/v1/queues' : '/jobs/v1/types', { signal });
    box.replaceChildren(pauseTable(kind, r.data || []));
  }

  async function loadSchedules() {
    const { items, more } = await collect('/jobs/v1/schedules', {}, SCHEDULES_MAX, signal);
    const rows = items.map((s) =>
      h(
        'tr',
        { 'data-schedule-id': s.id },
        h('th', { scope: 'row' }, s.name || h('span', { class: 'mono', title: s.id }, s.id)),
        h('td', { class: 'mono' }, s.cron ? s.cron : s.interval_seconds ? `every ${num(s.interval_seconds)} s` : '\u2014'),
        h('td', {}, s.timezone || (s.cron ? 'UTC' : '\u2014')),
        h('td', { class: 'mono' }, s.template?.type || '\u2014'),
        h('td', {}, s.enabled ? 'enabled' : 'paused'),
        h('td', {}, time(s.next_run_at)),
        h('td', {}, s.last_run ? time(s.last_run.fire_time) : 'never'),
      ),
    );
    schedulesBox.replaceChildren(
      more ? h('p', { class: 'muted small' }, `The first ${num(items.length)} schedules only (there are more).`) : '',
      table({
        caption: 'Schedules, newest first (read-only)',
        columns: [{ label: 'Schedule' }, { label: 'Cron or interval' }, { label: 'Time zone' }, { label: 'Job type' }, { label: 'State' }, { label: 'Next run' }, { label: 'Last run' }],
        rows,
        empty: 'Your tenant has no schedules.',
        testid: 'schedules',
      }),
    );
  }

  async function reload() {
    const results = await Promise.allSettled([loadPausable('queue', queuesBox), loadPausable('type', typesBox), loadSchedules()]);
    const failed = results.find((x) => x.status === 'rejected' && x.reason?.name !== 'AbortError');
    if (failed) status.replaceChildren(errorBox(failed.reason, { title: 'The queues could not be read.' }));
  }

  await reload();
}
