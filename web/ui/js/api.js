// The session and every call to the Jobs Service, through the gateway this page came from
// (same origin: no CORS, no other host). The access token lives in this tab's sessionStorage;
// a refresh token (development login only) is spent at most once, by one refresh at a time.

const STORE = 'jobs-ui.session';

/** An answer that is not a success, in the API's terms: `code` is the envelope's error code. */
export class ApiError extends Error {
  constructor({ status = 0, code = 'NETWORK', message = '', details = null, requestId = null }) {
    super(message || code);
    this.status = status;
    this.code = code;
    this.details = details;
    this.requestId = requestId;
  }
}

/** The claims of a JWT (not verified here: the services verify every call). */
export function decodeClaims(token) {
  const parts = String(token).trim().split('.');
  if (parts.length !== 3) throw new Error('This is not a JWT: it should have three parts separated by dots.');
  const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
  const padded = b64 + '='.repeat((4 - (b64.length % 4)) % 4);
  let claims;
  try {
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    claims = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    throw new Error('The token\u2019s claims could not be read.');
  }
  if (!claims || typeof claims !== 'object') throw new Error('The token has no claims.');
  return claims;
}

let current = load();
let endedBecause = null;
const listeners = new Set();

function load() {
  try {
    const s = JSON.parse(sessionStorage.getItem(STORE));
    if (s && typeof s.accessToken === 'string') return { ...s, claims: decodeClaims(s.accessToken) };
  } catch {
    /* nothing usable stored */
  }
  return null;
}

function save(next) {
  current = next;
  if (next) {
    const { accessToken, refreshToken = null, via } = next;
    sessionStorage.setItem(STORE, JSON.stringify({ accessToken, refreshToken, via }));
  } else {
    sessionStorage.removeItem(STORE);
  }
  for (const f of listeners) f(current);
}

export const session = {
  get: () => current,
  /** Called with the new session (or null) whenever it changes. */
  subscribe(f) {
    listeners.add(f);
    return () => listeners.delete(f);
  },
  roles: () => (Array.isArray(current?.claims?.roles) ? current.claims.roles : []),
  isAdmin: () => session.roles().includes('admin'),
  /** Starts a session from tokens; throws (in plain words) when the token is unusable. */
  start(accessToken, refreshToken, via) {
    const claims = decodeClaims(accessToken);
    if (!claims.tenantId) throw new Error('The token has no tenantId claim: the Jobs Service refuses it.');
    if (typeof claims.exp === 'number' && claims.exp * 1000 < Date.now()) {
      throw new Error(`The token expired at ${new Date(claims.exp * 1000).toLocaleString()}.`);
    }
    endedBecause = null;
    save({ accessToken: accessToken.trim(), refreshToken: refreshToken || null, via, claims });
  },
  /** Ends the session; `reason` (plain words) is shown on the sign-in page. */
  end(reason = null) {
    endedBecause = reason;
    save(null);
  },
  /** Why the last session ended, once (then forgotten). */
  takeEndReason() {
    const r = endedBecause;
    endedBecause = null;
    return r;
  },
};

// Read-your-writes: after a command, reads ask for at least its event (x-min-event-seq) until
// an answer shows the read model has applied it.
let minSeq = 0;
let lastProjectionSeq = null;
export const freshness = {
  projectionSeq: () => lastProjectionSeq,
};

function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

async function parse(res) {
  const text = await res.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

function errorOf(res, body) {
  const e = body?.error;
  return new ApiError({
    status: res.status,
    code: e?.code || `HTTP_${res.status}`,
    message: e?.message || res.statusText,
    details: e?.details ?? null,
    requestId: body?.meta?.request_id || res.headers.get('x-request-id'),
  });
}

async function send(url, init) {
  try {
    return await fetch(url, init);
  } catch (e) {
    if (e?.name === 'AbortError') throw e;
    throw new ApiError({ code: 'NETWORK', message: 'The gateway could not be reached.' });
  }
}

/** The development login. Returns nothing; the session starts on success. */
export async function login(email, password) {
  const res = await send('/auth/v1/login', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ email, password }),
  });
  const body = await parse(res);
  if (!res.ok) throw errorOf(res, body);
  session.start(body.data.accessToken, body.data.refreshToken, 'login');
}

let refreshing = null;

/** Spends the refresh token once (concurrent callers share the one refresh). */
function refresh() {
  if (!refreshing) {
    const token = current?.refreshToken;
    refreshing = (async () => {
      if (!token) return false;
      const res = await send('/auth/v1/refresh', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ refreshToken: token }),
      });
      const body = await parse(res);
      if (!res.ok || !body?.data?.accessToken) return false;
      session.start(body.data.accessToken, body.data.refreshToken, current?.via || 'login');
      return true;
    })().finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

function expiresSoon() {
  const exp = current?.claims?.exp;
  return typeof exp === 'number' && exp * 1000 - Date.now() < 30_000;
}

