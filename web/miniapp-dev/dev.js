// @ts-check
// The MiniApp dev page: one session, driven by hand or by browser tests (every control has an id).
//
// Served at /dev/miniapp/{session_id}?token=<jwt>, assets under /dev/assets/, the client package
// (web/miniapp-client/, by its name through the page's import map) under /dev/packages/. A `?ws=ws://host:port`
// parameter points the socket at another gateway (development only).

import { MiniAppClient, decodeJwtPayload } from '@ikiro/miniapp-client';

const LOG_LINES = 200;
const LOG_LINE_CHARS = 600;

/** @param {string} id */
function $(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from the page`);
  return el;
}

const els = {
  sessionId: $('session-id'),
  status: $('status'),
  userId: $('user-id'),
  connectionId: $('connection-id'),
  lastError: $('last-error'),
  connectionCount: $('connection-count'),
  peers: $('peers'),
  version: $('version'),
  pending: $('pending'),
  state: $('state'),
  patch: /** @type {HTMLTextAreaElement} */ ($('patch')),
  optimistic: /** @type {HTMLInputElement} */ ($('optimistic')),
  baseVersion: /** @type {HTMLInputElement} */ ($('base-version')),
  sendPatch: $('send-patch'),
  patchResult: $('patch-result'),
  actionName: /** @type {HTMLInputElement} */ ($('action-name')),
  actionPayload: /** @type {HTMLTextAreaElement} */ ($('action-payload')),
  sendAction: $('send-action'),
  actionResult: $('action-result'),
  log: $('log'),
  clearLog: $('clear-log'),
  disconnect: $('disconnect'),
  connect: $('connect'),
  ping: $('ping'),
  rtt: $('rtt'),
};

// --- Page parameters ---

const params = new URLSearchParams(location.search);
const pathMatch = location.pathname.match(/\/dev\/miniapp\/([^/]+)\/?$/);
const sessionId = pathMatch ? decodeURIComponent(pathMatch[1]) : '';
const pageToken = params.get('token') ?? '';
const subject = String(decodeJwtPayload(pageToken)?.sub ?? '');
const wsBase = params.get('ws') || `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}`;

els.sessionId.textContent = sessionId || '(none)';

// --- Rendering ---

/**
 * @param {string} text
 * @param {'in' | 'out' | 'note'} kind
 */
function logLine(text, kind) {
  const atBottom = els.log.scrollTop + els.log.clientHeight >= els.log.scrollHeight - 4;
  const li = document.createElement('li');
  li.className = kind;
  li.dataset.kind = kind;
  const time = new Date().toISOString().slice(11, 23);
  li.textContent = `${time} ${text.length > LOG_LINE_CHARS ? `${text.slice(0, LOG_LINE_CHARS)}…` : text}`;
  els.log.append(li);
  while (els.log.childElementCount > LOG_LINES) els.log.firstElementChild?.remove();
  if (atBottom) els.log.scrollTop = els.log.scrollHeight;
}

/** @param {{code: string, message: string}} error */
function showError(error) {
  els.lastError.textContent = `${error.code}: ${error.message}`;
  els.lastError.dataset.code = error.code;
}

/**
 * @param {string} text
 * @param {{code?: number}} [extra]
 */
function showStatus(text, extra = {}) {
  els.status.textContent = text;
  els.status.dataset.status = client ? client.status : 'closed';
  if (extra.code !== undefined) els.status.dataset.closeCode = String(extra.code);
}

function renderState() {
  els.version.textContent = String(client.version);
  els.pending.textContent = String(client.pendingCount);
  els.state.textContent = JSON.stringify(client.state, null, 2);
}

function renderPeers() {
  const items = client.peers.map((peer) => {
    const li = document.createElement('li');
    li.dataset.connectionId = peer.connectionId;
    li.dataset.userId = peer.userId;
    li.dataset.typing = String(peer.typing);
    const self = peer.connectionId === client.connectionId;
    if (self) li.dataset.self = 'true';
    const who = document.createElement('strong');
    who.textContent = peer.userId;
    const conn = document.createElement('code');
    conn.textContent = peer.connectionId;
    li.append(who, ' ', conn);
    if (self) li.append(' (you)');
    if (peer.typing) {
      const typing = document.createElement('span');
      typing.className = 'typing';
      typing.textContent = ' typing…';
      li.append(typing);
    }
    return li;
  });
  els.peers.replaceChildren(...items);
  els.connectionCount.textContent = String(client.connectionCount);
}

// --- Token refresh: the gateway's dev-only endpoint, or the page's own token without it ---

let warnedNoTokenEndpoint = false;

async function getToken() {
  try {
    const res = await fetch(`/dev/token?user_id=${encodeURIComponent(subject)}`, { cache: 'no-store' });
    if (res.ok) {
      const body = await res.json();
      if (typeof body?.token === 'string' && body.token) return body.token;
    }
    if (!warnedNoTokenEndpoint) logLine(`/dev/token answered ${res.status}: reusing the page's token`, 'note');
  } catch (err) {
    if (!warnedNoTokenEndpoint) logLine(`/dev/token failed (${err}): reusing the page's token`, 'note');
  }
  warnedNoTokenEndpoint = true;
  return pageToken;
}

