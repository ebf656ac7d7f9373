// Issue 15, socket.io v2 clients: old mobile apps speak engine.io protocol 3 with
// socket.io-client 2.x. ALLOW_EIO3 (off by default, as Node's allowEIO3) lets them in;
// they send their token in the query string, join rooms, get acks and exchange
// broadcasts with v4 clients, over polling and websocket.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { after, before, describe, test } from 'node:test';
import { connectAs, emitAck, rawRequest, signToken, startServer, uniq, waitFor } from './helpers.mjs';

const io2 = createRequire(import.meta.url)('socket.io-client-v2');

/** A socket.io v2 client; resolves once connected, rejects with its error otherwise. */
function connectV2(server, token, transports) {
  const socket = io2(server.url, { query: token === undefined ? {} : { token }, transports, reconnection: false, forceNew: true });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('v2 client: no connect within 5 s')), 5000);
    socket.on('connect', () => {
      clearTimeout(timer);
      resolve(socket);
    });
    const fail = (err) => {
      clearTimeout(timer);
      socket.close();
      reject(typeof err === 'string' ? new Error(err) : Object.assign(new Error(err?.message ?? String(err)), { data: err }));
    };
    socket.on('error', fail);
    socket.on('connect_error', fail);
  });
}

/** A v2 emit with an ack callback (v2 has no emitWithAck or timeout). */
function ackV2(socket, event, ...args) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${event}: no ack within 3 s`)), 3000);
    socket.emit(event, ...args, (answer) => {
      clearTimeout(timer);
      resolve(answer);
    });
  });
}

describe('ALLOW_EIO3 unset (the default)', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server?.stop());

  test('a v2 client cannot connect; protocol 3 is answered 400 code 5 on both transports', async () => {
    await assert.rejects(connectV2(server, signToken({ userId: uniq('old') }), ['polling']));
    for (const transport of ['polling', 'websocket']) {
      const res = await rawRequest(`${server.url}/socket.io/?EIO=3&transport=${transport}`);
      assert.equal(res.status, 400, transport);
      assert.deepEqual(res.body, { code: 5, message: 'Unsupported protocol version' });
    }
  });
});

describe('ALLOW_EIO3=true', () => {
  let server;
  before(async () => {
    server = await startServer({ ALLOW_EIO3: 'true' });
  });
  after(() => server?.stop());

  for (const transport of ['polling', 'websocket']) {
    test(`over ${transport}: token in the query, join_room acked, broadcasts both ways with a v4 client`, async () => {
      const project = uniq('p');
      const room = `project:${project}`;
      const old = await connectV2(server, signToken({ userId: uniq('old'), projects: [project], permissions: ['room_broadcast'] }), [transport]);
      assert.equal(old.io.engine.transport.name, transport);
      const modern = await connectAs(server, { userId: uniq('new'), projects: [project], permissions: ['room_broadcast'] });

      const joined = await ackV2(old, 'join_room', room);
      assert.equal(joined.success, true, JSON.stringify(joined));
      assert.equal((await emitAck(modern, 'join_room', room)).success, true);

      // v4 to v2
      const atOld = new Promise((resolve) => old.once('site_update', resolve));
      assert.equal((await emitAck(modern, 'broadcast_room', room, 'site_update', { from: 'v4' })).success, true);
      assert.deepEqual(await atOld, { from: 'v4' });

      // v2 to v4
      const atModern = waitFor(modern, 'site_update');
      assert.equal((await ackV2(old, 'broadcast_room', room, 'site_update', { from: 'v2' })).success, true);
      assert.deepEqual(await atModern, { from: 'v2' });

      // an event refused by the contract is answered in the contract's shape
      const refused = await ackV2(old, 'join_room', 'project:not-mine');
      assert.equal(refused.success, false);
      assert.equal(refused.code, 'FORBIDDEN');
      old.close();
      modern.close();
    });
  }

  test('a v2 client without a valid token is refused with the contract message', async () => {
    const err = await connectV2(server, 'not-a-token', ['polling']).then(
      () => assert.fail('connected'),
      (e) => e,
    );
    assert.match(err.message, /Authentication failed/);
  });
});

// The v3 heartbeat runs the other way round from v4: the client pings every pingInterval
// and the server answers; the server drops a client not heard from for pingInterval +
// pingTimeout. (One engine-wide heartbeat task answers for every socket: vendor/README.md,
// fix 21.)
describe('ALLOW_EIO3=true, v3 heartbeat', () => {
  const PING_INTERVAL = 300;
  const PING_TIMEOUT = 200;
  let server;
  before(async () => {
    server = await startServer({ ALLOW_EIO3: 'true', PING_INTERVAL_MS: PING_INTERVAL, PING_TIMEOUT_MS: PING_TIMEOUT });
  });
  after(() => server?.stop());

  for (const transport of ['polling', 'websocket']) {
    test(`over ${transport}: a v2 client's pings are answered, so it stays connected`, async () => {
      const project = uniq('p');
      const old = await connectV2(server, signToken({ userId: uniq('old'), projects: [project] }), [transport]);
      let closed = null;
      old.on('disconnect', (reason) => {
        closed = reason;
      });
      // A v2 client that gets no pong within pingTimeout closes with "ping timeout".
      let pongs = 0;
      await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`${pongs} pongs, disconnected: ${closed}`)), 10 * PING_INTERVAL);
        old.on('pong', () => {
          if (++pongs === 3) {
            clearTimeout(timer);
            resolve();
          }
        });
      });
      assert.equal(closed, null, `disconnected: ${closed}`);
      assert.equal((await ackV2(old, 'join_room', `project:${project}`)).success, true);
      old.close();
    });
  }

  test('a v3 session that never pings is closed after pingInterval + pingTimeout', async () => {
    const token = signToken({ userId: uniq('silent') });
    const open = await rawRequest(`${server.url}/socket.io/?EIO=3&transport=polling&token=${token}`);
    assert.equal(open.status, 200);
    const sid = /"sid":"([^"]+)"/.exec(open.text)?.[1];
    assert.ok(sid, open.text);
    const url = `${server.url}/socket.io/?EIO=3&transport=polling&sid=${sid}`;
    // Alive while it pings, as a v2 client does, once every pingInterval (v3 payload
    // framing: length, colon, packet).
    for (let i = 0; i < 3; i++) {
      await new Promise((resolve) => setTimeout(resolve, PING_INTERVAL));
      assert.equal((await rawRequest(url, { method: 'POST', body: '1:2' })).status, 200, `ping ${i}`);
    }
    // Then silent: polls take the queued pongs, and the last one is held until the server
    // closes the session with a close packet.
    const silentSince = Date.now();
    let polled = '';
    while (!polled.endsWith('1:1')) {
      const res = await rawRequest(url, { timeoutMs: 5000 });
      assert.equal(res.status, 200, `poll answered ${res.status} after ${JSON.stringify(polled)}`);
      polled += res.text;
    }
    const closedAfter = Date.now() - silentSince;
    assert.ok(polled.includes('1:3'), `pongs: ${JSON.stringify(polled)}`);
    assert.ok(closedAfter >= PING_INTERVAL + PING_TIMEOUT - 50, `closed ${closedAfter} ms after the last ping`);
    assert.equal((await rawRequest(url, { method: 'POST', body: '1:2' })).status, 400, 'still open');
  });
});
