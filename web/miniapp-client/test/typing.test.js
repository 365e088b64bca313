import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { connectedClient, record } from './fakes.js';

const opts = { heartbeatMs: 0, typingIntervalMs: 2000, typingMinGapMs: 250, typingTimeoutMs: 5000 };
const typingFrames = (socket) => socket.sentOf('typing').map((f) => f.data.is_typing);

describe('setTyping()', () => {
  test('sends only on change, and repeats true at most every 2 s while typing', async () => {
    const { client, clock, socket } = await connectedClient(opts);
    // A keystroke every 100 ms for 10 s.
    for (let t = 0; t < 10_000; t += 100) {
      client.setTyping(true);
      await clock.advance(100);
    }
    const frames = typingFrames(socket);
    assert.ok(frames.every((v) => v === true));
    assert.ok(frames.length >= 5 && frames.length <= 6, `${frames.length} frames`);
    client.setTyping(false);
    assert.deepEqual(typingFrames(socket).slice(-1), [false]);
  });

  test('stops by itself after the typing timeout', async () => {
    const { client, clock, socket } = await connectedClient(opts);
    client.setTyping(true);
    await clock.advance(4999);
    assert.deepEqual(typingFrames(socket), [true]);
    await clock.advance(1);
    assert.deepEqual(typingFrames(socket), [true, false]);
  });

  test('rapid toggles are held to the minimum gap, and the last wish wins', async () => {
    const { client, clock, socket } = await connectedClient(opts);
    for (let i = 0; i < 50; i++) client.setTyping(i % 2 === 0);
    client.setTyping(false);
    assert.deepEqual(typingFrames(socket), [true]);
    await clock.advance(250);
    assert.deepEqual(typingFrames(socket), [true, false]);
    await clock.advance(10_000);
    assert.deepEqual(typingFrames(socket), [true, false]);
  });

  test('never above 4 frames a second however it is called', async () => {
    const { client, clock, socket } = await connectedClient(opts);
    for (let t = 0; t < 10_000; t += 10) {
      client.setTyping(Math.random() < 0.5);
      await clock.advance(10);
    }
    assert.ok(socket.sentOf('typing').length <= 41, `${socket.sentOf('typing').length}`);
  });
});

describe('presence', () => {
  test('joined, typing and left keep the peer list', async () => {
    const { client, socket } = await connectedClient(opts);
    const peers = record(client, 'peers');
    const presence = record(client, 'presence');
    socket.receive('presence', { event: 'joined', user_id: 'bob', connection_id: 'c-bob', connection_count: 2 });
    socket.receive('presence', { event: 'typing', user_id: 'bob', connection_id: 'c-bob', connection_count: 2, is_typing: true });
    assert.deepEqual(client.peers.find((p) => p.connectionId === 'c-bob'), { userId: 'bob', connectionId: 'c-bob', typing: true });
    assert.equal(client.connectionCount, 2);
    socket.receive('presence', { event: 'left', user_id: 'bob', connection_id: 'c-bob', connection_count: 1 });
    // A typing relayed after its left must not bring the peer back.
    socket.receive('presence', { event: 'typing', user_id: 'bob', connection_id: 'c-bob', connection_count: 1, is_typing: false });
    assert.deepEqual(client.peers.map((p) => p.connectionId), ['c-me']);
    assert.deepEqual(presence.map((p) => p.event), ['joined', 'typing', 'left', 'typing']);
    assert.equal(peers.length, 3);
  });
});
