import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { FakeSocket, connectedClient, flush, makeClient } from './fakes.js';

describe('bounded resources', () => {
  test('pending updates are bounded: beyond the limit new ones are refused', async () => {
    const { client, socket } = await connectedClient({ maxPending: 256, heartbeatMs: 0 });
    const all = [];
    for (let i = 0; i < 256; i++) all.push(client.update({ i }).catch((e) => e));
    await assert.rejects(client.update({ i: 256 }), { code: 'too_many_pending' });
    assert.equal(socket.sentOf('state_update').length, 256);
    const first = socket.sentOf('state_update')[0].data;
    socket.receive('state_update', { patch: first.patch, version: 1, source: 'peer', connection_id: 'c-me', user_id: 'alice', client_msg_id: first.client_msg_id });
    const next = client.update({ again: true });
    assert.equal(client.pendingCount, 256);
    next.catch(() => {});
    client.close();
    assert.equal(client.pendingCount, 0);
    const outcomes = await Promise.all(all);
    assert.deepEqual(outcomes[0], { version: 1, clientMsgId: first.client_msg_id });
    assert.ok(outcomes.slice(1).every((e) => e.code === 'closed'));
  });

  test('pings are bounded', async () => {
    const { client } = await connectedClient({ maxPendingPings: 2, heartbeatMs: 0 });
    const a = client.ping().catch(() => {});
    const b = client.ping().catch(() => {});
    await assert.rejects(client.ping(), { code: 'too_many_pending' });
    client.close();
    await Promise.all([a, b]);
  });

  test('listeners are removable', async () => {
    const { client } = makeClient();
    let calls = 0;
    const off = client.on('status', () => calls++);
    void client.connect();
    off();
    FakeSocket.last.connected();
    assert.equal(calls, 1);
    assert.equal(client._listeners.size, 0);
  });

  test('a throwing listener does not stop the client', async () => {
    const { client, socket } = await connectedClient({ heartbeatMs: 0 });
    const reported = [];
    const original = globalThis.reportError;
    globalThis.reportError = (e) => reported.push(e);
    try {
      client.on('state_update', () => {
        throw new Error('app bug');
      });
      socket.receive('state_update', { patch: { a: 1 }, version: 1, source: 'server' });
      socket.receive('state_update', { patch: { b: 1 }, version: 2, source: 'server' });
    } finally {
      globalThis.reportError = original;
    }
    assert.deepEqual(client.state, { a: 1, b: 1 });
    assert.equal(reported.length, 2);
  });

  test('a long session keeps nothing per frame and a fixed set of timers', async () => {
    const { client, clock, socket } = await connectedClient({}, { version: 0 });
    const timersAtStart = clock.timers.size;
    let version = 0;
    for (let i = 0; i < 5000; i++) {
      const done = client.update({ k: i }, { optimistic: i % 2 === 0 });
      const sent = socket.sent.at(-1).data;
      socket.receive('state_update', { patch: sent.patch, version: ++version, source: 'peer', user_id: 'alice', connection_id: 'c-me', client_msg_id: sent.client_msg_id });
      await done;
      client.setTyping(i % 3 === 0);
      socket.receive('presence', { event: 'typing', user_id: 'alice', connection_id: 'c-me', connection_count: 1, is_typing: true });
      socket.receive('action', { action: 'x', payload: i, user_id: 'bob', connection_id: 'c-bob' });
    }
    await flush();
    assert.equal(client.pendingCount, 0);
    assert.equal(client._pings.length, 0);
    assert.equal(client.version, 5000);
    assert.deepEqual(client.state, { k: 4999 });
    assert.ok(clock.timers.size <= timersAtStart + 2, `${clock.timers.size} timers`); // + typing stop/flush
    client.close();
    assert.equal(clock.timers.size, 0);
  });
});
