import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { FakeSocket, connectedClient, flush, makeClient, record } from './fakes.js';

/** The client_msg_id of the n-th state_update the client sent. */
const msgId = (socket, n = 0) => socket.sentOf('state_update')[n].data.client_msg_id;

describe('update()', () => {
  test('sends base_version and a fresh client_msg_id, resolves on its echo', async () => {
    const { client, socket } = await connectedClient({}, { state: { a: 1 }, version: 4 });
    const done = client.update({ b: 2 });
    const second = client.update({ c: 3 });
    const [first, next] = socket.sentOf('state_update');
    assert.equal(first.data.base_version, 4);
    assert.deepEqual(first.data.patch, { b: 2 });
    assert.notEqual(first.data.client_msg_id, next.data.client_msg_id);
    socket.receive('state_update', {
      patch: { b: 2 }, version: 5, source: 'peer', user_id: 'alice', connection_id: 'c-me', client_msg_id: first.data.client_msg_id,
    });
    assert.deepEqual(await done, { version: 5, clientMsgId: first.data.client_msg_id });
    assert.deepEqual(client.state, { a: 1, b: 2 });
    assert.equal(client.pendingCount, 1);
    second.catch(() => {});
  });

  test('an echo from another connection with the same client_msg_id does not resolve ours', async () => {
    const { client, socket } = await connectedClient({}, { version: 0 });
    let settled = false;
    void client.update({ a: 1 }).then(() => (settled = true));
    socket.receive('state_update', {
      patch: { x: 1 }, version: 1, source: 'peer', user_id: 'bob', connection_id: 'c-bob', client_msg_id: msgId(socket),
    });
    await flush();
    assert.equal(settled, false);
    assert.equal(client.pendingCount, 1);
  });

  test("rejects with the server's error, keeping code, message and version", async () => {
    const { client, socket } = await connectedClient({}, { version: 2 });
    const errors = record(client, 'error');
    const done = client.update({ big: 'x' });
    socket.receive('error', { code: 'state_too_large', message: 'state would be too big', client_msg_id: msgId(socket) });
    await assert.rejects(done, (err) => {
      assert.equal(err.name, 'MiniAppError');
      assert.equal(err.code, 'state_too_large');
      assert.equal(err.message, 'state would be too big');
      assert.equal(err.clientMsgId, msgId(socket));
      return true;
    });
    assert.equal(errors.length, 1, 'also surfaced as an error event');
    assert.equal(client.pendingCount, 0);
  });

  test('optimistic patches show at once, in order, on top of the authoritative state', async () => {
    const { client, socket } = await connectedClient({}, { state: { list: [1], n: 0 }, version: 1 });
    const states = record(client, 'state');
    const p1 = client.update({ n: 1 }, { optimistic: true });
    const p2 = client.update({ n: 2, m: true }, { optimistic: true });
    assert.deepEqual(client.state, { list: [1], n: 2, m: true });
    assert.deepEqual(client.authoritativeState, { list: [1], n: 0 }, 'authoritative state untouched');
    // A peer's update lands underneath the pending patches.
    socket.receive('state_update', { patch: { list: [1, 2], n: 10 }, version: 2, source: 'peer', user_id: 'bob', connection_id: 'c-bob' });
    assert.deepEqual(client.state, { list: [1, 2], n: 2, m: true });
    assert.deepEqual(states.map((s) => s.reason), ['optimistic', 'optimistic', 'update']);
    p1.catch(() => {});
    p2.catch(() => {});
  });

  test('a refused optimistic patch is dropped and the view recomputed from the others', async () => {
    const { client, socket } = await connectedClient({}, { state: { a: 0 }, version: 1 });
    const states = record(client, 'state');
    const p1 = client.update({ a: 1, b: 1 }, { optimistic: true });
    const p2 = client.update({ c: 1 }, { optimistic: true, baseVersion: null });
    assert.deepEqual(client.state, { a: 1, b: 1, c: 1 });
    socket.receive('error', { code: 'version_conflict', message: 'no', client_msg_id: msgId(socket, 0), version: 1 });
    await assert.rejects(p1, { code: 'version_conflict', version: 1 });
    assert.deepEqual(client.state, { a: 0, c: 1 });
    assert.equal(states.at(-1).reason, 'rollback');
    socket.receive('state_update', { patch: { c: 1 }, version: 2, source: 'peer', user_id: 'alice', connection_id: 'c-me', client_msg_id: msgId(socket, 1) });
    assert.deepEqual(await p2, { version: 2, clientMsgId: msgId(socket, 1) });
    assert.deepEqual(client.state, { a: 0, c: 1 });
    assert.equal(client.state, client.authoritativeState, 'no optimistic layer left');
  });

  test('the optimistic patch is what the wire carries (undefined dropped, copied)', async () => {
    const { client } = await connectedClient({}, { state: { a: 1 }, version: 0 });
    const patch = { a: undefined, b: { c: 1 } };
    void client.update(patch, { optimistic: true }).catch(() => {});
    patch.b.c = 'mutated later';
    assert.deepEqual(client.state, { a: 1, b: { c: 1 } });
  });

  test('baseVersion: null sends no base_version', async () => {
    const { client, socket } = await connectedClient({}, { version: 3 });
    void client.update({ a: 1 }, { baseVersion: null }).catch(() => {});
    assert.equal('base_version' in socket.sentOf('state_update')[0].data, false);
  });

  test('a socket that ends rejects pending updates with disconnected and rolls back', async () => {
    const { client, socket } = await connectedClient({}, { state: { a: 0 }, version: 1 });
    const done = client.update({ a: 1 }, { optimistic: true });
    socket.serverClose(1006);
    await assert.rejects(done, { code: 'disconnected' });
    assert.deepEqual(client.state, { a: 0 });
    assert.equal(client.pendingCount, 0);
  });

  test('an unanswered update times out and rolls back', async () => {
    const { client, clock } = await connectedClient({ updateTimeoutMs: 1000 }, { state: { a: 0 }, version: 1 });
    const done = client.update({ a: 1 }, { optimistic: true }).catch((e) => e);
    await clock.advance(1000);
    assert.equal((await done).code, 'timeout');
    assert.deepEqual(client.state, { a: 0 });
  });

  test('refuses what the server could not take, before sending anything', async () => {
    const { client, socket } = await connectedClient({ maxFrameBytes: 1024 });
    await assert.rejects(client.update([1, 2]), { code: 'invalid_argument' });
    await assert.rejects(client.update('x'), { code: 'invalid_argument' });
    await assert.rejects(client.update({ big: 'é'.repeat(600) }), { code: 'frame_too_large' });
    const cyclic = {};
    cyclic.self = cyclic;
    await assert.rejects(client.update(cyclic), { code: 'invalid_argument' });
    assert.equal(socket.sent.length, 0);
  });

  test('not connected: rejects with not_connected, after close() with closed', async () => {
    const { client } = makeClient();
    await assert.rejects(client.update({ a: 1 }), { code: 'not_connected' });
    void client.connect();
    FakeSocket.last.connected();
    client.close();
    await assert.rejects(client.update({ a: 1 }), { code: 'closed' });
  });
});

describe('sendAction() and ping()', () => {
  test('sendAction sends the action and resolves with its client_msg_id', async () => {
    const { client, socket } = await connectedClient();
    const id = await client.sendAction('vote', { option: 2 });
    assert.deepEqual(socket.sentOf('action')[0].data, { action: 'vote', payload: { option: 2 }, client_msg_id: id });
    await assert.rejects(client.sendAction(''), { code: 'invalid_argument' });
  });

  test('peer actions arrive as action events', async () => {
    const { client, socket } = await connectedClient();
    const actions = record(client, 'action');
    socket.receive('action', { action: 'vote', payload: null, user_id: 'bob', connection_id: 'c-bob' });
    assert.deepEqual(actions, [{ action: 'vote', payload: null, userId: 'bob', connectionId: 'c-bob' }]);
  });

  test('ping resolves on pong; an unanswered ping times out', async () => {
    const { client, socket, clock } = await connectedClient({ heartbeatMs: 0 });
    const rtt = client.ping();
    await clock.advance(40);
    socket.receive('pong', {});
    assert.equal(await rtt, 40);
    const lost = client.ping({ timeoutMs: 500 }).catch((e) => e);
    await clock.advance(500);
    assert.equal((await lost).code, 'timeout');
  });
});
