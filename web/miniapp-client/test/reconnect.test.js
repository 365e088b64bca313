import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { backoffDelay, closeAction } from '../miniapp-client.js';
import { FakeSocket, connectedClient, makeClient, makeToken, record } from './fakes.js';

describe('backoffDelay', () => {
  test('doubles from the base and stops at the cap', () => {
    const mid = () => 0.5; // no jitter
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5, 6, 7, 8, 20].map((n) => backoffDelay(n, { base: 500, max: 30_000, random: mid })),
      [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000, 30_000],
    );
  });

  test('jitter stays within ±20%', () => {
    for (const attempt of [0, 3, 10]) {
      const plain = backoffDelay(attempt, { random: () => 0.5 });
      const low = backoffDelay(attempt, { random: () => 0 });
      const high = backoffDelay(attempt, { random: () => 0.999999 });
      assert.equal(low, Math.round(plain * 0.8));
      assert.ok(high <= Math.round(plain * 1.2) && high > plain * 1.19);
    }
    for (let i = 0; i < 1000; i++) {
      const d = backoffDelay(2);
      assert.ok(d >= 1600 && d <= 2400, `${d}`);
    }
  });
});

describe('closeAction', () => {
  test('reconnects on transient codes, at once on 1012, never on refusals', () => {
    const table = {
      1000: 'reconnect', 1001: 'reconnect', 1005: 'reconnect', 1006: 'reconnect', 1011: 'reconnect',
      1012: 'reconnect_now', 1013: 'reconnect', 1014: 'reconnect', 1015: 'reconnect',
      1002: 'stop', 1003: 'stop', 1007: 'stop', 1008: 'stop', 1009: 'stop',
      4000: 'stop', 4001: 'stop', 4003: 'stop', 4029: 'stop', 4400: 'stop', 4999: 'stop',
    };
    for (const [code, expected] of Object.entries(table)) assert.equal(closeAction(Number(code)), expected, code);
  });
});

