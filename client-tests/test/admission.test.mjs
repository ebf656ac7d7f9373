// Section 1 / 9: `Server at capacity` (MAX_CONNECTIONS) and `Too many connections from this IP`
// (MAX_CONNECTIONS_PER_IP), and that a freed slot is given to the next client.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { connect, connectError, emitAck, signToken, startServer, waitFor } from './helpers.mjs';

const servers = [];
after(() => Promise.all(servers.map((s) => s.stop())));

const opts = (userId, more = {}) => ({ auth: { token: signToken({ userId, projects: [1] }) }, ...more });

// The server needs a moment to process a client's disconnect; `user_left` seen by another
// member of a room joined by the leaver tells that it has. A slot is then free; a few
// quick retries tolerate bookkeeping that finishes just after that event.
async function connectWhenFree(server, o, expectedRefusal) {
  for (let i = 0; ; i++) {
    try {
      return await connect(server, o);
    } catch (err) {
      if (err.message !== expectedRefusal || i >= 20) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

describe('MAX_CONNECTIONS=2', () => {
  test('a third connection is refused; after one disconnects a new one is accepted', async () => {
    const server = await startServer({ MAX_CONNECTIONS: 2 });
    servers.push(server);
    const a = await connect(server, opts('cap-a'));
    const b = await connect(server, opts('cap-b', { transports: ['polling'] }));
    assert.equal(await connectError(server, opts('cap-c')), 'Server at capacity');
    assert.equal(await connectError(server, opts('cap-c', { transports: ['polling'] })), 'Server at capacity');

    assert.equal((await emitAck(a, 'join_room', 'project:1:comments')).success, true);
    assert.equal((await emitAck(b, 'join_room', 'project:1:comments')).success, true);
    const left = waitFor(a, 'user_left', 3000, (e) => e?.roomId === 'project:1:comments');
    b.close();
    assert.deepEqual(await left, { userId: 'cap-b', roomId: 'project:1:comments' });

    const c = await connectWhenFree(server, opts('cap-c'), 'Server at capacity');
    assert.equal(c.connected, true);
    assert.equal(await connectError(server, opts('cap-d')), 'Server at capacity');
    a.close();
    c.close();
  });
});

describe('MAX_CONNECTIONS_PER_IP=2', () => {
  test('a third connection from 127.0.0.1 is refused; after one disconnects a new one is accepted', async () => {
    const server = await startServer({ MAX_CONNECTIONS_PER_IP: 2 });
    servers.push(server);
    const a = await connect(server, opts('ip-a'));
    const b = await connect(server, opts('ip-b', { transports: ['polling'] }));
    assert.equal(await connectError(server, opts('ip-c')), 'Too many connections from this IP');
    assert.equal(await connectError(server, opts('ip-c', { transports: ['polling'] })), 'Too many connections from this IP');

    assert.equal((await emitAck(a, 'join_room', 'project:1:comments')).success, true);
    assert.equal((await emitAck(b, 'join_room', 'project:1:comments')).success, true);
    const left = waitFor(a, 'user_left', 3000, (e) => e?.roomId === 'project:1:comments');
    b.close();
    assert.deepEqual(await left, { userId: 'ip-b', roomId: 'project:1:comments' });

    const c = await connectWhenFree(server, opts('ip-c'), 'Too many connections from this IP');
    assert.equal(c.connected, true);
    assert.equal(await connectError(server, opts('ip-d')), 'Too many connections from this IP');
    a.close();
    c.close();
  });
});
