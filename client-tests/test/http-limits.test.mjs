// Request head limits (HTTP_MAX_HEADERS, HTTP_MAX_HEADER_BYTES, HTTP_HEADER_TIMEOUT_MS) and
// oversized tokens: a client cannot hold a connection open by sending its headers slowly,
// nor make the server parse or verify megabytes of header or token.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { connectAs, connectError, emitAck, httpGet, openSocket, rawRequest, signToken, startServer, uniq } from './helpers.mjs';

let server;
before(async () => {
  server = await startServer({ HTTP_HEADER_TIMEOUT_MS: 500 });
});
after(() => server?.stop());

const handshakeUrl = () => `${server.url}/socket.io/?EIO=4&transport=polling`;

/**
 * Resolves how a connection attempt ended without connecting: its connect_error message,
 * or `closed` when the server closed the transport before any CONNECT answer (socket.io
 * reports no connect_error then). Fails if the socket connects or nothing happens in 5 s.
 */
function neverConnects(opts) {
  const socket = openSocket(server, { ...opts, reconnection: false });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => done(reject, new Error('no outcome within 5 s')), 5000);
    let settled = false;
    const done = (fn, v) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.close();
      fn(v);
    };
    socket.on('connect', () => done(reject, new Error('the socket connected')));
    socket.on('connect_error', (e) => done(resolve, e.message));
    socket.io.on('close', () => done(resolve, 'closed'));
  });
}

/** A bystander that must keep working whatever the other tests send. */
async function bystanderWorks() {
  const s = await connectAs(server, { userId: uniq('b') });
  assert.equal((await emitAck(s, 'join_room', `presence:${uniq('x')}`)).success, true);
  s.close();
  assert.equal((await httpGet(server, '/health')).status, 200);
}

describe('request heads', () => {
  test('more than 100 header lines: 431', async () => {
    const headers = {};
    for (let i = 0; i < 150; i++) headers[`x-filler-${i}`] = 'v';
    assert.equal((await rawRequest(handshakeUrl(), { headers })).status, 431);
    await bystanderWorks();
  });

  test('headers over 64 KiB in all (a 1 MB bearer token): 431, without a session', async () => {
    const res = await rawRequest(handshakeUrl(), { headers: { authorization: `Bearer ${'a'.repeat(1_000_000)}` } });
    assert.equal(res.status, 431);
    await bystanderWorks();
  });

  test('a client that sends its headers too slowly is disconnected after HTTP_HEADER_TIMEOUT_MS (500 ms here)', async () => {
    const sock = net.connect(server.port, '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    const t0 = Date.now();
    sock.write('GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n'); // and never the blank line
    const trickle = setInterval(() => sock.write('X-Slow: 1\r\n'), 100); // a byte now and then does not help
    await new Promise((r) => sock.once('close', r));
    clearInterval(trickle);
    const took = Date.now() - t0;
    assert.ok(took >= 400 && took < 3000, `closed after ${took} ms`);
    await bystanderWorks();
  });
});

describe('oversized tokens', () => {
  test('a validly signed 20 KB token in auth.token is Authentication failed (tokens are capped at 16 KiB)', async () => {
    const token = signToken({ userId: uniq('u'), padding: 'x'.repeat(20_000) });
    assert.equal(await connectError(server, { auth: { token }, transports: ['websocket'] }), 'Authentication failed');
    await bystanderWorks();
  });

  test('a 1 MB token in auth.token (over the message limit) never connects', async () => {
    const token = 'a'.repeat(1_000_000);
    const outcome = await neverConnects({ auth: { token }, transports: ['websocket'] });
    assert.ok(['closed', 'websocket error'].includes(outcome), outcome);
    await bystanderWorks();
  });

  test('a 1 MB token in the query string never connects', async () => {
    // The server answers and closes as soon as the head is too long; this side may still
    // be writing the rest of it then, and see the close as EPIPE or a reset, not the answer.
    const outcome = await rawRequest(`${handshakeUrl()}&token=${'a'.repeat(1_000_000)}`).then(
      (res) => res.status,
      (err) => err.code,
    );
    assert.ok([414, 431, 'EPIPE', 'ECONNRESET'].includes(outcome), `outcome ${outcome}`);
    await bystanderWorks();
  });
});