// --- The client ---

/** @type {MiniAppClient} */
let client;
try {
  client = new MiniAppClient({ url: wsBase, sessionId, token: pageToken, getToken });
} catch (err) {
  const error = /** @type {{code?: string, message?: string}} */ (err);
  showError({ code: error.code ?? 'invalid_argument', message: error.message ?? String(err) });
  showStatus(`cannot start: ${error.message ?? err}`);
  throw err;
}
/** @type {any} */ (window).miniapp = client;

client.on('frame', (f) => logLine(`${f.direction === 'in' ? '←' : '→'} ${f.raw}`, f.direction));
client.on('status', ({ status }) => {
  if (status === 'open') showStatus('open');
  else if (status === 'connecting') showStatus('connecting…');
  else els.status.dataset.status = status;
});
client.on('connected', (event) => {
  els.userId.textContent = event.userId;
  els.connectionId.textContent = event.connectionId;
  showStatus('open');
});
client.on('closed', (event) => {
  const why = `${event.code}${event.reason ? ` ${event.reason}` : ''}`;
  if (event.willReconnect) showStatus(`reconnecting in ${event.delayMs} ms (closed ${why})`, event);
  else showStatus(`closed ${why}${event.byUser ? ' (by you)' : ''}`, event);
  logLine(`closed ${why}${event.willReconnect ? `, reconnecting in ${event.delayMs} ms` : ''}`, 'note');
});
client.on('resync', ({ reason }) => logLine(`resync: ${reason}`, 'note'));
client.on('auth_ok', ({ expiresAt }) => logLine(`token refreshed, expires ${new Date((expiresAt ?? 0) * 1000).toISOString()}`, 'note'));
client.on('error', (error) => showError(error));
client.on('state', renderState);
client.on('peers', renderPeers);
client.on('presence', renderPeers);

// --- Controls ---

/**
 * @param {string} text
 * @param {string} what
 * @returns {unknown}
 */
function parseJson(text, what) {
  try {
    return JSON.parse(text);
  } catch (err) {
    showError({ code: 'invalid_input', message: `${what} is not JSON: ${/** @type {Error} */ (err).message}` });
    return undefined;
  }
}

els.patch.addEventListener('input', () => client.setTyping(true));
els.patch.addEventListener('blur', () => client.setTyping(false));

els.sendPatch.addEventListener('click', () => {
  const patch = parseJson(els.patch.value, 'the patch');
  if (patch === undefined) return;
  const baseText = els.baseVersion.value.trim();
  const baseVersion = baseText === '' ? undefined : Number(baseText);
  if (baseVersion !== undefined && !Number.isSafeInteger(baseVersion)) {
    showError({ code: 'invalid_input', message: 'the base version is not a whole number' });
    return;
  }
  client.setTyping(false);
  els.patchResult.textContent = 'sent…';
  els.patchResult.dataset.outcome = 'pending';
  client
    .update(/** @type {any} */ (patch), { optimistic: els.optimistic.checked, baseVersion })
    .then(({ version }) => {
      els.patchResult.textContent = `confirmed as version ${version}`;
      els.patchResult.dataset.outcome = 'confirmed';
    })
    .catch((/** @type {any} */ err) => {
      els.patchResult.textContent = `refused: ${err.code}`;
      els.patchResult.dataset.outcome = 'refused';
      showError(err);
    })
    .finally(renderState);
  renderState();
});

els.sendAction.addEventListener('click', () => {
  const text = els.actionPayload.value.trim();
  const payload = text === '' ? null : parseJson(text, 'the payload');
  if (payload === undefined) return;
  client.sendAction(els.actionName.value, /** @type {any} */ (payload)).then(
    (id) => {
      els.actionResult.textContent = `sent (${id})`;
    },
    (/** @type {any} */ err) => {
      els.actionResult.textContent = `not sent: ${err.code}`;
      showError(err);
    },
  );
});

els.clearLog.addEventListener('click', () => els.log.replaceChildren());
els.disconnect.addEventListener('click', () => client.close(1000, 'closed from the dev page'));
els.connect.addEventListener('click', () => {
  client.connect().catch(() => {}); // the `closed` and `error` events already show why
});
els.ping.addEventListener('click', () => {
  client.ping().then(
    (ms) => {
      els.rtt.textContent = `${ms} ms`;
    },
    (/** @type {any} */ err) => showError(err),
  );
});

if (!sessionId || !pageToken) {
  showError({ code: 'invalid_input', message: 'open /dev/miniapp/{session_id}?token=<jwt>' });
  showStatus('not started: no session id or token in the URL');
} else {
  showStatus('connecting…');
  client.connect().catch(() => {});
}
