// Types of miniapp-client.js (the Ikiro MiniApp protocol client, DESIGN section 5).

export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  NO_STATUS: 1005;
  ABNORMAL: 1006;
  POLICY_VIOLATION: 1008;
  MESSAGE_TOO_BIG: 1009;
  INTERNAL_ERROR: 1011;
  SERVICE_RESTART: 1012;
  TRY_AGAIN_LATER: 1013;
  BAD_GATEWAY: 1014;
  TLS_HANDSHAKE: 1015;
  UNAUTHORIZED: 4001;
  FORBIDDEN: 4003;
  SESSION_FULL: 4029;
  BAD_SESSION_ID: 4400;
}>;

/** Codes sent by the gateway in `error` frames. */
export type ServerErrorCode =
  | 'invalid_json'
  | 'invalid_frame'
  | 'unknown_type'
  | 'rate_limited'
  | 'version_conflict'
  | 'state_too_large'
  | 'invalid_token'
  | 'unavailable'
  | 'internal_error';

/** Codes raised by the client itself. */
export type ClientErrorCode =
  | 'invalid_argument'
  | 'not_connected'
  | 'disconnected'
  | 'closed'
  | 'too_many_pending'
  | 'frame_too_large'
  | 'timeout'
  | 'token_refresh_failed'
  | 'bad_server_frame';

/** Codes of a close that ends the client (no reconnect); `closeCode` and `reason` are set. */
export type TerminalErrorCode =
  | 'unauthorized'
  | 'forbidden'
  | 'session_full'
  | 'bad_session_id'
  | 'policy_violation'
  | 'message_too_big'
  | 'connection_failed'
  | 'connection_closed';

export type MiniAppErrorCode = ServerErrorCode | ClientErrorCode | TerminalErrorCode;

export declare const ErrorCode: Readonly<{
  INVALID_JSON: 'invalid_json';
  INVALID_FRAME: 'invalid_frame';
  UNKNOWN_TYPE: 'unknown_type';
  RATE_LIMITED: 'rate_limited';
  VERSION_CONFLICT: 'version_conflict';
  STATE_TOO_LARGE: 'state_too_large';
  INVALID_TOKEN: 'invalid_token';
  UNAVAILABLE: 'unavailable';
  INTERNAL_ERROR: 'internal_error';
  INVALID_ARGUMENT: 'invalid_argument';
  NOT_CONNECTED: 'not_connected';
  DISCONNECTED: 'disconnected';
  CLOSED: 'closed';
  TOO_MANY_PENDING: 'too_many_pending';
  FRAME_TOO_LARGE: 'frame_too_large';
  TIMEOUT: 'timeout';
  TOKEN_REFRESH_FAILED: 'token_refresh_failed';
  BAD_SERVER_FRAME: 'bad_server_frame';
  UNAUTHORIZED: 'unauthorized';
  FORBIDDEN: 'forbidden';
  SESSION_FULL: 'session_full';
  BAD_SESSION_ID: 'bad_session_id';
  POLICY_VIOLATION: 'policy_violation';
  MESSAGE_TOO_BIG: 'message_too_big';
  CONNECTION_FAILED: 'connection_failed';
  CONNECTION_CLOSED: 'connection_closed';
}>;

export declare class MiniAppError extends Error {
  constructor(
    code: string,
    message: string,
    extra?: { version?: number; clientMsgId?: string; closeCode?: number; reason?: string; cause?: unknown },
  );
  readonly name: 'MiniAppError';
  /** A `MiniAppErrorCode`; typed as string so codes a newer server adds still fit. */
  code: MiniAppErrorCode | (string & {});
  /** The session's current version, on `version_conflict`. */
  version?: number;
  /** The refused frame's `client_msg_id`, when it had one. */
  clientMsgId?: string;
  /** The WebSocket close code, on errors caused by a close. */
  closeCode?: number;
  reason?: string;
}

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

/** RFC 7396 JSON Merge Patch; neither argument is modified, unchanged branches are shared. */
export declare function mergePatch(target: unknown, patch: unknown): unknown;
/** The payload of a JWT, decoded without verification; null if unreadable. */
export declare function decodeJwtPayload(token: string): Record<string, unknown> | null;
/** The `exp` claim of a JWT (unix seconds), or null. */
export declare function tokenExpiry(token: string): number | null;
/** What the client does after a close it did not ask for. */
export declare function closeAction(code: number): 'reconnect_now' | 'reconnect' | 'stop';
/** `min(max, base * 2^attempt)` spread by ±jitter. */
export declare function backoffDelay(
  attempt: number,
  opts?: { base?: number; max?: number; jitter?: number; random?: () => number },
): number;

export type Status = 'idle' | 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface Peer {
  readonly userId: string;
  readonly connectionId: string;
  readonly typing: boolean;
}

/** The minimal WebSocket surface the client uses (the browser's, or a test fake). */
export interface WebSocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string; wasClean: boolean }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}

export interface MiniAppClientOptions {
  /** Origin of the gateway, `ws://host:port` or `wss://host`; `/ws/miniapp/{sessionId}` is appended. */
  url: string;
  /** `^[A-Za-z0-9_-]{1,128}$`. */
  sessionId: string;
  /** The first token; later sockets and refreshes use `getToken`. One of the two is required. */
  token?: string;
  /** Returns a fresh Supabase access token for the same user; enables in-band refresh. */
  getToken?: () => string | Promise<string>;
  WebSocket?: new (url: string) => WebSocketLike;
  /** Milliseconds since the epoch (default `Date.now`). */
  now?: () => number;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (handle: any) => void;
  /** [0, 1), for jitter (default `Math.random`). */
  random?: () => number;

