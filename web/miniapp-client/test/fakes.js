// Test doubles: a virtual clock with timers, a scripted WebSocket, and a client wired to both.
// (Not a test file itself; node's runner finds nothing to run in it.)

import { MiniAppClient } from '../miniapp-client.js';

/** Virtual time: timers run only when a test advances the clock. */
export class FakeClock {
  constructor(start = 1_700_000_000_000) {
    this.time = start;
    this.seq = 0;
    /** @type {Map<number, {at: number, fn: () => void, seq: number}>} */
    this.timers = new Map();
    this.now = () => this.time;
    this.setTimeout = (/** @type {() => void} */ fn, /** @type {number} */ ms) => {
      const id = ++this.seq;
      this.timers.set(id, { at: this.time + Math.max(0, ms), fn, seq: id });
      return id;
    };
    this.clearTimeout = (/** @type {number} */ id) => {
      this.timers.delete(id);
    };
  }

  /** Delays of the timers now armed, from now, soonest first. */
  pending() {
    return [...this.timers.values()].map((t) => t.at - this.time).sort((a, b) => a - b);
  }

  /** Move time forward by `ms`, running each timer that falls due (and the promises it settles). */
  async advance(ms) {
    const end = this.time + ms;
    for (;;) {
      await flush();
      let next = null;
      for (const timer of this.timers.values()) {
        if (timer.at <= end && (next === null || timer.at < next.at || (timer.at === next.at && timer.seq < next.seq))) {
          next = timer;
        }
      }
      if (next === null) break;
      this.timers.delete(next.seq);
      this.time = next.at;
      next.fn();
    }
    this.time = end;
    await flush();
  }
}

/** Let pending promise callbacks run. */
export async function flush() {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** A WebSocket the test plays the server of. Every instance is kept in `FakeSocket.all`. */
export class FakeSocket {
  /** @type {FakeSocket[]} */
  static all = [];

  /** @param {string} url */
  constructor(url) {
    this.url = url;
    /** @type {{type: string, data: any}[]} */
    this.sent = [];
    /** @type {{code?: number, reason?: string} | null} */
    this.closedByClient = null;
    this.onmessage = null;
    this.onclose = null;
    this.onerror = null;
    FakeSocket.all.push(this);
  }

  static get last() {
    return FakeSocket.all[FakeSocket.all.length - 1];
  }

  get token() {
    return new URL(this.url).searchParams.get('token');
  }

  /** @param {string} text */
  send(text) {
    if (this.closedByClient) throw new Error('send on a closed fake socket');
    this.sent.push(JSON.parse(text));
  }

  /** @param {number} [code] @param {string} [reason] */
  close(code, reason) {
    this.closedByClient = { code, reason };
  }

  /** Frames of `type` the client sent. */
  sentOf(type) {
    return this.sent.filter((f) => f.type === type);
  }

  /** Deliver a server frame. */
  receive(type, data) {
    this.onmessage?.({ data: JSON.stringify({ type, data }) });
  }

  /** A socket error (browsers follow it with a close event; some implementations do not). */
  fail() {
    this.onerror?.({ type: 'error' });
  }

  /** The server (or the network) closes the socket. */
  serverClose(code, reason = '') {
    this.onclose?.({ code, reason, wasClean: code !== 1006 });
  }

  /** The gateway's `connected` frame. */
  connected({ state = {}, version = 0, connectionId = 'c-me', userId = 'alice', peers } = {}) {
    const list = peers ?? [{ user_id: userId, connection_id: connectionId }];
    this.receive('connected', {
      session_id: 's1',
      user_id: userId,
      connection_id: connectionId,
      connection_count: list.length,
      peers: list,
      state,
      version,
    });
  }
}

/** An unsigned JWT-shaped token (the client only reads `exp`). */
export function makeToken(claims) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  return `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}.sig`;
}

/** A client on a fake clock and fake sockets; `random` is 0.5 (no jitter) unless given. */
export function makeClient(options = {}) {
  FakeSocket.all = [];
  const clock = options.clock ?? new FakeClock();
  const client = new MiniAppClient({
    url: 'ws://gw.test',
    sessionId: 's1',
    token: options.token ?? makeToken({ sub: 'alice', exp: Math.floor(clock.time / 1000) + 3600 }),
    WebSocket: FakeSocket,
    now: clock.now,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 0.5,
    ...options,
  });
  return { client, clock };
}

/** A client already through its first `connected` (state and version as given). */
export async function connectedClient(options = {}, connected = {}) {
  const made = makeClient(options);
  const opened = made.client.connect();
  FakeSocket.last.connected(connected);
  await opened;
  return { ...made, socket: FakeSocket.last };
}

/** Record every event of `type` the client emits. */
export function record(client, type) {
  const events = [];
  client.on(type, (event) => events.push(event));
  return events;
}
