// @ts-check
/**
 * Browser client of the Ikiro MiniApp protocol (DESIGN section 5), as one dependency-free ES module.
 *
 * The server owns the session state. This client keeps the last authoritative state and version,
 * applies every `state_update` in version order, and resynchronises (reconnects: the next
 * `connected` carries the full state) whenever it cannot prove its copy is exact. Optimistic
 * local patches are a view on top of that copy, never mixed into it.
 *
 * Everything that waits is bounded (pending updates, pings, one auth in flight) and every timer
 * has a name, so `close()` leaves nothing behind. Sockets, clock, timers and randomness are
 * injectable so the whole client runs under node tests with a fake socket.
 */

/** Close codes of DESIGN section 6. */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  NO_STATUS: 1005,
  ABNORMAL: 1006,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012,
  TRY_AGAIN_LATER: 1013,
  BAD_GATEWAY: 1014,
  TLS_HANDSHAKE: 1015,
  UNAUTHORIZED: 4001,
  FORBIDDEN: 4003,
  SESSION_FULL: 4029,
  BAD_SESSION_ID: 4400,
});

/** Every error code this client can surface: the server's, then its own. */
export const ErrorCode = Object.freeze({
  // Sent by the gateway in `error` frames.
  INVALID_JSON: 'invalid_json',
  INVALID_FRAME: 'invalid_frame',
  UNKNOWN_TYPE: 'unknown_type',
  RATE_LIMITED: 'rate_limited',
  VERSION_CONFLICT: 'version_conflict',
  STATE_TOO_LARGE: 'state_too_large',
  INVALID_TOKEN: 'invalid_token',
  UNAVAILABLE: 'unavailable',
  INTERNAL_ERROR: 'internal_error',
  // Raised by this client.
  INVALID_ARGUMENT: 'invalid_argument',
  NOT_CONNECTED: 'not_connected',
  DISCONNECTED: 'disconnected',
  CLOSED: 'closed',
  TOO_MANY_PENDING: 'too_many_pending',
  FRAME_TOO_LARGE: 'frame_too_large',
  TIMEOUT: 'timeout',
  TOKEN_REFRESH_FAILED: 'token_refresh_failed',
  BAD_SERVER_FRAME: 'bad_server_frame',
  // A close that ends the client (no reconnect); `closeCode` and `reason` say more.
  UNAUTHORIZED: 'unauthorized',
  FORBIDDEN: 'forbidden',
  SESSION_FULL: 'session_full',
  BAD_SESSION_ID: 'bad_session_id',
  POLICY_VIOLATION: 'policy_violation',
  MESSAGE_TOO_BIG: 'message_too_big',
  CONNECTION_FAILED: 'connection_failed',
  CONNECTION_CLOSED: 'connection_closed',
});

const TERMINAL_CLOSE_ERRORS = /** @type {Record<number, string>} */ ({
  [CloseCode.UNAUTHORIZED]: ErrorCode.UNAUTHORIZED,
  [CloseCode.FORBIDDEN]: ErrorCode.FORBIDDEN,
  [CloseCode.SESSION_FULL]: ErrorCode.SESSION_FULL,
  [CloseCode.BAD_SESSION_ID]: ErrorCode.BAD_SESSION_ID,
  [CloseCode.POLICY_VIOLATION]: ErrorCode.POLICY_VIOLATION,
  [CloseCode.MESSAGE_TOO_BIG]: ErrorCode.MESSAGE_TOO_BIG,
});

const SESSION_ID_RE = /^[A-Za-z0-9_-]{1,128}$/;

const DEFAULTS = Object.freeze({
  backoffBaseMs: 500,
  backoffMaxMs: 30_000,
  backoffJitter: 0.2,
  stableAfterMs: 10_000,
  connectTimeoutMs: 15_000,
  errorCloseMs: 1_000,
  heartbeatMs: 30_000,
  pongTimeoutMs: 10_000,
  maxPending: 256,
  maxPendingPings: 16,
  updateTimeoutMs: 30_000,
  catchUpMs: 5_000,
  refreshBeforeMs: 60_000,
  refreshRetryMs: 5_000,
  authTimeoutMs: 10_000,
  typingIntervalMs: 2_000,
  typingMinGapMs: 250,
  typingTimeoutMs: 5_000,
  maxFrameBytes: 64 * 1024,
});

/** A failure with a stable `code`; server errors keep the server's code, message and version. */
export class MiniAppError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {{version?: number, clientMsgId?: string, closeCode?: number, reason?: string, cause?: unknown}} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = 'MiniAppError';
    /** @type {string} */
    this.code = code;
    /** @type {number | undefined} */
    this.version = extra.version;
    /** @type {string | undefined} */
    this.clientMsgId = extra.clientMsgId;
    /** @type {number | undefined} */
    this.closeCode = extra.closeCode;
    /** @type {string | undefined} */
    this.reason = extra.reason;
  }
}

// --- Pure functions ---

/**
 * @param {unknown} value
 * @returns {value is Record<string, unknown>}
 */
function isObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/**
 * The result of applying a JSON Merge Patch (RFC 7396) to `target`; neither argument is modified.
 * Unchanged branches are shared with `target`, so treat results as read-only.
 * @param {unknown} target
 * @param {unknown} patch
 * @returns {unknown}
 */
