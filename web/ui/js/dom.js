// DOM helpers: elements are built with text nodes only (nothing the API returns is ever parsed
// as HTML), plus the formatting, status badges, the confirmation dialog and the live region
// every view shares.

import { ApiError, describe } from './api.js';

/** `h('a', {href: '#/x', class: 'y'}, 'text', child...)`; `on*` attributes add listeners. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, '');
    else el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

/** Replaces an element's children (arrays flattened; null, undefined and false left out). */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

const SVG = 'http://www.w3.org/2000/svg';
/** An SVG element with attributes. */
export function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  append(el, children);
  return el;
}

/** The statuses this page knows, in lifecycle order; a newer service's extra ones (seen in
 * the metrics' counts) are added by `learnStatuses`. */
export const STATUSES = ['scheduled', 'pending', 'leased', 'completed', 'dead_lettered', 'cancelled'];
export function learnStatuses(names) {
  const added = names.filter((n) => !STATUSES.includes(n));
  STATUSES.push(...added);
  return added;
}
export const statusLabel = (st) => String(st).replace(/_/g, '-');
/** "Dead-lettered": for headings and column titles. */
export const statusTitle = (st) => statusLabel(st).replace(/^./, (c) => c.toUpperCase());

export function badge(status) {
  return h('span', { class: `badge badge-${status}` }, statusLabel(status));
}

const nf = new Intl.NumberFormat();
export const num = (n) => (n === null || n === undefined ? '\u2014' : nf.format(n));

export function when(iso) {
  if (!iso) return '\u2014';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

/** "3 min ago" / "in 2 h". */
export function ago(iso, now = Date.now()) {
  if (!iso) return '\u2014';
  const ms = new Date(iso).getTime() - now;
  const abs = Math.abs(ms);
  const [v, u] =
    abs < 45_000 ? [Math.round(abs / 1000), 's'] : abs < 2_700_000 ? [Math.round(abs / 60_000), 'min'] : abs < 86_400_000 ? [Math.round(abs / 3_600_000), 'h'] : [Math.round(abs / 86_400_000), 'd'];
  return ms <= 0 ? `${v} ${u} ago` : `in ${v} ${u}`;
}

/** A <time> element: relative text, the exact time as its title and datetime. */
export function time(iso) {
  if (!iso) return h('span', {}, '\u2014');
  return h('time', { datetime: iso, title: when(iso) }, ago(iso));
}

export function duration(ms) {
  if (ms === null || ms === undefined) return '\u2014';
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
  if (ms < 3_600_000) return `${(ms / 60_000).toFixed(1)} min`;
  return `${(ms / 3_600_000).toFixed(1)} h`;
}

// Ids are UUIDv7: the first digits are the time (alike for jobs made together), the last are
// random, so both ends are shown.
export const shortId = (id) => (id ? `${String(id).slice(0, 8)}\u2026${String(id).slice(-4)}` : '\u2014');

/** A link to a job's page; the full id is the accessible name and the title. */
export function jobLink(id) {
  return h('a', { href: `#/jobs/${encodeURIComponent(id)}`, class: 'mono', title: id, 'aria-label': `job ${id}` }, shortId(id));
}

export function json(value) {
  return h('pre', { class: 'json', tabindex: '0' }, value === undefined ? 'null' : JSON.stringify(value, null, 2));
}

/** A table inside a labelled, keyboard-scrollable region (narrow screens scroll sideways). */
export function table({ caption, columns, rows, empty = 'Nothing to show.', testid }) {
  // No rows: a sentence, not an empty grid wider than a phone.
  if (!rows.length) return h('p', { class: 'empty-note', dataset: testid ? { testid } : undefined }, empty);
  const t = h(
    'table',
    { dataset: testid ? { testid } : undefined },
    caption ? h('caption', {}, caption) : null,
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.class }, c.label)))),
    h('tbody', {}, rows),
  );
  return h('div', { class: 'table-wrap', role: 'region', 'aria-label': caption || 'table', tabindex: '0' }, t);
}

/** Polite announcements for screen readers (and the visible status line). */
export function announce(text) {
  const live = document.getElementById('announcer');
  if (!live) return;
  live.textContent = '';
  // A new text node after a tick makes repeated messages be read again.
  setTimeout(() => {
    live.textContent = text;
  }, 30);
}

