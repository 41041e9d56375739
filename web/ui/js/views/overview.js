// Overview: GET /jobs/v1/metrics (windows 60, 300, 3600) and GET /jobs/v1/quota, polled every
// 5 s while the tab is visible. Counts, throughput totals, latencies and the projector's lag
// are the service's own figures; the two charts are samples this page takes of the 60-second
// window while it is open (kept for an hour in this tab), and say so.

import { api, freshness, session } from '../api.js';
import { h, fill, STATUSES, learnStatuses, statusTitle, num, duration, table, time, errorBox, announce, select, field, hashFor } from '../dom.js';
import { lineChart } from '../charts.js';

const POLL_MS = 5000;
const HOUR = 3_600_000;
const WINDOWS = [
  [60, 'Last minute'],
  [300, 'Last 5 minutes'],
  [3600, 'Last hour'],
];

function samplesKey() {
  return `jobs-ui.samples.${session.get()?.claims?.tenantId}`;
}

function loadSamples() {
  try {
    const v = JSON.parse(sessionStorage.getItem(samplesKey()));
    return Array.isArray(v) ? v.filter((p) => p.t > Date.now() - HOUR) : [];
  } catch {
    return [];
  }
}

function failureRate(tp) {
  const done = tp.completed + tp.failed;
  return done > 0 ? tp.failed / done : null;
}
const pct = (r) => (r === null ? '\u2014' : `${(r * 100).toFixed(r < 0.1 && r > 0 ? 1 : 0)} %`);