export function mergePatch(target, patch) {
  if (!isObject(patch)) return patch;
  /** @type {Record<string, unknown>} */
  const result = isObject(target) ? { ...target } : {};
  for (const key of Object.keys(patch)) {
    const value = patch[key];
    if (value === null) {
      delete result[key];
      continue;
    }
    const before = Object.hasOwn(result, key) ? result[key] : undefined;
    // defineProperty, not assignment: a JSON key "__proto__" must stay a plain own property.
    Object.defineProperty(result, key, {
      value: mergePatch(before, value),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return result;
}

/**
 * The payload of a JWT, decoded without verifying it (only to read `exp`); null if unreadable.
 * @param {string} token
 * @returns {Record<string, unknown> | null}
 */
export function decodeJwtPayload(token) {
  const part = typeof token === 'string' ? token.split('.')[1] : undefined;
  if (!part) return null;
  try {
    const base64 = part.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((part.length + 3) % 4);
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const payload = JSON.parse(new TextDecoder().decode(bytes));
    return isObject(payload) ? payload : null;
  } catch {
    return null;
  }
}

/**
 * The `exp` claim of a JWT in unix seconds, or null.
 * @param {string} token
 * @returns {number | null}
 */
export function tokenExpiry(token) {
  const exp = decodeJwtPayload(token)?.exp;
  return typeof exp === 'number' && Number.isFinite(exp) ? exp : null;
}

/**
 * What to do after a socket closed that the user did not close. Invariant: only codes that say
 * "try again" reconnect; a refusal (4xxx), a policy close (1008) or a too-big frame (1009) would
 * only be refused again, so it ends the client.
 * @param {number} code
 * @returns {'reconnect_now' | 'reconnect' | 'stop'}
 */
export function closeAction(code) {
  switch (code) {
    case CloseCode.SERVICE_RESTART:
      return 'reconnect_now';
    case CloseCode.NORMAL: // the gateway never ends a live session with 1000: a proxy or a dead writer did
    case CloseCode.GOING_AWAY:
    case CloseCode.NO_STATUS:
    case CloseCode.ABNORMAL:
    case CloseCode.INTERNAL_ERROR:
    case CloseCode.TRY_AGAIN_LATER:
    case CloseCode.BAD_GATEWAY:
    case CloseCode.TLS_HANDSHAKE:
      return 'reconnect';
    default:
      return 'stop';
  }
}

/**
 * The wait before reconnect attempt `attempt` (0-based): `base * 2^attempt` capped at `max`,
 * then spread by ±`jitter` (a fraction) using `random()` in [0, 1).
 * @param {number} attempt
 * @param {{base?: number, max?: number, jitter?: number, random?: () => number}} [opts]
 * @returns {number}
 */
export function backoffDelay(attempt, opts = {}) {
  const base = opts.base ?? DEFAULTS.backoffBaseMs;
  const max = opts.max ?? DEFAULTS.backoffMaxMs;
  const jitter = opts.jitter ?? DEFAULTS.backoffJitter;
  const random = opts.random ?? Math.random;
  const delay = Math.min(max, base * 2 ** Math.min(attempt, 30));
  return Math.round(delay * (1 + jitter * (2 * random() - 1)));
}

/**
 * UTF-8 length of `text`, computed only when it could matter against `limit`.
 * @param {string} text
 * @param {number} limit
 */
function exceedsBytes(text, limit) {
  if (text.length > limit) return true;
  if (text.length * 3 <= limit) return false;
  return new TextEncoder().encode(text).length > limit;
}

function randomPrefix() {
  const bytes = new Uint8Array(6);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** @param {unknown} err */
function reportListenerError(err) {
  const report = /** @type {any} */ (globalThis).reportError;
  if (typeof report === 'function') report(err);
  else
    queueMicrotask(() => {
      throw err;
    });
}

// --- The client ---

/**
 * @typedef {{userId: string, connectionId: string, typing: boolean}} PeerT
 * @typedef {{patch: unknown, optimistic: boolean, baseVersion: number | null,
 *   resolve: (v: {version: number, clientMsgId: string}) => void, reject: (e: MiniAppError) => void,
 *   timer: unknown}} PendingUpdate
 * @typedef {{resolve: (ms: number) => void, reject: (e: MiniAppError) => void, sentAt: number, timer: unknown}} PendingPing
 */

const FRAME_HANDLERS = /** @type {const} */ ({
  connected: '_handleConnected',
  state_update: '_handleStateUpdate',
  presence: '_handlePresence',
  action: '_handleAction',
  error: '_handleError',
  pong: '_handlePong',
  auth_ok: '_handleAuthOk',
});

export class MiniAppClient {
  /**
   * @param {{
   *   url: string,
   *   sessionId: string,
   *   token?: string,
   *   getToken?: () => string | Promise<string>,
   *   WebSocket?: any,
   *   now?: () => number,
   *   setTimeout?: (fn: () => void, ms: number) => unknown,
   *   clearTimeout?: (handle: any) => void,
   *   random?: () => number,
   * } & Partial<typeof DEFAULTS>} options
   */
  constructor(options) {
    if (!options || typeof options.url !== 'string') {
      throw new MiniAppError(ErrorCode.INVALID_ARGUMENT, 'options.url (ws: or wss: origin) is required');
    }
    if (!SESSION_ID_RE.test(options.sessionId ?? '')) {
      throw new MiniAppError(ErrorCode.INVALID_ARGUMENT, 'sessionId must match ^[A-Za-z0-9_-]{1,128}$');
    }
    if (!options.token && typeof options.getToken !== 'function') {
      throw new MiniAppError(ErrorCode.INVALID_ARGUMENT, 'options.token or options.getToken is required');
    }
    /** @readonly */
    this.sessionId = options.sessionId;
    this._baseUrl = options.url.replace(/\/+$/, '');
    this._token = options.token ?? null;
    this._tokenUsed = false; // once a token opened a socket, later sockets ask getToken() for a fresh one
    this._getToken = options.getToken ?? null;
    this._WebSocket = options.WebSocket ?? /** @type {any} */ (globalThis).WebSocket;
    if (typeof this._WebSocket !== 'function') {
      throw new MiniAppError(ErrorCode.INVALID_ARGUMENT, 'no WebSocket: pass options.WebSocket');
    }
    this._now = options.now ?? (() => Date.now());
    this._setTimer = options.setTimeout ?? ((fn, ms) => setTimeout(fn, ms));
    this._clearTimer = options.clearTimeout ?? ((handle) => clearTimeout(handle));
    this._random = options.random ?? Math.random;
    /** @type {Record<keyof typeof DEFAULTS, number>} */
    this._opts = { ...DEFAULTS };
    for (const key of /** @type {(keyof typeof DEFAULTS)[]} */ (Object.keys(DEFAULTS))) {
      const value = options[key];
      if (value !== undefined) this._opts[key] = value;
    }

    /** @type {'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed'} */
    this._status = 'idle';
    this._ws = /** @type {any} */ (null);
    this._socketGen = 0; // bumps with every socket and every user close: stale callbacks compare it
    this._failures = 0; // backoff delays used since the last connection that stayed up `stableAfterMs`
    this._immediateUsed = false; // likewise: only the first reconnect of a run may skip the delay
    this._attempt = 0; // reconnect attempts since the last `connected`, for the `reconnecting` event
    this._connectedAt = /** @type {number | null} */ (null);
    this._hadConnection = false;
    /** @type {{promise: Promise<any>, resolve: (v: any) => void, reject: (e: MiniAppError) => void} | null} */
    this._connectWait = null;

    /** @type {Record<string, unknown>} */
    this._authoritative = {};
    this._version = 0;
    /** @type {unknown} */
    this._view = this._authoritative;
    /** @type {Map<string, PendingUpdate>} */
    this._pending = new Map(); // insertion order is send order: optimistic patches apply in it
    this._optimisticCount = 0;
    this._catchUpTo = 0;

    this.userId = /** @type {string | null} */ (null);
    this.connectionId = /** @type {string | null} */ (null);
    this.connectionCount = 0;
    /** @type {Map<string, PeerT>} */
    this._peers = new Map();

    /** @type {PendingPing[]} */
    this._pings = [];
    this._tokenExp = this._token ? tokenExpiry(this._token) : null;
    /** @type {{token: string} | null} */
    this._authInFlight = null;

    this._typingWanted = false;
    this._typingSent = false;
    this._typingSentAt = -Infinity;

    this._msgPrefix = randomPrefix();
    this._msgSeq = 0;
    /** @type {Map<string, unknown>} */
    this._timers = new Map();
    /** @type {Map<string, Set<(event: any) => void>>} */
    this._listeners = new Map();
  }

  // --- Public view ---

  /** `idle`, `connecting`, `open` (a `connected` frame arrived), `reconnecting` or `closed`. */
  get status() {
    return this._status;
  }

  /** The state to show: the authoritative state with pending optimistic patches on top, in order. */
  get state() {
    return this._view;
  }

  /** The last state the server confirmed (no optimistic patches). */
  get authoritativeState() {
    return this._authoritative;
  }

  /** The version of `authoritativeState`. */
  get version() {
    return this._version;
  }

  /** Every connection of the session, this one included; the last known list while reconnecting. */
  get peers() {
    return Array.from(this._peers.values());
  }

  /** Updates sent and not yet confirmed or refused. */
  get pendingCount() {
    return this._pending.size;
  }

  /** `exp` of the token the server last accepted (unix seconds), if known. */
  get tokenExpiresAt() {
    return this._tokenExp;
  }

  // --- Events ---

  /**
   * Listen to `type`; returns a function that removes the listener.
   * @param {string} type
   * @param {(event: any) => void} fn
   * @returns {() => void}
   */
  on(type, fn) {
    let set = this._listeners.get(type);
    if (!set) this._listeners.set(type, (set = new Set()));
    set.add(fn);
    return () => this.off(type, fn);
  }

  /**
   * @param {string} type
   * @param {(event: any) => void} fn
   */
  off(type, fn) {
    const set = this._listeners.get(type);
    if (set && set.delete(fn) && set.size === 0) this._listeners.delete(type);
  }

  /**
   * @param {string} type
   * @param {any} event
   */
  _emit(type, event) {
    const set = this._listeners.get(type);
    if (!set) return;
    for (const fn of set) {
      try {
        fn(event);
      } catch (err) {
        // A throwing listener must not cut the frame processing short (state would diverge).
        reportListenerError(err);
      }
    }
  }

  /** @param {string} type */
  _listening(type) {
    return this._listeners.has(type);
  }

  // --- Connection lifecycle ---

  /**
   * Open the session (reconnecting as needed); resolves with the first `connected` event, rejects
   * if the client ends first (a refusal such as 4001, or `close()`).
   * @returns {Promise<any>}
   */
  connect() {
    if (this._status === 'open') return Promise.resolve(this._connectedEvent(false));
    const wait = this._connectWaiter();
    if (this._status === 'idle' || this._status === 'closed') {
      this._failures = 0;
      this._immediateUsed = false;
      this._setStatus('connecting');
      void this._open();
    }
    return wait;
  }

  /**
   * Close for good (no reconnect). Pending updates and pings reject with code `closed`.
   * @param {number} [code]
   * @param {string} [reason]
   */
  close(code = CloseCode.NORMAL, reason = '') {
    if (this._status === 'closed' || this._status === 'idle') {
      this._rejectConnectWait(new MiniAppError(ErrorCode.CLOSED, 'client closed'));
      return;
    }
    const ws = this._ws;
    this._socketGen++; // a token being fetched for the next socket is dropped
    this._detachSocket();
    if (ws) {
      try {
        ws.close(code, reason);
      } catch {
        // Browsers refuse codes other than 1000 and 3000-4999: close plainly instead.
        try {
          ws.close();
        } catch {
          // Already closed.
        }
      }
    }
    const error = new MiniAppError(ErrorCode.CLOSED, 'client closed', { closeCode: code, reason });
    this._afterSocket(error);
    this._clearAllTimers();
    this._setStatus('closed');
    this._rejectConnectWait(error);
    this._emit('closed', { code, reason, wasClean: true, byUser: true, willReconnect: false, delayMs: null });
  }

  _connectWaiter() {
    if (!this._connectWait) {
      /** @type {any} */
      const wait = {};
      wait.promise = new Promise((resolve, reject) => {
        wait.resolve = resolve;
        wait.reject = reject;
      });
      // A caller that never awaits connect() must not get an unhandled rejection.
      wait.promise.catch(() => {});
      this._connectWait = wait;
    }
    return /** @type {any} */ (this._connectWait).promise;
  }

  /** @param {MiniAppError} error */
  _rejectConnectWait(error) {
    const wait = this._connectWait;
    this._connectWait = null;
    wait?.reject(error);
  }

  /** @param {'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed'} status */
  _setStatus(status) {
    if (status === this._status) return;
    const previous = this._status;
    this._status = status;
    this._emit('status', { status, previous });
  }

  async _open() {
    const gen = ++this._socketGen;
    let token = this._token;
    const expired = this._tokenExp !== null && this._tokenExp * 1000 <= this._now();
    if (this._getToken && (this._tokenUsed || !token || expired)) {
      try {
        token = await this._getToken();
        if (typeof token !== 'string' || !token) throw new TypeError('getToken() gave no token');
      } catch (err) {
        if (gen !== this._socketGen) return;
        this._emit('error', new MiniAppError(ErrorCode.TOKEN_REFRESH_FAILED, `getToken() failed: ${err}`, { cause: err }));
        this._reconnectAfter('reconnect', { code: CloseCode.ABNORMAL, reason: 'no token', wasClean: false });
        return;
      }
      if (gen !== this._socketGen) return; // closed (or reopened) while the token was fetched
      this._token = token;
      this._tokenExp = tokenExpiry(token);
    }
    this._tokenUsed = true;
    const url = `${this._baseUrl}/ws/miniapp/${encodeURIComponent(this.sessionId)}?token=${encodeURIComponent(/** @type {string} */ (token))}`;
    let ws;
    try {
      ws = new this._WebSocket(url);
    } catch (err) {
      this._finish(new MiniAppError(ErrorCode.CONNECTION_FAILED, `cannot open a socket: ${err}`, { cause: err }), {
        code: CloseCode.ABNORMAL,
        reason: String(err),
        wasClean: false,
      });
      return;
    }
    this._ws = ws;
    ws.onmessage = (/** @type {{data: unknown}} */ event) => {
      if (this._ws === ws) this._onMessage(event.data);
    };
    ws.onclose = (/** @type {{code: number, reason: string, wasClean: boolean}} */ event) => {
      if (this._ws === ws) this._onSocketClosed(event.code, event.reason ?? '', Boolean(event.wasClean));
    };
    // Browsers follow every error with a close event, which carries what there is to know; some
    // other implementations (node 20's undici on a refused connection) never do: close it for them.
    ws.onerror = () => {
      if (this._ws !== ws) return;
      this._arm('errorClose', this._opts.errorCloseMs, () => {
        if (this._ws !== ws) return;
        try {
          ws.close();
        } catch {
          // It is already as closed as it gets.
        }
        this._onSocketClosed(CloseCode.ABNORMAL, 'socket error', false);
      });
    };
    this._arm('handshake', this._opts.connectTimeoutMs, () => {
      this._dropSocket('reconnect', 'no connected frame in time');
    });
  }

  _detachSocket() {
    const ws = this._ws;
    if (!ws) return;
    ws.onmessage = ws.onclose = ws.onerror = null;
    this._ws = null;
  }

  /**
   * Give up on the current socket ourselves (a gap, a silent server), then reconnect.
   * @param {'reconnect' | 'reconnect_now'} action
   * @param {string} reason
   */
  _dropSocket(action, reason) {
    const ws = this._ws;
    this._detachSocket();
    try {
      ws?.close(CloseCode.NORMAL, reason.slice(0, 100));
    } catch {
      // Closing a socket that is already gone.
    }
    this._afterSocket(new MiniAppError(ErrorCode.DISCONNECTED, `reconnecting: ${reason}`));
    this._reconnectAfter(action, { code: CloseCode.NORMAL, reason, wasClean: false });
  }

  /**
   * @param {number} code
   * @param {string} reason
   * @param {boolean} wasClean
   */
  _onSocketClosed(code, reason, wasClean) {
    this._detachSocket();
    this._afterSocket(new MiniAppError(ErrorCode.DISCONNECTED, `connection lost (${code}${reason ? ` ${reason}` : ''})`));
    const action = closeAction(code);
    if (action === 'stop') {
      const errorCode = TERMINAL_CLOSE_ERRORS[code] ?? ErrorCode.CONNECTION_CLOSED;
      const error = new MiniAppError(errorCode, reason || `closed with ${code}`, { closeCode: code, reason });
      this._finish(error, { code, reason, wasClean });
      return;
    }
    this._reconnectAfter(action, { code, reason, wasClean });
  }

  /**
   * The client ends without the user asking (a refusal): tell everyone once.
   * @param {MiniAppError} error
   * @param {{code: number, reason: string, wasClean: boolean}} close
   */
  _finish(error, close) {
    this._clearAllTimers();
    this._socketGen++;
    this._setStatus('closed');
    this._rejectConnectWait(error);
    this._emit('closed', { ...close, byUser: false, willReconnect: false, delayMs: null, error });
    this._emit('error', error);
  }

  /**
   * @param {'reconnect' | 'reconnect_now'} action
   * @param {{code: number, reason: string, wasClean: boolean}} close
   */
  _reconnectAfter(action, close) {
    let delayMs = 0;
    if (action === 'reconnect_now' && !this._immediateUsed) {
      this._immediateUsed = true;
    } else {
      delayMs = backoffDelay(this._failures, {
        base: this._opts.backoffBaseMs,
        max: this._opts.backoffMaxMs,
        jitter: this._opts.backoffJitter,
        random: this._random,
      });
      this._failures++;
    }
    this._attempt++;
    this._setStatus('reconnecting');
    this._emit('closed', { ...close, byUser: false, willReconnect: true, delayMs });
    this._emit('reconnecting', { attempt: this._attempt, delayMs, code: close.code, reason: close.reason });
    this._arm('reconnect', delayMs, () => {
      this._setStatus('connecting');
      void this._open();
    });
  }

  /**
   * Release everything that belonged to the socket that just ended.
   * @param {MiniAppError} error  what pending updates and pings are rejected with
   */
  _afterSocket(error) {
    for (const name of ['handshake', 'errorClose', 'heartbeat', 'refresh', 'authWait', 'catchUp', 'typingStop', 'typingFlush']) {
      this._disarm(name);
    }
    if (this._connectedAt !== null) {
      if (this._now() - this._connectedAt >= this._opts.stableAfterMs) {
        this._failures = 0;
        this._immediateUsed = false;
      }
      this._connectedAt = null;
    }
    this._authInFlight = null;
    this._catchUpTo = 0;
    this._typingWanted = this._typingSent = false;
    this._typingSentAt = -Infinity;
    const pings = this._pings;
    this._pings = [];
    for (const ping of pings) {
      this._clearTimer(ping.timer);
      ping.reject(error);
    }
    const hadOptimistic = this._optimisticCount > 0;
    const pending = Array.from(this._pending.entries());
    this._pending.clear();
    this._optimisticCount = 0;
    for (const [, entry] of pending) this._clearTimer(entry.timer);
    if (hadOptimistic) this._refreshView('rollback');
    for (const [clientMsgId, entry] of pending) {
      entry.reject(new MiniAppError(error.code, error.message, { clientMsgId, closeCode: error.closeCode, reason: error.reason }));
    }
    let typingCleared = false;
    for (const [id, peer] of this._peers) {
      if (peer.typing) {
        this._peers.set(id, Object.freeze({ ...peer, typing: false }));
        typingCleared = true;
      }
    }
    if (typingCleared) this._emit('peers', { peers: this.peers });
  }

  // --- Inbound frames ---

  /** @param {unknown} raw */
  _onMessage(raw) {
    if (typeof raw !== 'string') return; // the gateway sends text frames only
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      this._emit('error', new MiniAppError(ErrorCode.BAD_SERVER_FRAME, 'a frame from the server is not JSON'));
      return;
    }
    if (!isObject(frame) || typeof frame.type !== 'string' || !isObject(frame.data)) {
      this._emit('error', new MiniAppError(ErrorCode.BAD_SERVER_FRAME, 'a frame from the server is not {type, data}'));
      return;
    }
    if (this._listening('frame')) this._emit('frame', { direction: 'in', type: frame.type, data: frame.data, raw });
    const handler = FRAME_HANDLERS[/** @type {keyof typeof FRAME_HANDLERS} */ (frame.type)];
    // Unknown types are ignored: a newer server may add some.
    if (handler) this[handler](/** @type {any} */ (frame.data));
  }

  /** @param {any} data */
  _handleConnected(data) {
    this._disarm('handshake');
    const reconnected = this._hadConnection;
    this._hadConnection = true;
    this._attempt = 0;
    this._connectedAt = this._now();
    this.userId = String(data.user_id);
    this.connectionId = String(data.connection_id);
    this.connectionCount = Number(data.connection_count) || 0;
    this._authoritative = isObject(data.state) ? data.state : {};
    this._version = Number.isInteger(data.version) ? data.version : 0;
    this._catchUpTo = 0;
    this._refreshView(null); // pending updates were rejected when the previous socket ended
    this._peers = new Map();
    for (const peer of Array.isArray(data.peers) ? data.peers : []) {
      this._peers.set(String(peer.connection_id), Object.freeze({ userId: String(peer.user_id), connectionId: String(peer.connection_id), typing: false }));
    }
    this._setStatus('open');
    this._scheduleRefresh();
    this._scheduleHeartbeat();
    const event = this._connectedEvent(reconnected);
    const wait = this._connectWait;
    this._connectWait = null;
    wait?.resolve(event);
    this._emit('connected', event);
    this._emit('peers', { peers: this.peers });
    this._emit('state', { state: this._view, version: this._version, reason: 'connected' });
  }

  /** @param {boolean} reconnected */
  _connectedEvent(reconnected) {
    return {
      sessionId: this.sessionId,
      userId: this.userId,
      connectionId: this.connectionId,
      connectionCount: this.connectionCount,
      peers: this.peers,
      state: this._authoritative,
      version: this._version,
      reconnected,
    };
  }

  /** @param {any} data */
  _handleStateUpdate(data) {
    if (this._status !== 'open') return;
    const version = data.version;
    if (!Number.isInteger(version) || version <= this._version) return; // stale or duplicate
    if (version !== this._version + 1 || !isObject(data.patch)) {
      this._resync(`version gap: have ${this._version}, got ${version}`);
      return;
    }
    this._authoritative = /** @type {Record<string, unknown>} */ (mergePatch(this._authoritative, data.patch));
    this._version = version;
    /** @type {PendingUpdate | undefined} */
    let mine;
    const clientMsgId = typeof data.client_msg_id === 'string' ? data.client_msg_id : undefined;
    if (clientMsgId !== undefined && data.connection_id === this.connectionId) {
      mine = this._pending.get(clientMsgId);
      if (mine) this._settle(clientMsgId, mine);
    }
    if (this._catchUpTo && this._version >= this._catchUpTo) {
      this._catchUpTo = 0;
      this._disarm('catchUp');
    }
    const update = {
      patch: data.patch,
      version,
      source: data.source,
      userId: data.user_id ?? null,
      connectionId: data.connection_id ?? null,
      clientMsgId: clientMsgId ?? null,
      mine: mine !== undefined,
    };
    this._refreshView(null);
    this._emit('state_update', update);
    this._emit('state', { state: this._view, version, reason: 'update', update });
    if (mine && clientMsgId !== undefined) mine.resolve({ version, clientMsgId });
  }

  /** @param {any} data */
  _handlePresence(data) {
    const connectionId = String(data.connection_id);
    const userId = String(data.user_id);
    let changed = false;
    if (data.event === 'joined') {
      this._peers.set(connectionId, Object.freeze({ userId, connectionId, typing: false }));
      changed = true;
    } else if (data.event === 'left') {
      changed = this._peers.delete(connectionId);
    } else if (data.event === 'typing') {
      const peer = this._peers.get(connectionId);
      // An unknown connection is ignored: a typing relayed after its `left` must not resurrect it.
      if (peer && peer.typing !== Boolean(data.is_typing)) {
        this._peers.set(connectionId, Object.freeze({ ...peer, typing: Boolean(data.is_typing) }));
        changed = true;
      }
    }
    if (Number.isInteger(data.connection_count)) this.connectionCount = data.connection_count;
    this._emit('presence', {
      event: data.event,
      userId,
      connectionId,
      connectionCount: this.connectionCount,
      isTyping: data.event === 'typing' ? Boolean(data.is_typing) : undefined,
    });
    if (changed) this._emit('peers', { peers: this.peers });
  }

  /** @param {any} data */
  _handleAction(data) {
    this._emit('action', {
      action: data.action,
      payload: data.payload ?? null,
      userId: data.user_id,
      connectionId: data.connection_id,
    });
  }

  /** @param {any} data */
  _handleError(data) {
    const clientMsgId = typeof data.client_msg_id === 'string' ? data.client_msg_id : undefined;
    const error = new MiniAppError(String(data.code ?? ErrorCode.INTERNAL_ERROR), String(data.message ?? ''), {
      version: Number.isInteger(data.version) ? data.version : undefined,
      clientMsgId,
    });
    const entry = clientMsgId === undefined ? undefined : this._pending.get(clientMsgId);
    if (entry && clientMsgId !== undefined) {
      this._settle(clientMsgId, entry);
      if (entry.optimistic) {
        this._refreshView(null);
        this._emit('state', { state: this._view, version: this._version, reason: 'rollback' });
      }
    }
    if (error.code === ErrorCode.VERSION_CONFLICT) this._onVersionConflict(error.version, entry?.baseVersion ?? null);
    if (error.code === ErrorCode.INVALID_TOKEN && this._authInFlight) {
      this._authInFlight = null;
      this._disarm('authWait');
      this._retryRefresh();
    }
    this._emit('error', error);
    entry?.reject(error);
  }

  /**
   * A refused `base_version` proves a gap only when the server is behind what we saw; when it is
   * ahead, the versions in between are already on their way to us (the error can overtake them).
   * @param {number | undefined} serverVersion
   * @param {number | null} baseVersion
   */
  _onVersionConflict(serverVersion, baseVersion) {
    if (serverVersion === undefined) {
      this._resync('version_conflict without a version');
      return;
    }
    if (serverVersion > this._version) {
      this._catchUpTo = Math.max(this._catchUpTo, serverVersion);
      if (!this._timers.has('catchUp')) {
        this._arm('catchUp', this._opts.catchUpMs, () => {
          this._resync(`server is at version ${this._catchUpTo}, updates stopped at ${this._version}`);
        });
      }
      return;
    }
    if (serverVersion < (baseVersion ?? this._version)) {
      this._resync(`server version ${serverVersion} is behind ours (${this._version})`);
    }
  }

  /** @param {string} reason */
  _resync(reason) {
    this._emit('resync', { reason, version: this._version });
    this._dropSocket('reconnect_now', `resync: ${reason}`);
  }

  _handlePong() {
    const ping = this._pings.shift();
    if (!ping) return;
    this._clearTimer(ping.timer);
    ping.resolve(this._now() - ping.sentAt);
  }

  /** @param {any} data */
  _handleAuthOk(data) {
    const inFlight = this._authInFlight;
    this._authInFlight = null;
    this._disarm('authWait');
    if (inFlight) this._token = inFlight.token;
    const before = this._tokenExp;
    if (typeof data.expires_at === 'number') this._tokenExp = data.expires_at;
    this._emit('auth_ok', { expiresAt: this._tokenExp });
    if (before !== null && (this._tokenExp === null || this._tokenExp <= before)) {
      // Rescheduling by the same expiry would refresh ever faster as it nears: wait, then ask again.
      this._emit('error', new MiniAppError(ErrorCode.TOKEN_REFRESH_FAILED, 'getToken() gave a token that expires no later'));
      this._retryRefresh();
      return;
    }
    this._scheduleRefresh();
  }

  // --- Outbound ---

  /**
   * Send a JSON Merge Patch as the next version. Resolves with `{version, clientMsgId}` when the
   * server's echo arrives; rejects with the server's error (`code`, `message`, `version`), or
   * `disconnected` when the socket ended first (the outcome is then unknown: the next `connected`
   * state tells). With `optimistic`, `state` shows the patch at once and drops it on refusal.
   * @param {Record<string, unknown>} patch
   * @param {{optimistic?: boolean, baseVersion?: number | null}} [options]
   * @returns {Promise<{version: number, clientMsgId: string}>}
   */
  update(patch, options = {}) {
    if (!isObject(patch)) {
      return Promise.reject(new MiniAppError(ErrorCode.INVALID_ARGUMENT, 'a state patch must be a JSON object'));
    }
    const notReady = this._notReady();
    if (notReady) return Promise.reject(notReady);
    if (this._pending.size >= this._opts.maxPending) {
      return Promise.reject(
        new MiniAppError(ErrorCode.TOO_MANY_PENDING, `${this._pending.size} updates are waiting for the server`),
      );
    }
    const baseVersion = options.baseVersion === undefined ? this._version : options.baseVersion;
    const clientMsgId = this._nextMsgId();
    /** @type {Record<string, unknown>} */
    const data = { patch, client_msg_id: clientMsgId };
    if (baseVersion !== null) data.base_version = baseVersion;
    let text;
    try {
      text = this._encode('state_update', data);
    } catch (err) {
      return Promise.reject(err);
    }
    const optimistic = Boolean(options.optimistic);
    return new Promise((resolve, reject) => {
      /** @type {PendingUpdate} */
      const entry = {
        // What the server will apply: the patch as JSON carries it (undefined gone, dates as text).
        patch: optimistic ? JSON.parse(text).data.patch : null,
        optimistic,
        baseVersion,
        resolve,
        reject,
        timer: null,
      };
      if (this._opts.updateTimeoutMs > 0) {
        entry.timer = this._setTimer(() => this._timeOutUpdate(clientMsgId), this._opts.updateTimeoutMs);
      }
      this._pending.set(clientMsgId, entry);
      if (optimistic) this._optimisticCount++;
      try {
        this._sendText('state_update', data, text);
      } catch (err) {
        this._settle(clientMsgId, entry);
        reject(new MiniAppError(ErrorCode.NOT_CONNECTED, `cannot send: ${err}`, { clientMsgId, cause: err }));
        return;
      }
      if (optimistic) {
        this._refreshView(null);
        this._emit('state', { state: this._view, version: this._version, reason: 'optimistic' });
      }
    });
  }

  /** @param {string} clientMsgId */
  _timeOutUpdate(clientMsgId) {
    const entry = this._pending.get(clientMsgId);
    if (!entry) return;
    entry.timer = null;
    this._settle(clientMsgId, entry);
    if (entry.optimistic) {
      this._refreshView(null);
      this._emit('state', { state: this._view, version: this._version, reason: 'rollback' });
    }
    entry.reject(
      new MiniAppError(ErrorCode.TIMEOUT, 'no answer from the server in time; the update may still apply', { clientMsgId }),
    );
  }

  /**
   * Forget a pending update (its timer too); the caller resolves or rejects it.
   * @param {string} clientMsgId
   * @param {PendingUpdate} entry
   */
  _settle(clientMsgId, entry) {
    this._pending.delete(clientMsgId);
    if (entry.optimistic) this._optimisticCount--;
    if (entry.timer !== null) this._clearTimer(entry.timer);
    entry.timer = null;
  }

  /**
   * Recompute the view: authoritative state, then each pending optimistic patch in send order.
   * @param {'rollback' | null} emitReason  emit a `state` event with this reason
   */
  _refreshView(emitReason) {
    let view = /** @type {unknown} */ (this._authoritative);
    if (this._optimisticCount > 0) {
      for (const entry of this._pending.values()) if (entry.optimistic) view = mergePatch(view, entry.patch);
    }
    this._view = view;
    if (emitReason) this._emit('state', { state: view, version: this._version, reason: emitReason });
  }

  /**
   * Send an action to every other connection of the session. Resolves with its `client_msg_id`
   * once written; the server does not confirm actions, a refusal arrives as an `error` event
   * carrying that `clientMsgId`.
   * @param {string} action
   * @param {unknown} [payload]
   * @returns {Promise<string>}
   */
  async sendAction(action, payload = null) {
    if (typeof action !== 'string' || action.length < 1 || action.length > 128) {
      throw new MiniAppError(ErrorCode.INVALID_ARGUMENT, 'action must be a string of 1 to 128 characters');
    }
    const notReady = this._notReady();
    if (notReady) throw notReady;
    const clientMsgId = this._nextMsgId();
    const data = { action, payload: payload === undefined ? null : payload, client_msg_id: clientMsgId };
    this._sendText('action', data, this._encode('action', data));
    return clientMsgId;
  }

  /**
   * Tell the others whether this user is typing. Call it freely (on every keystroke): a frame goes
   * out only on a change, `true` is repeated at most every `typingIntervalMs` while it lasts, and
   * `false` follows by itself after `typingTimeoutMs` without a `true`.
   * @param {boolean} isTyping
   */
  setTyping(isTyping) {
    if (this._status !== 'open') return;
    this._typingWanted = Boolean(isTyping);
    if (this._typingWanted) this._arm('typingStop', this._opts.typingTimeoutMs, () => this.setTyping(false));
    else this._disarm('typingStop');
    this._flushTyping();
  }

  _flushTyping() {
    if (this._status !== 'open') return;
    const now = this._now();
    const due =
      this._typingWanted !== this._typingSent ||
      (this._typingWanted && now - this._typingSentAt >= this._opts.typingIntervalMs);
    if (!due) return;
    const wait = this._typingSentAt + this._opts.typingMinGapMs - now;
    if (wait > 0) {
      if (!this._timers.has('typingFlush')) this._arm('typingFlush', wait, () => this._flushTyping());
      return;
    }
    this._disarm('typingFlush');
    const data = { is_typing: this._typingWanted };
    this._sendText('typing', data, this._encode('typing', data));
    this._typingSent = this._typingWanted;
    this._typingSentAt = now;
  }

  /**
   * Round trip to the gateway; resolves with the time it took (ms).
   * @param {{timeoutMs?: number}} [options]
   * @returns {Promise<number>}
   */
  ping(options = {}) {
    const notReady = this._notReady();
    if (notReady) return Promise.reject(notReady);
    if (this._pings.length >= this._opts.maxPendingPings) {
      return Promise.reject(new MiniAppError(ErrorCode.TOO_MANY_PENDING, 'too many pings waiting for a pong'));
    }
    const timeoutMs = options.timeoutMs ?? this._opts.pongTimeoutMs;
    return new Promise((resolve, reject) => {
      /** @type {PendingPing} */
      const ping = { resolve, reject, sentAt: this._now(), timer: null };
      ping.timer = this._setTimer(() => {
        const at = this._pings.indexOf(ping);
        if (at >= 0) this._pings.splice(at, 1);
        reject(new MiniAppError(ErrorCode.TIMEOUT, `no pong within ${timeoutMs} ms`));
      }, timeoutMs);
      this._pings.push(ping);
      this._sendText('ping', {}, this._encode('ping', {}));
    });
  }

  _scheduleHeartbeat() {
    if (this._opts.heartbeatMs <= 0) return;
    const gen = this._socketGen;
    this._arm('heartbeat', this._opts.heartbeatMs, () => {
      this.ping({ timeoutMs: this._opts.pongTimeoutMs }).then(
        () => {
          if (gen === this._socketGen && this._status === 'open') this._scheduleHeartbeat();
        },
        (/** @type {MiniAppError} */ err) => {
          if (gen !== this._socketGen || this._status !== 'open') return;
          // A socket that cannot answer a ping is dead even if the browser has not noticed yet.
          if (err.code === ErrorCode.TIMEOUT) this._dropSocket('reconnect', 'no pong');
          else this._scheduleHeartbeat();
        },
      );
    });
  }

  // --- Token refresh ---

  _scheduleRefresh() {
    this._disarm('refresh');
    if (!this._getToken || this._tokenExp === null || this._status !== 'open') return;
    const remainingMs = this._tokenExp * 1000 - this._now();
    const margin = Math.min(this._opts.refreshBeforeMs, Math.max(0, remainingMs / 2));
    this._arm('refresh', Math.max(0, remainingMs - margin), () => void this._refreshToken());
  }

  _retryRefresh() {
    if (this._getToken && this._status === 'open') {
      this._arm('refresh', this._opts.refreshRetryMs, () => void this._refreshToken());
    }
  }

  async _refreshToken() {
    const gen = this._socketGen;
    let token;
    try {
      token = await /** @type {() => string | Promise<string>} */ (this._getToken)();
      if (typeof token !== 'string' || !token) throw new TypeError('getToken() gave no token');
    } catch (err) {
      if (gen !== this._socketGen) return;
      this._emit('error', new MiniAppError(ErrorCode.TOKEN_REFRESH_FAILED, `getToken() failed: ${err}`, { cause: err }));
      this._retryRefresh();
      return;
    }
    if (gen !== this._socketGen || this._status !== 'open') return;
    this._authInFlight = { token };
    const data = { token };
    this._sendText('auth', data, this._encode('auth', data));
    this._arm('authWait', this._opts.authTimeoutMs, () => {
      this._authInFlight = null;
      this._emit('error', new MiniAppError(ErrorCode.TIMEOUT, 'no answer to the token refresh'));
      this._retryRefresh();
    });
  }

  // --- Plumbing ---

  /** @returns {MiniAppError | null} */
  _notReady() {
    if (this._status === 'open') return null;
    if (this._status === 'closed') return new MiniAppError(ErrorCode.CLOSED, 'client closed');
    return new MiniAppError(ErrorCode.NOT_CONNECTED, `not connected (${this._status})`);
  }

  _nextMsgId() {
    this._msgSeq = (this._msgSeq + 1) % Number.MAX_SAFE_INTEGER;
    return `${this._msgPrefix}-${this._msgSeq}`;
  }

  /**
   * One frame as text, refused here when the gateway would close the socket for its size (1009).
   * @param {string} type
   * @param {unknown} data
   */
  _encode(type, data) {
    let text;
    try {
      text = JSON.stringify({ type, data });
    } catch (err) {
      throw new MiniAppError(ErrorCode.INVALID_ARGUMENT, `not JSON-serialisable: ${err}`, { cause: err });
    }
    if (exceedsBytes(text, this._opts.maxFrameBytes)) {
      throw new MiniAppError(ErrorCode.FRAME_TOO_LARGE, `a ${type} frame over ${this._opts.maxFrameBytes} bytes`);
    }
    return text;
  }

  /**
   * @param {string} type
   * @param {unknown} data
   * @param {string} text
   */
  _sendText(type, data, text) {
    this._ws.send(text);
    if (this._listening('frame')) this._emit('frame', { direction: 'out', type, data, raw: text });
  }

  /**
   * (Re)start the named timer.
   * @param {string} name
   * @param {number} ms
   * @param {() => void} fn
   */
  _arm(name, ms, fn) {
    this._disarm(name);
    // Timers overflow past 2^31-1 ms and fire at once; a far expiry only needs a later look.
    const handle = this._setTimer(() => {
      if (this._timers.get(name) !== handle) return;
      this._timers.delete(name);
      fn();
    }, Math.min(Math.max(0, ms), 2_147_483_647));
    this._timers.set(name, handle);
  }

  /** @param {string} name */
  _disarm(name) {
    const handle = this._timers.get(name);
    if (handle !== undefined) {
      this._clearTimer(handle);
      this._timers.delete(name);
    }
  }

  _clearAllTimers() {
    for (const name of Array.from(this._timers.keys())) this._disarm(name);
  }
}
