// Section 1 / 10: where the token is read from (auth.token, Authorization: Bearer, ?token=),
// in that order; the first source present is used and a bad token there is not retried.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { apiEmit, connect, connectError, signToken, startServer, waitFor } from './helpers.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(() => server?.stop());

const good = (userId) => signToken({ userId });
const BAD = signToken({ userId: 'mallory' }, { secret: 'not-the-server-secret' });
const bearer = (t) => ({ Authorization: `Bearer ${t}` });

// Proves who the socket is: an event sent to notifications:{userId} reaches it.
async function assertIdentity(socket, userId) {
  const seen = waitFor(socket, 'whoami', 3000);
  const res = await apiEmit(server.url, { rooms: [`notifications:${userId}`], event: 'whoami', data: { userId } }, server.apiKey);
  assert.equal(res.status, 202);
  assert.deepEqual(await seen, { userId });
}

for (const transport of ['websocket', 'polling']) {
  describe(`each source alone over ${transport}`, () => {
    const transports = [transport];

    test('auth.token', async () => {
      const socket = await connect(server, { transports, auth: { token: good('src-auth') } });
      assert.equal(socket.io.engine.transport.name, transport);
      await assertIdentity(socket, 'src-auth');
      socket.close();
    });

    test('Authorization: Bearer header', async () => {
      const socket = await connect(server, { transports, extraHeaders: bearer(good('src-header')) });
      assert.equal(socket.io.engine.transport.name, transport);
      await assertIdentity(socket, 'src-header');
      socket.close();
    });

    test('token query parameter', async () => {
      const socket = await connect(server, { transports, query: { token: good('src-query') } });
      assert.equal(socket.io.engine.transport.name, transport);
      await assertIdentity(socket, 'src-query');
      socket.close();
    });
  });
}

describe('order of the sources', () => {
  test('auth.token wins over header and query', async () => {
    const socket = await connect(server, {
      auth: { token: good('order-auth') },
      extraHeaders: bearer(good('order-header')),
      query: { token: good('order-query') },
    });
    await assertIdentity(socket, 'order-auth');
    socket.close();
  });

  test('header wins over query', async () => {
    const socket = await connect(server, {
      transports: ['polling'],
      extraHeaders: bearer(good('order-header2')),
      query: { token: good('order-query2') },
    });
    await assertIdentity(socket, 'order-header2');
    socket.close();
  });

  test('bad auth.token is not retried with a good header', async () => {
    for (const transports of [['websocket'], ['polling']]) {
      const msg = await connectError(server, { transports, auth: { token: BAD }, extraHeaders: bearer(good('h')) });
      assert.equal(msg, 'Authentication failed');
    }
  });

  test('bad auth.token is not retried with a good query token', async () => {
    const msg = await connectError(server, { auth: { token: BAD }, query: { token: good('q') } });
    assert.equal(msg, 'Authentication failed');
  });

  test('bad header is not retried with a good query token', async () => {
    for (const transports of [['websocket'], ['polling']]) {
      const msg = await connectError(server, { transports, extraHeaders: bearer(BAD), query: { token: good('q') } });
      assert.equal(msg, 'Authentication failed');
    }
  });

  test('expired auth.token is not retried with a good header', async () => {
    const expired = signToken({ userId: 'late', exp: Math.floor(Date.now() / 1000) - 3600 });
    const msg = await connectError(server, { auth: { token: expired }, extraHeaders: bearer(good('h')) });
    assert.equal(msg, 'Token expired');
  });
});
