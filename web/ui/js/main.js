// The dashboard's shell: the hash router (#/overview, #/jobs, #/jobs/<id>, #/dlq, #/queues, #/admin,
// #/signin), the navigation, who is signed in, and moving focus to each new page's heading.

import { session } from './api.js';
import { h, parseHash, errorBox } from './dom.js';
import { signin } from './views/signin.js';
import { overview } from './views/overview.js';
import { jobs } from './views/jobs.js';
import { job } from './views/job.js';
import { dlq } from './views/dlq.js';
import { queues } from './views/queues.js';
import { admin } from './views/admin.js';

const NAV = [
  ['overview', 'Overview'],
  ['jobs', 'Jobs'],
  ['dlq', 'Dead letters'],
  ['queues', 'Queues'],
  ['admin', 'Admin', () => session.isAdmin()],
];

const main = document.getElementById('main');
let stop = null;
let controller = null;
let firstRender = true;

function renderNav(active) {
  const nav = document.getElementById('nav');
  const signedIn = !!session.get();
  nav.replaceChildren(
    ...(signedIn ? NAV : [])
      .filter(([, , visible]) => !visible || visible())
      .map(([name, label]) =>
        h('li', {}, h('a', { href: `#/${name}`, 'aria-current': name === active ? 'page' : null }, label)),
      ),
  );
  const who = document.getElementById('identity');
  const s = session.get();
  if (!s) {
    who.replaceChildren();
    return;
  }
  const c = s.claims;
  who.replaceChildren(
    h(
      'dl',
      { class: 'identity', 'aria-label': 'Signed in as' },
      h('div', {}, h('dt', {}, 'User'), h('dd', { 'data-testid': 'who' }, c.email || c.sub || 'unknown')),
      h('div', {}, h('dt', {}, 'Tenant'), h('dd', { class: 'mono', 'data-testid': 'tenant', title: c.tenantId }, c.tenantId)),
      h('div', {}, h('dt', {}, 'Roles'), h('dd', { 'data-testid': 'roles' }, session.roles().join(', ') || 'none')),
      c.planTier ? h('div', {}, h('dt', {}, 'Plan'), h('dd', {}, c.planTier)) : null,
    ),
    h(
      'button',
      {
        type: 'button',
        class: 'btn btn-small',
        onclick: () => {
          session.end('You signed out.');
          location.hash = '#/signin';
        },
      },
      'Sign out',
    ),
  );
}

async function render() {
  const hash = location.hash;
  if (hash && !hash.startsWith('#/')) return; // an in-page anchor, not a route
  const { parts, params } = parseHash(hash);
  const signedIn = !!session.get();
  let name = parts[0] || (signedIn ? 'overview' : 'signin');
  if (!signedIn && name !== 'signin') {
    location.replace(`#/signin?next=${encodeURIComponent(hash || '#/overview')}`);
    return;
  }
  if (signedIn && name === 'signin') {
    const next = params.get('next');
    location.replace(next && next.startsWith('#/') && !next.startsWith('#/signin') ? next : '#/overview');
    return;
  }
  if (name === 'jobs' && parts[1]) name = 'job';
  if (stop) stop();
  stop = null;
  if (controller) controller.abort();
  controller = new AbortController();
  renderNav(name === 'job' ? 'jobs' : name);
  main.replaceChildren();
  main.setAttribute('aria-busy', 'true');
  const view = { signin, overview, jobs, job, dlq, queues, admin }[name];
  const ctx = {
    main,
    parts,
    params,
    signal: controller.signal,
    setTitle: (t) => {
      document.title = `${t} \u2014 Jobs dashboard`;
    },
  };
  try {
    if (!view) {
      ctx.setTitle('Not found');
      main.append(h('h1', { tabindex: '-1' }, 'No such page'), h('p', {}, h('a', { href: '#/overview' }, 'Go to the overview')));
    } else {
      stop = (await view(ctx)) || null;
    }
  } catch (e) {
    if (e?.name !== 'AbortError') main.append(errorBox(e, { title: 'This page could not be shown.' }));
  } finally {
    main.removeAttribute('aria-busy');
  }
  // Move focus to the new page's heading (not on the first load: the browser starts at the top).
  if (!firstRender) main.querySelector('h1')?.focus();
  firstRender = false;
}

session.subscribe((s) => {
  if (!s && !location.hash.startsWith('#/signin')) location.hash = '#/signin';
  else renderNav(parseHash(location.hash).parts[0]);
});
window.addEventListener('hashchange', render);
document.querySelector('.skip')?.addEventListener('click', (e) => {
  e.preventDefault();
  (main.querySelector('h1') || main).focus();
});
render();
