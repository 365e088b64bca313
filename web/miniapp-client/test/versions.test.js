import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { FakeSocket, connectedClient, flush, makeClient, record } from './fakes.js';

describe('state and version ordering', () => {
  test('connected sets state, version, peers and identity', async () => {
    const { client } = makeClient();
    const connected = record(client, 'connected');
    const opened = client.connect();
    assert.equal(client.status, 'connecting');
    assert.match(FakeSocket.last.url, /^ws:\/\/gw\.test\/ws\/miniapp\/s1\?token=/);
    FakeSocket.last.connected({
      state: { n: 1 },
      version: 7,
      peers: [
        { user_id: 'alice', connection_id: 'c-me' },
        { user_id: 'bob', connection_id: 'c-bob' },
      ],
    });
    const event = await opened;
    assert.equal(client.status, 'open');
    assert.deepEqual(client.state, { n: 1 });
    assert.equal(client.version, 7);
    assert.equal(client.connectionId, 'c-me');
    assert.equal(client.userId, 'alice');
    assert.deepEqual(
      client.peers.map((p) => p.connectionId),
      ['c-me', 'c-bob'],
    );
    assert.equal(event.reconnected, false);
    assert.equal(connected.length, 1);
  });

  test('updates apply in version order', async () => {
    const { client, socket } = await connectedClient({}, { state: { a: 1, b: { c: 1 } }, version: 3 });
    const updates = record(client, 'state_update');
    socket.receive('state_update', { patch: { a: 2 }, version: 4, source: 'server' });
    socket.receive('state_update', { patch: { b: { c: null, d: [1] } }, version: 5, source: 'peer', user_id: 'bob', connection_id: 'c-bob' });
    assert.deepEqual(client.state, { a: 2, b: { d: [1] } });
    assert.equal(client.version, 5);
    assert.deepEqual(
      updates.map((u) => [u.version, u.source, u.userId]),
      [
        [4, 'server', null],
        [5, 'peer', 'bob'],
      ],
    );
  });

  test('a stale or duplicate version is ignored', async () => {
    const { client, socket } = await connectedClient({}, { state: { a: 1 }, version: 5 });
    const updates = record(client, 'state_update');
    socket.receive('state_update', { patch: { a: 'old' }, version: 5, source: 'server' });
    socket.receive('state_update', { patch: { a: 'older' }, version: 2, source: 'server' });
    assert.deepEqual(client.state, { a: 1 });
    assert.equal(client.version, 5);
    assert.equal(updates.length, 0);
    assert.equal(FakeSocket.all.length, 1);
    assert.equal(socket.closedByClient, null);
  });

  test('a gap resynchronises at once: the socket is dropped and the next connected replaces the state', async () => {
    const { client, socket, clock } = await connectedClient({}, { state: { a: 1 }, version: 5 });
    const resyncs = record(client, 'resync');
    socket.receive('state_update', { patch: { a: 9 }, version: 7, source: 'server' });
    assert.deepEqual(client.state, { a: 1 }, 'the gapped patch is not applied');
    assert.equal(resyncs.length, 1);
    assert.ok(socket.closedByClient, 'the old socket is closed');
    assert.equal(client.status, 'reconnecting');
    await clock.advance(0);
    assert.equal(FakeSocket.all.length, 2, 'reconnects without a delay');
    FakeSocket.last.connected({ state: { a: 9, b: 2 }, version: 7 });
    assert.deepEqual(client.state, { a: 9, b: 2 });
    assert.equal(client.version, 7);
    // The old socket is detached: a late frame on it changes nothing.
    socket.receive('state_update', { patch: { a: 'late' }, version: 8, source: 'server' });
    assert.equal(client.version, 7);
  });

  test('version_conflict naming a newer version waits for those versions instead of resyncing', async () => {
    const { client, socket, clock } = await connectedClient({ updateTimeoutMs: 0, heartbeatMs: 0 }, { state: {}, version: 5 });
    const resyncs = record(client, 'resync');
    const refused = client.update({ a: 1 }).catch((e) => e);
    const id = socket.sentOf('state_update')[0].data.client_msg_id;
    // The error can overtake the update it conflicted with.
    socket.receive('error', { code: 'version_conflict', message: 'stale', client_msg_id: id, version: 6 });
    const err = await refused;
    assert.equal(err.code, 'version_conflict');
    assert.equal(err.version, 6);
    socket.receive('state_update', { patch: { b: 1 }, version: 6, source: 'server' });
    await clock.advance(60_000);
    assert.equal(resyncs.length, 0);
    assert.equal(FakeSocket.all.length, 1);
  });

  test('version_conflict resyncs when the named version never arrives', async () => {
    const { client, socket, clock } = await connectedClient({ catchUpMs: 5000, updateTimeoutMs: 0, heartbeatMs: 0 }, { version: 5 });
    const refused = client.update({ a: 1 }).catch((e) => e);
    const id = socket.sentOf('state_update')[0].data.client_msg_id;
    socket.receive('error', { code: 'version_conflict', message: 'stale', client_msg_id: id, version: 8 });
    await refused;
    await clock.advance(4999);
    assert.equal(socket.closedByClient, null);
    await clock.advance(1);
    assert.ok(socket.closedByClient, 'resynchronised');
    await clock.advance(0);
    assert.equal(FakeSocket.all.length, 2);
  });

  test('version_conflict naming an older version than we hold resyncs at once', async () => {
    const { client, socket } = await connectedClient({ updateTimeoutMs: 0 }, { version: 5 });
    const refused = client.update({ a: 1 }).catch((e) => e);
    const id = socket.sentOf('state_update')[0].data.client_msg_id;
    socket.receive('error', { code: 'version_conflict', message: 'reset?', client_msg_id: id, version: 0 });
    await refused;
    await flush();
    assert.ok(socket.closedByClient);
    assert.equal(client.status, 'reconnecting');
  });

  test('frames before connected and unknown frame types are ignored', async () => {
    const { client } = makeClient();
    void client.connect();
    const socket = FakeSocket.last;
    socket.receive('state_update', { patch: { a: 1 }, version: 1, source: 'server' });
    socket.receive('something_new', { x: 1 });
    socket.connected({ state: {}, version: 0 });
    assert.deepEqual(client.state, {});
    assert.equal(client.version, 0);
  });

  test('a frame that is not JSON is an error event, not an exception', async () => {
    const { client, socket } = await connectedClient();
    const errors = record(client, 'error');
    socket.onmessage({ data: '{not json' });
    assert.equal(errors[0].code, 'bad_server_frame');
    assert.equal(client.status, 'open');
  });
});
