import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { decodeJwtPayload, tokenExpiry } from '../miniapp-client.js';
import { FakeClock, FakeSocket, connectedClient, makeToken, record } from './fakes.js';

describe('JWT payload', () => {
  test('decodes base64url payloads (unverified) and reads exp', () => {
    const token = makeToken({ sub: 'ålice/?>', exp: 1_700_000_123 });
    assert.deepEqual(decodeJwtPayload(token), { sub: 'ålice/?>', exp: 1_700_000_123 });
    assert.equal(tokenExpiry(token), 1_700_000_123);
  });

  test('garbage gives null', () => {
    for (const bad of ['', 'abc', 'a.b.c', 'a.!!!.c', makeToken({ exp: 'soon' })]) assert.equal(tokenExpiry(bad), null);
  });
});

describe('in-band token refresh', () => {
  const setup = async (ttlS, extra = {}) => {
    const clock = new FakeClock();
    const nowS = () => Math.floor(clock.time / 1000);
    const tokens = [];
    const getToken = async () => {
      const token = makeToken({ sub: 'alice', exp: nowS() + ttlS, n: tokens.length });
      tokens.push(token);
      return token;
    };
    const made = await connectedClient({ clock, getToken, heartbeatMs: 0, token: makeToken({ sub: 'alice', exp: nowS() + ttlS }), ...extra });
    return { ...made, tokens, nowS };
  };

  test('refreshes 60 s before exp and follows auth_ok to the next one', async () => {
    const { client, clock, socket, tokens, nowS } = await setup(3600);
    const authOk = record(client, 'auth_ok');
    await clock.advance(3540_000 - 1);
    assert.equal(socket.sentOf('auth').length, 0);
    await clock.advance(1);
    const [auth] = socket.sentOf('auth');
    assert.equal(auth.data.token, tokens[0]);
    socket.receive('auth_ok', { expires_at: nowS() + 3600 });
    assert.equal(authOk[0].expiresAt, nowS() + 3600);
    assert.equal(client.tokenExpiresAt, nowS() + 3600);
    await clock.advance(3540_000);
    assert.equal(socket.sentOf('auth').length, 2);
  });

  test('a short-lived token is refreshed at half its remaining life', async () => {
    const { clock, socket } = await setup(60);
    await clock.advance(29_999);
    assert.equal(socket.sentOf('auth').length, 0);
    await clock.advance(1);
    assert.equal(socket.sentOf('auth').length, 1);
  });

  test('invalid_token is surfaced and the refresh retried', async () => {
    const { client, clock, socket } = await setup(120, { refreshRetryMs: 5000 });
    const errors = record(client, 'error');
    await clock.advance(60_000);
    assert.equal(socket.sentOf('auth').length, 1);
    socket.receive('error', { code: 'invalid_token', message: 'token is for another user' });
    assert.equal(errors[0].code, 'invalid_token');
    assert.equal(client.status, 'open', 'the socket stays');
    await clock.advance(5000);
    assert.equal(socket.sentOf('auth').length, 2);
  });

  test('a getToken() failure is surfaced and retried', async () => {
    let fail = true;
    const clock = new FakeClock();
    const getToken = async () => {
      if (fail) throw new Error('offline');
      return makeToken({ sub: 'alice', exp: Math.floor(clock.time / 1000) + 3600 });
    };
    const { client, socket } = await connectedClient({
      clock, getToken, heartbeatMs: 0, refreshRetryMs: 5000,
      token: makeToken({ sub: 'alice', exp: Math.floor(clock.time / 1000) + 120 }),
    });
    const errors = record(client, 'error');
    await clock.advance(60_000);
    assert.equal(errors[0].code, 'token_refresh_failed');
    assert.equal(socket.sentOf('auth').length, 0);
    fail = false;
    await clock.advance(5000);
    assert.equal(socket.sentOf('auth').length, 1);
  });

  test('no answer to auth: timeout error and retry', async () => {
    const { client, clock, socket } = await setup(3600, { authTimeoutMs: 10_000, refreshRetryMs: 5000 });
    const errors = record(client, 'error');
    await clock.advance(3540_000);
    await clock.advance(10_000);
    assert.equal(errors[0].code, 'timeout');
    await clock.advance(5000);
    assert.equal(socket.sentOf('auth').length, 2);
  });

  test('a refresh that does not move the expiry is retried later, not in a tight loop', async () => {
    const { client, clock, socket } = await setup(3600, { refreshRetryMs: 5000 });
    const exp = client.tokenExpiresAt;
    await clock.advance(3540_000);
    socket.receive('auth_ok', { expires_at: exp });
    await clock.advance(4999);
    assert.equal(socket.sentOf('auth').length, 1);
    await clock.advance(1);
    assert.equal(socket.sentOf('auth').length, 2);
  });

  test('an expired first token is replaced by getToken() before connecting', async () => {
    const clock = new FakeClock();
    const fresh = makeToken({ sub: 'alice', exp: Math.floor(clock.time / 1000) + 3600 });
    const { makeClient } = await import('./fakes.js');
    const { client } = makeClient({
      clock, getToken: async () => fresh, token: makeToken({ sub: 'alice', exp: Math.floor(clock.time / 1000) - 1 }),
    });
    void client.connect();
    await clock.advance(0);
    assert.equal(FakeSocket.last.token, fresh);
  });
});