/**
 * Calls the API. `query`: object of parameters (empty values left out); `body`: JSON;
 * `ifMatch`: a job version. Answers `{data, page, meta, headers, status}`; throws ApiError.
 */
export async function api(method, path, { query, body, ifMatch, signal } = {}) {
  if (!current) throw new ApiError({ status: 401, code: 'UNAUTHENTICATED', message: 'not signed in' });
  if (expiresSoon() && current.refreshToken) await refresh();
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, String(v));
  }
  const read = method === 'GET' || method === 'HEAD';
  let sentWith;
  const attempt = async () => {
    sentWith = current.accessToken;
    const headers = { Authorization: `Bearer ${sentWith}` };
    if (read && minSeq > 0) headers['x-min-event-seq'] = String(minSeq);
    if (!read) headers['Idempotency-Key'] = key;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (ifMatch !== undefined && ifMatch !== null) headers['If-Match'] = `"${ifMatch}"`;
    return send(url, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  };
  // One key per user action: a repeat of this call after a refresh is the same request.
  const key = newKey();
  let res = await attempt();
  if (res.status === 401 && current) {
    // Renewed meanwhile (by a call that got its 401 first): just send it again. Else renew.
    if (current.accessToken !== sentWith) res = await attempt();
    else if (current.refreshToken && (await refresh())) res = await attempt();
  }
  const payload = await parse(res);
  if (res.status === 401) {
    const err = errorOf(res, payload);
    session.end('Your session ended (the token expired or was not accepted). Please sign in again.');
    throw err;
  }
  if (!res.ok) throw errorOf(res, payload);
  const seq = Number(res.headers.get('x-event-seq'));
  if (!read && seq > minSeq) minSeq = seq;
  const applied = Number(res.headers.get('x-projection-seq'));
  if (read && res.headers.has('x-projection-seq')) {
    lastProjectionSeq = applied;
    if (applied >= minSeq) minSeq = 0;
  }
  return { data: payload?.data, page: payload?.page, meta: payload?.meta, headers: res.headers, status: res.status };
}

/** Every page of a list, up to `max` items: `{items, more}` (more: the list went on). */
export async function collect(path, query, max, signal) {
  const items = [];
  let cursor;
  for (;;) {
    const limit = Math.min(100, max - items.length);
    const r = await api('GET', path, { query: { ...query, limit, cursor }, signal });
    items.push(...(r.data || []));
    if (!r.page?.has_more || !r.page.next_cursor) return { items, more: false };
    if (items.length >= max) return { items, more: true };
    cursor = r.page.next_cursor;
  }
}

const PLAIN = {
  NETWORK: 'The gateway could not be reached. Is the service running?',
  UNAUTHENTICATED: 'Your session has ended or the token is not accepted. Please sign in again.',
  FORBIDDEN: 'Your roles do not allow this.',
  TENANT_MISMATCH: 'This belongs to another tenant.',
  NOT_FOUND: 'Not found: it may have been purged, or it does not exist for your tenant.',
  LEASE_LOST: 'The worker\u2019s lease on this job has ended.',
  IDEMPOTENCY_IN_PROGRESS: 'The same request is still being handled. Wait a moment and look again.',
  IDEMPOTENCY_KEY_REUSED: 'The request was refused as a duplicate. Try again.',
  PAYLOAD_TOO_LARGE: 'The payload is larger than your plan allows.',
  UNSUPPORTED_MEDIA_TYPE: 'The request was not sent as JSON (a bug in this page).',
  SERVICE_UNAVAILABLE: 'The service cannot reach its event store or database right now. Nothing was changed; try again shortly.',
  BAD_GATEWAY: 'The gateway could not reach the service. The change may or may not have been made: reload before retrying.',
  INTERNAL: 'The service failed unexpectedly. Nothing about it is shown here; the service log has the cause.',
};

/** An error in plain words for people (the code and request id go alongside, for support). */
export function describe(err) {
  if (!(err instanceof ApiError)) return err?.message || String(err);
  const d = err.details || {};
  switch (err.code) {
    case 'VALIDATION_FAILED': {
      const fields = Array.isArray(d.fields) ? d.fields.map((f) => `${f.field}: ${f.message}`) : [];
      return fields.length ? `Some values are not accepted \u2014 ${fields.join('; ')}.` : `Not accepted: ${err.message}.`;
    }
    case 'INVALID_STATE':
      return d.status
        ? `Not possible while the job is ${String(d.status).replace('_', ' ')}.`
        : `Not possible in the job\u2019s current state (${err.message}).`;
    case 'PRECONDITION_FAILED':
      return `Someone changed this job meanwhile${d.version ? ` (it is now at version ${d.version})` : ''}. Reload it and decide again.`;
    case 'QUOTA_EXCEEDED':
    case 'RATE_LIMITED':
      return `Your tenant\u2019s limit is reached${d.retry_after_seconds ? `; try again in ${d.retry_after_seconds} s` : ''}.`;
    default:
      return PLAIN[err.code] || `${err.message || 'The request failed'} (HTTP ${err.status}).`;
  }
}
