// Hand-drawn SVG charts (no library): a time-series line chart over a fixed span ending now.
// Each chart is an image with a text alternative; the numbers are also in a table nearby.

import { h, s } from './dom.js';

const H = 200;
const PAD = { l: 44, r: 12, t: 10, b: 26 };

/** A round top for the y axis; for counts, a multiple of 4 so the quarter lines are whole. */
function niceMax(v, integer) {
  if (integer) {
    const p = 10 ** Math.max(0, Math.floor(Math.log10(Math.max(v, 1))) - 1);
    for (const m of [4, 8, 12, 20, 40, 80, 120, 200]) if (m * p >= v) return m * p;
    return 400 * p;
  }
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/**
 * `series`: [{name, key, points: [[ms, value], ...]}]; `spanMs`: the x axis ends now and
 * starts spanMs before; a gap longer than `gapMs` between samples breaks the line (the page
 * was not sampling then). `fmt` formats y values; `yMax` fixes the y axis top; `integer`: the values are counts.
 */
export function lineChart({ label, desc, series, spanMs = 3_600_000, gapMs = 30_000, fmt = String, yMax, integer = false, now = Date.now(), width = 640 }) {
  // Drawn at the width it is shown at, so the axis text keeps its size on a phone.
  const W = Math.max(300, Math.round(width));
  const ticks = W < 480 ? 3 : 6;
  const x0 = now - spanMs;
  const all = series.flatMap((sr) => sr.points.filter(([t]) => t >= x0).map(([, v]) => v));
  const top = yMax ?? niceMax(Math.max(0, ...all), integer);
  const X = (t) => PAD.l + ((t - x0) / spanMs) * (W - PAD.l - PAD.r);
  const Y = (v) => PAD.t + (1 - v / top) * (H - PAD.t - PAD.b);
  const id = `c-${Math.random().toString(36).slice(2)}`;
  const grid = [];
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    grid.push(s('line', { x1: PAD.l, x2: W - PAD.r, y1: Y(v), y2: Y(v), class: 'grid' }));
    grid.push(s('text', { x: PAD.l - 6, y: Y(v) + 4, class: 'axis', 'text-anchor': 'end' }, fmt(v)));
  }
  const step = spanMs / ticks;
  for (let i = 0; i <= ticks; i++) {
    const t = x0 + i * step;
    const mins = Math.round((now - t) / 60_000);
    grid.push(s('line', { x1: X(t), x2: X(t), y1: PAD.t, y2: H - PAD.b, class: 'grid' }));
    grid.push(
      s('text', { x: X(t), y: H - 8, class: 'axis', 'text-anchor': i === 0 ? 'start' : i === ticks ? 'end' : 'middle' }, mins === 0 ? 'now' : `\u2212${mins} min`),
    );
  }
  const lines = series.map((sr) => {
    const segs = [];
    let cur = [];
    let prev = null;
    for (const [t, v] of sr.points) {
      if (t < x0) continue;
      if (prev !== null && t - prev > gapMs && cur.length) {
        segs.push(cur);
        cur = [];
      }
      cur.push(`${X(t).toFixed(1)},${Y(Math.min(v, top)).toFixed(1)}`);
      prev = t;
    }
    if (cur.length) segs.push(cur);
    return s(
      'g',
      { class: `series series-${sr.key}` },
      segs.map((pts) =>
        pts.length === 1
          ? s('circle', { cx: pts[0].split(',')[0], cy: pts[0].split(',')[1], r: 2.5 })
          : s('polyline', { points: pts.join(' ') }),
      ),
    );
  });
  const svg = s(
    'svg',
    { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': `${id}-t ${id}-d`, class: 'chart' },
    s('title', { id: `${id}-t` }, label),
    s('desc', { id: `${id}-d` }, desc),
    grid,
    lines,
  );
  const legend = h(
    'ul',
    { class: 'legend', 'aria-hidden': 'true' },
    series.map((sr) => h('li', {}, h('span', { class: `swatch series-${sr.key}` }), sr.name)),
  );
  return h('figure', { class: 'chart-figure' }, svg, legend);
}