export async function overview({ main, signal, setTitle }) {
  setTitle('Overview');
  const tenant = session.get().claims.tenantId;
  let windowSec = Number(sessionStorage.getItem('jobs-ui.window')) || 3600;
  let samples = loadSamples();
  let timer = null;
  let last = {};

  const updated = h('span', { class: 'muted', 'data-testid': 'updated' }, 'Loading\u2026');
  const live = h('input', { type: 'checkbox', id: 'live', checked: true });
  const windowSel = select('window', WINDOWS, windowSec);
  windowSel.id = 'window';
  const refreshBtn = h('button', { type: 'button', class: 'btn' }, 'Refresh now');
  const problem = h('div');

  // One tile per status; a status a newer service adds gets a tile when it first appears.
  const tiles = {};
  const tileList = h('ul', { class: 'stats' });
  function ensureTiles() {
    for (const st of STATUSES) {
      if (tiles[st]) continue;
      tiles[st] = h('span', { class: 'stat-value', 'data-count': st }, '\u2026');
      tileList.append(
        h(
          'li',
          {},
          h(
            'a',
            { class: `stat stat-${st}`, href: hashFor('jobs', { status: st }) },
            h('span', { class: 'stat-label' }, statusTitle(st)),
            tiles[st],
          ),
        ),
      );
    }
  }
  ensureTiles();
  const statusSection = h(
    'section',
    { 'aria-labelledby': 'by-status-h' },
    h('h2', { id: 'by-status-h' }, 'Jobs by status'),
    tileList,
  );

  const throughputBox = h('div');
  const chartsBox = h('div', { class: 'grid-2' });
  const latencyBox = h('div');
  const typesBox = h('div');
  const projectorBox = h('div');
  const quotaBox = h('div');

  main.append(
    h('h1', { tabindex: '-1' }, 'Overview'),
    h('p', { class: 'muted' }, 'Tenant ', h('span', { class: 'mono' }, tenant), '. Everything here comes from GET /jobs/v1/metrics and /jobs/v1/quota.'),
    h(
      'div',
      { class: 'toolbar' },
      field('Window for latency', windowSel),
      h('div', { class: 'check' }, live, h('label', { for: 'live' }, 'Live updates (every 5 s)')),
      refreshBtn,
      updated,
    ),
    problem,
    statusSection,
    h(
      'section',
      { 'aria-labelledby': 'tp-h' },
      h('h2', { id: 'tp-h' }, 'Throughput and failures'),
      throughputBox,
      chartsBox,
    ),
    h('section', { 'aria-labelledby': 'lat-h' }, h('h2', { id: 'lat-h' }, 'Latency'), latencyBox),
    h('section', { 'aria-labelledby': 'types-h' }, h('h2', { id: 'types-h' }, 'Jobs by type'), typesBox),
    h('div', { class: 'grid-2' },
      h('section', { 'aria-labelledby': 'proj-h' }, h('h2', { id: 'proj-h' }, 'Projector'), projectorBox),
      h('section', { 'aria-labelledby': 'quota-h' }, h('h2', { id: 'quota-h' }, 'Quota'), quotaBox)),
  );

  /** Re-renders `box` only when `data` changed (so focus and scroll survive a refresh). */
  function put(name, box, data, render) {
    const key = JSON.stringify(data);
    if (last[name] === key) return;
    last[name] = key;
    fill(box, render(data));
  }

  function renderThroughput(byWindow) {
    const rows = WINDOWS.map(([w, label]) => {
      const tp = byWindow[w].throughput;
      return h(
        'tr',
        { 'data-window': w },
        h('th', { scope: 'row' }, label),
        h('td', { class: 'num' }, num(tp.enqueued)),
        h('td', { class: 'num' }, num(tp.completed)),
        h('td', { class: 'num' }, num(tp.failed)),
        h('td', { class: 'num' }, num(tp.dead_lettered)),
        h('td', { class: 'num' }, pct(failureRate(tp))),
      );
    });
    return table({
      caption: 'Jobs in each window, counted by the service (the minute is re-read every 5 s, the 5 minutes every 15 s, the hour every 30 s)',
      columns: [
        { label: 'Window' },
        { label: 'Enqueued', class: 'num' },
        { label: 'Completed', class: 'num' },
        { label: 'Failed attempts', class: 'num' },
        { label: 'Dead-lettered', class: 'num' },
        { label: 'Failure rate', class: 'num' },
      ],
      rows,
    });
  }

  function renderCharts() {
    const width = chartsBox.clientWidth > 700 ? chartsBox.clientWidth / 2 - 16 : chartsBox.clientWidth || 640;
    const pts = (k) => samples.map((p) => [p.t, p[k]]);
    const latest = samples[samples.length - 1];
    const note = h(
      'p',
      { class: 'muted small' },
      'Sampled by this page: each point is the count for the 60 seconds before it was taken, every 5 s while this tab is open (kept for the last hour in this tab). Gaps are times the page was not sampling. The table above has the service\u2019s own totals.',
    );
    const tput = lineChart({
      label: 'Throughput, jobs per minute (trailing 60 s), sampled by this page',
      desc: latest
        ? `Latest sample: ${latest.enqueued} enqueued, ${latest.completed} completed, ${latest.failed} failed attempts in the previous minute; ${samples.length} samples.`
        : 'No samples yet.',
      series: [
        { name: 'Enqueued', key: 'enqueued', points: pts('enqueued') },
        { name: 'Completed', key: 'completed', points: pts('completed') },
        { name: 'Failed attempts', key: 'failed', points: pts('failed') },
      ],
      integer: true,
      width,
    });
    const rate = lineChart({
      label: 'Failure rate, failed share of finished attempts (trailing 60 s), sampled by this page',
      desc: latest ? `Latest sample: ${pct(failureRate(latest))}.` : 'No samples yet.',
      series: [
        {
          name: 'Failure rate',
          key: 'rate',
          points: samples.map((p) => [p.t, failureRate(p)]).filter(([, v]) => v !== null).map(([t, v]) => [t, v * 100]),
        },
      ],
      yMax: 100,
      fmt: (v) => `${Math.round(v)}%`,
      width,
    });
    return [
      h('div', {}, h('h3', {}, 'Throughput (sampled)'), tput),
      h('div', {}, h('h3', {}, 'Failure rate (sampled)'), rate),
      h('div', { class: 'span-2' }, note),
    ];
  }

  function renderLatency(l) {
    const row = (kind, label) =>
      h(
        'tr',
        {},
        h('th', { scope: 'row' }, label),
        ['p50', 'p95', 'p99'].map((p) => h('td', { class: 'num', 'data-latency': `${kind}_${p}` }, duration(l[`${kind}_${p}`]))),
      );
    return [
      table({
        caption: `${WINDOWS.find(([w]) => w === windowSec)[1]}: percentiles (upper bound of the histogram bucket; \u2014 when no job was leased or finished)`,
        columns: [{ label: 'Latency' }, { label: 'p50', class: 'num' }, { label: 'p95', class: 'num' }, { label: 'p99', class: 'num' }],
        rows: [row('wait', 'Wait (ready \u2192 leased)'), row('run', 'Run (leased \u2192 completed)')],
      }),
    ];
  }

  function renderTypes(byType) {
    const rows = byType.map((t) =>
      h(
        'tr',
        { 'data-type': t.type },
        h('th', { scope: 'row' }, h('a', { href: hashFor('jobs', { type: t.type }) }, t.type)),
        STATUSES.map((st) =>
          h('td', { class: 'num', 'data-status': st }, t.counts[st] ? h('a', { href: hashFor('jobs', { type: t.type, status: st }) }, num(t.counts[st])) : '0'),
        ),
        h('td', { class: 'num' }, num(STATUSES.reduce((n, st) => n + (t.counts[st] || 0), 0))),
      ),
    );
    return table({
      caption: 'Jobs of each type by status (links open the filtered list)',
      columns: [{ label: 'Type' }, ...STATUSES.map((st) => ({ label: statusTitle(st), class: 'num' })), { label: 'Total', class: 'num' }],
      rows,
      empty: 'No jobs yet.',
      testid: 'by-type',
    });
  }

  function renderProjector(p) {
    if (!p) return h('p', { class: 'muted' }, 'This service version does not report the projection.');
    const state =
      p.lag_events === null || p.lag_events === undefined
        ? ['unknown', 'Unknown: the event stream did not answer in time.']
        : p.lag_events === 0
          ? ['ok', 'Caught up: the read model has applied every event.']
          : ['behind', `Behind by ${num(p.lag_events)} event${p.lag_events === 1 ? '' : 's'}${p.lag_ms !== null ? `; the oldest not yet applied is at most ${duration(p.lag_ms)} old` : ''}.`];
    return h(
      'div',
      { class: 'stack' },
      h('p', { class: `pill pill-${state[0]}`, 'data-testid': 'projector-state' }, state[1]),
      h(
        'dl',
        { class: 'facts' },
        h('dt', {}, 'Checkpoint (last applied event)'), h('dd', { class: 'mono' }, num(p.checkpoint_seq)),
        h('dt', {}, 'Stream\u2019s last event'), h('dd', { class: 'mono' }, num(p.stream_seq)),
        h('dt', {}, 'Newest applied job event'), h('dd', {}, time(p.last_applied_at)),
        h('dt', {}, 'This page\u2019s last read reflected'), h('dd', { class: 'mono' }, freshness.projectionSeq() === null ? '\u2014' : `event ${num(freshness.projectionSeq())}`),
      ),
      h('p', { class: 'muted small' }, 'Service-wide: one projector serves every tenant.'),
    );
  }

  function renderQuota(q) {
    const rows = [
      ['Active jobs (scheduled + pending + leased)', q.usage.active_jobs, q.limits.max_active_jobs],
      ['Leased now', q.usage.leased_jobs, q.limits.max_concurrent_leases],
    ].map(([label, used, max]) =>
      h(
        'tr',
        {},
        h('th', { scope: 'row' }, label),
        h('td', { class: 'num' }, num(used)),
        h('td', { class: 'num' }, num(max)),
        h('td', {}, h('meter', { min: 0, max: max || 1, value: used, high: (max || 1) * 0.8, 'aria-label': `${label}: ${used} of ${max}` })),
      ),
    );
    return h(
      'div',
      { class: 'stack' },
      h('p', {}, `Plan ${q.plan_tier}${q.overridden ? ', with an administrator\u2019s override' : ''}. Enqueue rate limit ${num(q.limits.enqueue_per_second)}/s; largest payload ${num(q.limits.max_payload_bytes)} bytes.`),
      table({ caption: 'Usage against limits', columns: [{ label: 'Limit' }, { label: 'Used', class: 'num' }, { label: 'Limit', class: 'num' }, { label: '' }], rows }),
    );
  }

  // The 60-second window (counts, the chart's sample, the projector) every tick; the longer
  // windows, which sum more rows, and the quota less often — all of them on "Refresh now".
  const EVERY = { 60: 1, 300: 3, 3600: 6, quota: 6 };
  const cached = {};
  let ticks = 0;

  async function tick({ all = false } = {}) {
    const due = (k) => all || !cached[k] || ticks % EVERY[k] === 0;
    ticks += 1;
    try {
      const [m60, m300, m3600, quota] = await Promise.all([
        api('GET', '/jobs/v1/metrics', { query: { window: 60 }, signal }),
        due(300) ? api('GET', '/jobs/v1/metrics', { query: { window: 300 }, signal }) : null,
        due(3600) ? api('GET', '/jobs/v1/metrics', { query: { window: 3600 }, signal }) : null,
        due('quota') ? api('GET', '/jobs/v1/quota', { signal }).catch((e) => ({ error: e })) : null,
      ]);
      cached[60] = m60.data;
      if (m300) cached[300] = m300.data;
      if (m3600) cached[3600] = m3600.data;
      if (quota) cached.quota = quota;
      const now = Date.now();
      const prev = samples[samples.length - 1];
      if (!prev || now - prev.t >= POLL_MS - 500) {
        samples.push({ t: now, ...m60.data.throughput });
        samples = samples.filter((p) => p.t > now - HOUR);
        try {
          sessionStorage.setItem(samplesKey(), JSON.stringify(samples));
        } catch {
          /* storage full: keep them in memory */
        }
      }
      const current = m60.data;
      if (learnStatuses(Object.keys(current.counts)).length) {
        ensureTiles();
        last = {};
      }
      for (const st of STATUSES) tiles[st].textContent = num(current.counts[st] ?? 0);
      put('tp', throughputBox, { 60: cached[60], 300: cached[300], 3600: cached[3600] }, renderThroughput);
      chartsBox.replaceChildren(...renderCharts());
      put(`lat-${windowSec}`, latencyBox, cached[windowSec].latency_ms, renderLatency);
      put('types', typesBox, current.by_type, renderTypes);
      put('proj', projectorBox, current.projection, renderProjector);
      if (cached.quota.error) put('quota', quotaBox, null, () => errorBox(cached.quota.error));
      else put('quota', quotaBox, cached.quota.data, renderQuota);
      problem.replaceChildren();
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      if (e?.name === 'AbortError') return;
      problem.replaceChildren(errorBox(e, { title: 'Could not refresh.' }));
    }
  }

  function schedule() {
    clearInterval(timer);
    timer = null;
    if (live.checked && document.visibilityState === 'visible') timer = setInterval(tick, POLL_MS);
  }
  const onVisible = () => {
    if (document.visibilityState === 'visible' && live.checked) tick();
    schedule();
  };
  live.addEventListener('change', () => {
    schedule();
    announce(live.checked ? 'Live updates on.' : 'Live updates paused.');
  });
  windowSel.addEventListener('change', () => {
    windowSec = Number(windowSel.value);
    sessionStorage.setItem('jobs-ui.window', String(windowSec));
    last = {};
    tick({ all: true });
  });
  refreshBtn.addEventListener('click', () => {
    tick({ all: true }).then(() => announce('Overview refreshed.'));
  });
  document.addEventListener('visibilitychange', onVisible);
  window.addEventListener('resize', renderChartsSoon);
  let resizeTimer = null;
  function renderChartsSoon() {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => chartsBox.replaceChildren(...renderCharts()), 150);
  }

  await tick({ all: true });
  schedule();
  return () => {
    clearInterval(timer);
    clearTimeout(resizeTimer);
    document.removeEventListener('visibilitychange', onVisible);
    window.removeEventListener('resize', renderChartsSoon);
  };
}