describe('reconnecting', () => {
  test('after 1006 the delays grow with each failed attempt, each socket with a fresh token', async () => {
    let n = 0;
    const getToken = async () => makeToken({ sub: 'alice', exp: 1_800_000_000, n: ++n });
    const { client, clock, socket } = await connectedClient({ getToken, heartbeatMs: 0 });
    const reconnecting = record(client, 'reconnecting');
    socket.serverClose(1006);
    for (let i = 0; i < 5; i++) {
      const delay = reconnecting.at(-1).delayMs;
      const sockets = FakeSocket.all.length;
      await clock.advance(delay - 1);
      assert.equal(FakeSocket.all.length, sockets, 'not before the delay');
      await clock.advance(1);
      assert.equal(FakeSocket.all.length, sockets + 1);
      FakeSocket.last.serverClose(1006);
    }
    assert.deepEqual(reconnecting.map((r) => r.delayMs), [500, 1000, 2000, 4000, 8000, 16_000]);
    assert.equal(n, 5, 'getToken() once per new socket');
    const tokens = FakeSocket.all.slice(1).map((s) => s.token);
    assert.equal(new Set(tokens).size, 5);
    assert.equal(client.status, 'reconnecting');
  });

  test('1012 reconnects at once; a connection that stayed up resets the backoff', async () => {
    const { client, clock, socket } = await connectedClient({ heartbeatMs: 0, stableAfterMs: 10_000 });
    const reconnecting = record(client, 'reconnecting');
    socket.serverClose(1012, 'service restart');
    assert.equal(reconnecting[0].delayMs, 0);
    await clock.advance(0);
    assert.equal(FakeSocket.all.length, 2);
    FakeSocket.last.serverClose(1006); // the next replica is not there yet
    assert.equal(reconnecting[1].delayMs, 500);
    await clock.advance(500);
    FakeSocket.last.connected();
    await clock.advance(10_000);
    FakeSocket.last.serverClose(1012);
    assert.equal(reconnecting[2].delayMs, 0, 'a stable connection starts over');
    await clock.advance(0);
    const events = record(client, 'connected');
    FakeSocket.last.connected({ state: { fresh: true }, version: 9 });
    assert.equal(events[0].reconnected, true);
    assert.deepEqual(client.state, { fresh: true });
  });

  test('1001, 1011 and 1013 reconnect with backoff', async () => {
    for (const code of [1001, 1011, 1013]) {
      const { client, socket } = await connectedClient({ heartbeatMs: 0 });
      const reconnecting = record(client, 'reconnecting');
      socket.serverClose(code);
      assert.equal(reconnecting[0].delayMs, 500, `${code}`);
      assert.equal(client.status, 'reconnecting');
    }
  });

  for (const [code, errorCode, reason] of [
    [4001, 'unauthorized', 'token expired'],
    [4003, 'forbidden', 'not a member of this session'],
    [4400, 'bad_session_id', 'malformed session id'],
    [4029, 'session_full', 'session full'],
    [1008, 'policy_violation', 'sustained rate abuse'],
    [1009, 'message_too_big', 'frame too big'],
  ]) {
    test(`${code} ends the client without reconnecting`, async () => {
      const { client, clock, socket } = await connectedClient();
      const closed = record(client, 'closed');
      const errors = record(client, 'error');
      socket.serverClose(code, reason);
      await clock.advance(120_000);
      assert.equal(FakeSocket.all.length, 1);
      assert.equal(client.status, 'closed');
      assert.equal(closed.length, 1);
      assert.equal(closed[0].code, code);
      assert.equal(closed[0].reason, reason);
      assert.equal(closed[0].willReconnect, false);
      assert.equal(closed[0].error.code, errorCode);
      assert.equal(errors[0].closeCode, code);
      assert.deepEqual(clock.pending(), [], 'no timer left');
    });
  }

  test('a refusal at the handshake rejects connect()', async () => {
    const { client } = makeClient();
    const opened = client.connect();
    FakeSocket.last.serverClose(4001, 'token expired');
    await assert.rejects(opened, { code: 'unauthorized', closeCode: 4001, reason: 'token expired' });
  });

  test('connect() keeps waiting through transient failures', async () => {
    const { client, clock } = makeClient({ heartbeatMs: 0 });
    const opened = client.connect();
    FakeSocket.last.serverClose(1006);
    await clock.advance(500);
    FakeSocket.last.serverClose(1013, 'try again later');
    await clock.advance(1000);
    FakeSocket.last.connected({ version: 3 });
    assert.equal((await opened).version, 3);
  });

  test('close() by the user never reconnects and clears every timer', async () => {
    const { client, clock, socket } = await connectedClient();
    const closed = record(client, 'closed');
    client.close();
    assert.deepEqual(socket.closedByClient, { code: 1000, reason: '' });
    await clock.advance(120_000);
    assert.equal(FakeSocket.all.length, 1);
    assert.equal(closed[0].byUser, true);
    assert.equal(client.status, 'closed');
    assert.deepEqual(clock.pending(), []);
  });

  test('close() while waiting to reconnect cancels the reconnect', async () => {
    const { client, clock, socket } = await connectedClient();
    socket.serverClose(1006);
    client.close();
    await clock.advance(60_000);
    assert.equal(FakeSocket.all.length, 1);
  });

  test('close() while getToken() is pending opens no socket', async () => {
    let release;
    const getToken = () => new Promise((resolve) => (release = resolve));
    const { client, clock, socket } = await connectedClient({ getToken, heartbeatMs: 0 });
    socket.serverClose(1012);
    await clock.advance(0);
    client.close();
    release(makeToken({ sub: 'alice', exp: 1_800_000_000 }));
    await clock.advance(1000);
    assert.equal(FakeSocket.all.length, 1);
  });

  test('no connected frame in time: the socket is dropped and retried', async () => {
    const { client, clock } = makeClient({ connectTimeoutMs: 15_000 });
    void client.connect();
    await clock.advance(15_000);
    assert.ok(FakeSocket.all[0].closedByClient);
    await clock.advance(500);
    assert.equal(FakeSocket.all.length, 2);
  });

  test('an error with no close event after it counts as a 1006 close', async () => {
    const { client, clock } = makeClient({ errorCloseMs: 1000 });
    const closed = record(client, 'closed');
    void client.connect();
    FakeSocket.last.fail();
    await clock.advance(999);
    assert.equal(closed.length, 0);
    await clock.advance(1);
    assert.deepEqual([closed[0].code, closed[0].willReconnect], [1006, true]);
    await clock.advance(500);
    assert.equal(FakeSocket.all.length, 2);
  });

  test('an error followed by its close is one close', async () => {
    const { client, clock } = makeClient();
    const closed = record(client, 'closed');
    void client.connect();
    FakeSocket.last.fail();
    FakeSocket.last.serverClose(1006);
    await clock.advance(5000);
    assert.equal(closed.length, 1);
    assert.equal(closed[0].delayMs, 500);
    assert.equal(FakeSocket.all.length, 2);
  });

  test('a heartbeat without pong drops the socket and reconnects', async () => {
    const { clock, socket } = await connectedClient({ heartbeatMs: 30_000, pongTimeoutMs: 10_000 });
    await clock.advance(30_000);
    assert.equal(socket.sentOf('ping').length, 1);
    socket.receive('pong', {});
    await clock.advance(30_000);
    assert.equal(socket.sentOf('ping').length, 2);
    await clock.advance(10_000);
    assert.ok(socket.closedByClient, 'dead socket dropped');
    await clock.advance(500);
    assert.equal(FakeSocket.all.length, 2);
  });
});