/** A visible error: the plain words, then the code and request id for whoever debugs it. */
export function errorBox(err, { title } = {}) {
  const code = err instanceof ApiError ? err.code : null;
  return h(
    'div',
    { class: 'error', role: 'alert' },
    title ? h('strong', {}, `${title} `) : null,
    describe(err),
    code
      ? h('span', { class: 'error-code' }, ` (${code}${err.requestId ? `, request ${err.requestId}` : ''})`)
      : null,
  );
}

/**
 * A modal confirmation (<dialog>): `body` nodes, an optional `form` of fields; `run(formData)`
 * does the work — while it runs the buttons are disabled; if it throws, the error is shown in
 * the dialog and it stays open. Resolves to run's result, or null when cancelled.
 */
export function confirmAction({ title, body = [], fields = [], confirm = 'Confirm', danger = false, run }) {
  return new Promise((resolve) => {
    const opener = document.activeElement;
    const status = h('div', { class: 'dialog-status', 'aria-live': 'polite' });
    const cancelBtn = h('button', { type: 'button', class: 'btn', value: 'cancel' }, 'Cancel');
    const okBtn = h('button', { type: 'submit', class: danger ? 'btn btn-danger' : 'btn btn-primary' }, confirm);
    const titleId = `dlg-${Math.random().toString(36).slice(2)}`;
    const form = h(
      'form',
      { method: 'dialog', novalidate: false },
      h('h2', { id: titleId }, title),
      h('div', { class: 'dialog-body' }, body, fields),
      status,
      h('div', { class: 'dialog-actions' }, cancelBtn, okBtn),
    );
    const dlg = h('dialog', { 'aria-labelledby': titleId, class: 'confirm' }, form);
    let result = null;
    const close = () => {
      dlg.close();
    };
    dlg.addEventListener('close', () => {
      dlg.remove();
      // Back to what opened it; if a refresh replaced that, to the page's heading.
      if (opener && opener.isConnected && typeof opener.focus === 'function') opener.focus();
      else document.querySelector('main h1')?.focus();
      resolve(result);
    });
    cancelBtn.addEventListener('click', close);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (!form.reportValidity()) return;
      okBtn.disabled = cancelBtn.disabled = true;
      dlg.setAttribute('aria-busy', 'true');
      status.replaceChildren(h('span', {}, 'Working\u2026'));
      try {
        result = (await run(new FormData(form))) ?? true;
        close();
      } catch (err) {
        status.replaceChildren(errorBox(err));
        okBtn.disabled = cancelBtn.disabled = false;
        dlg.removeAttribute('aria-busy');
        okBtn.focus();
      }
    });
    document.body.append(dlg);
    dlg.showModal();
    // Destructive: start on Cancel; otherwise on the first field, else the confirm button.
    const first = form.querySelector('input, select, textarea');
    (danger ? cancelBtn : first || okBtn).focus();
  });
}

/** A labelled form field. `input` is the control element (its id is set). */
export function field(label, input, hint) {
  const id = input.id || `f-${Math.random().toString(36).slice(2)}`;
  input.id = id;
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) input.setAttribute('aria-describedby', hintId);
  return h('div', { class: 'field' }, h('label', { for: id }, label), input, hint ? h('small', { id: hintId, class: 'hint' }, hint) : null);
}

export function select(name, options, value) {
  return h(
    'select',
    { name },
    options.map(([v, label]) => h('option', { value: v, selected: String(v) === String(value ?? '') }, label)),
  );
}

/** A datetime-local value (local time) from an RFC 3339 string, and back. */
export function toLocalInput(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}
export function fromLocalInput(v) {
  return v ? new Date(v).toISOString() : '';
}

/** Parses `#/path?query` into {parts, params}. */
export function parseHash(hash) {
  const raw = (hash || '').replace(/^#\/?/, '');
  const [path, q = ''] = raw.split('?');
  return { parts: path.split('/').filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(q) };
}

/** `#/path?k=v` from a path and params (empty values left out). */
export function hashFor(path, params = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  const qs = q.toString();
  return `#/${path}${qs ? `?${qs}` : ''}`;
}