  /** First reconnect delay (500). */
  backoffBaseMs?: number;
  /** Largest reconnect delay before jitter (30000). */
  backoffMaxMs?: number;
  /** Fractional spread of each delay (0.2 = ±20%). */
  backoffJitter?: number;
  /** A connection up this long resets the backoff (10000). */
  stableAfterMs?: number;
  /** Wait for the `connected` frame before giving up on a socket (15000). */
  connectTimeoutMs?: number;
  /** After a socket `error` with no `close` event this long, treat it as closed with 1006 (1000). */
  errorCloseMs?: number;
  /** Ping every this often while connected; 0 turns it off (30000). */
  heartbeatMs?: number;
  /** A ping without a pong for this long fails; for the heartbeat, the socket is dropped (10000). */
  pongTimeoutMs?: number;
  /** Updates waiting for the server at once; more are refused with `too_many_pending` (256). */
  maxPending?: number;
  maxPendingPings?: number;
  /** An update without an answer this long rejects with `timeout`; 0 waits until disconnect (30000). */
  updateTimeoutMs?: number;
  /** After a `version_conflict` naming a newer version, wait this long for it before resyncing (5000). */
  catchUpMs?: number;
  /** Refresh the token this long before its `exp` (at most half its remaining life) (60000). */
  refreshBeforeMs?: number;
  /** Retry a failed refresh after this long (5000). */
  refreshRetryMs?: number;
  /** Wait for `auth_ok` this long (10000). */
  authTimeoutMs?: number;
  /** While typing, repeat `is_typing: true` at most this often (2000). */
  typingIntervalMs?: number;
  /** Never send two typing frames closer than this (250). */
  typingMinGapMs?: number;
  /** Send `is_typing: false` after this long without `setTyping(true)` (5000). */
  typingTimeoutMs?: number;
  /** Frames over this many bytes are refused locally with `frame_too_large` (65536). */
  maxFrameBytes?: number;
}

export interface ConnectedEvent {
  sessionId: string;
  userId: string;
  connectionId: string;
  connectionCount: number;
  /** Every connection of the session, this one included. */
  peers: Peer[];
  state: JsonObject;
  version: number;
  /** False for the client's first connection, true after any reconnect. */
  reconnected: boolean;
}

export interface StateUpdateEvent {
  patch: JsonObject;
  version: number;
  source: 'peer' | 'server';
  userId: string | null;
  connectionId: string | null;
  clientMsgId: string | null;
  /** True when this confirms an `update()` of this client. */
  mine: boolean;
}

export interface StateEvent {
  /** The view: authoritative state plus pending optimistic patches. */
  state: JsonObject;
  version: number;
  reason: 'connected' | 'update' | 'optimistic' | 'rollback';
  update?: StateUpdateEvent;
}

export interface PresenceEvent {
  event: 'joined' | 'left' | 'typing';
  userId: string;
  connectionId: string;
  connectionCount: number;
  isTyping?: boolean;
}

export interface ActionEvent {
  action: string;
  payload: JsonValue;
  userId: string;
  connectionId: string;
}

export interface ClosedEvent {
  code: number;
  reason: string;
  wasClean: boolean;
  /** True only after `close()`. */
  byUser: boolean;
  willReconnect: boolean;
  delayMs: number | null;
  /** Set when the close ends the client without `close()`. */
  error?: MiniAppError;
}

export interface MiniAppEvents {
  status: { status: Status; previous: Status };
  connected: ConnectedEvent;
  state: StateEvent;
  state_update: StateUpdateEvent;
  presence: PresenceEvent;
  peers: { peers: Peer[] };
  action: ActionEvent;
  error: MiniAppError;
  closed: ClosedEvent;
  reconnecting: { attempt: number; delayMs: number; code: number; reason: string };
  resync: { reason: string; version: number };
  auth_ok: { expiresAt: number | null };
  frame: { direction: 'in' | 'out'; type: string; data: unknown; raw: string };
}

export declare class MiniAppClient {
  constructor(options: MiniAppClientOptions);
  readonly sessionId: string;
  readonly status: Status;
  /** Authoritative state with pending optimistic patches on top. Read-only. */
  readonly state: JsonObject;
  readonly authoritativeState: JsonObject;
  readonly version: number;
  readonly peers: Peer[];
  readonly pendingCount: number;
  readonly tokenExpiresAt: number | null;
  userId: string | null;
  connectionId: string | null;
  connectionCount: number;

  on<K extends keyof MiniAppEvents>(type: K, fn: (event: MiniAppEvents[K]) => void): () => void;
  off<K extends keyof MiniAppEvents>(type: K, fn: (event: MiniAppEvents[K]) => void): void;

  connect(): Promise<ConnectedEvent>;
  close(code?: number, reason?: string): void;
  update(
    patch: JsonObject,
    options?: { optimistic?: boolean; baseVersion?: number | null },
  ): Promise<{ version: number; clientMsgId: string }>;
  sendAction(action: string, payload?: JsonValue): Promise<string>;
  setTyping(isTyping: boolean): void;
  ping(options?: { timeoutMs?: number }): Promise<number>;
}
