// Sign in: the development login (POST /auth/v1/login, when the gateway routes it) or a pasted
// access token (e.g. from `jobsctl token`). The token stays in this tab's sessionStorage.

import { ApiError, login, session } from '../api.js';
import { h, field, errorBox, parseHash } from '../dom.js';

function goNext() {
  const next = parseHash(location.hash).params.get('next');
  location.hash = next && next.startsWith('#/') && !next.startsWith('#/signin') ? next : '#/overview';
}

export async function signin({ main, setTitle }) {
  setTitle('Sign in');
  const reason = session.takeEndReason();

  const loginStatus = h('div', { 'aria-live': 'polite' });
  const email = h('input', { name: 'email', type: 'email', autocomplete: 'username', required: true, spellcheck: 'false' });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const loginForm = h(
    'form',
    { class: 'card stack', 'aria-labelledby': 'login-h' },
    h('h2', { id: 'login-h' }, 'Development login'),
    h('p', { class: 'muted' }, 'The users of deploy/dev-users.toml (development only).'),
    field('E-mail', email),
    field('Password', password),
    loginStatus,
    h('div', {}, h('button', { type: 'submit', class: 'btn btn-primary' }, 'Sign in')),
  );
  loginForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    const btn = loginForm.querySelector('button[type=submit]');
    btn.disabled = true;
    loginStatus.replaceChildren(h('span', {}, 'Signing in\u2026'));
    try {
      await login(email.value.trim(), password.value);
      goNext();
    } catch (err) {
      const words =
        err instanceof ApiError && err.status === 401
          ? new Error('Wrong e-mail or password.')
          : err instanceof ApiError && err.status === 404
            ? new Error('The development login is not enabled on this gateway (deploy/up --no-dev-login). Paste a token instead.')
            : err;
      loginStatus.replaceChildren(errorBox(words));
      btn.disabled = false;
      password.focus();
    }
  });

  const tokenStatus = h('div', { 'aria-live': 'polite' });
  const token = h('textarea', { name: 'token', rows: '4', required: true, spellcheck: 'false', autocomplete: 'off', class: 'mono' });
  const tokenForm = h(
    'form',
    { class: 'card stack', 'aria-labelledby': 'token-h' },
    h('h2', { id: 'token-h' }, 'Paste an access token'),
    field('Access token (JWT)', token, 'For example from: jobsctl token --key deploy/.dev/jwt-private.pem --tenant \u2026 --roles admin,member'),
    tokenStatus,
    h('div', {}, h('button', { type: 'submit', class: 'btn' }, 'Use this token')),
  );
  tokenForm.addEventListener('submit', (e) => {
    e.preventDefault();
    try {
      session.start(token.value.trim().replace(/^Bearer\s+/i, ''), null, 'token');
      goNext();
    } catch (err) {
      tokenStatus.replaceChildren(errorBox(err));
      token.focus();
    }
  });

  main.append(
    h('h1', { tabindex: '-1' }, 'Sign in'),
    reason ? h('p', { class: 'notice', role: 'status' }, reason) : null,
    h('div', { class: 'grid-2' }, loginForm, tokenForm),
    h(
      'p',
      { class: 'muted' },
      'The token is kept in this browser tab only (sessionStorage) and sent to this gateway only; closing the tab signs you out.',
    ),
  );
}
