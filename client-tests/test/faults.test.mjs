// Faults a production backend meets: clients that stop answering pings, a client that
// stops reading while its room is busy, and a reconnect storm after an outage.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import { after, describe, test } from 'node:test';
import WebSocket from 'ws';
import { API_KEY, apiEmit, connectAs, emitAck, httpGet, metrics, rawRequest, signToken, startServer, uniq, waitUntil } from './helpers.mjs';

const servers = [];
after(() => Promise.all(servers.map((s) => s.stop())));
async function start(env) {
  const s = await startServer(env);
  servers.push(s);
  return s;
}

const delay = (ms) => new Promise((r) => setTimeout(r, ms));
const rssMiB = (pid) => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) / 1024;

/**
 * A raw Socket.IO client over a websocket: connects with `claims`; `answerPings` false
 * leaves pings unanswered. Resolves once the CONNECT is acknowledged.
 */
function rawClient(server, claims, { answerPings = true, token = signToken(claims) } = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${server.url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`);
    ws.closed = new Promise((r) => ws.once('close', r));
    ws.on('error', reject);
    ws.on('message', (data) => {
      const frame = data.toString();
      if (frame[0] === '0') ws.send(`40${JSON.stringify({ token })}`);
      else if (frame === '2' && answerPings) ws.send('3');
      else if (frame.startsWith('40')) resolve(ws);
      else if (frame.startsWith('44')) reject(new Error(frame));
    });
  });
}

/** A masked client websocket text frame. */
function frame(text) {
  const payload = Buffer.from(text);
  const mask = crypto.randomBytes(4);
  const head = payload.length < 126 ? Buffer.from([0x81, 0x80 | payload.length]) : Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 255]);
  return Buffer.concat([head, mask, payload.map((b, i) => b ^ mask[i % 4])]);
}

/**
 * A Socket.IO client on a bare TCP socket that, once connected, never reads again (a
 * paused net.Socket really stops reading, unlike the ws library's). Resolves the socket.
 */
function stuckClient(server, claims) {
  return new Promise((resolve, reject) => {
    const sock = net.connect(server.port, '127.0.0.1');
    sock.on('error', () => {});
    let seen = '';
    let connectSent = false;
    sock.on('connect', () => {
      const key = crypto.randomBytes(16).toString('base64');
      sock.write(`GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
    });
    const onData = (d) => {
      seen += d.toString('latin1');
      if (!connectSent && seen.includes('0{"sid"')) {
        connectSent = true;
        sock.write(frame(`40${JSON.stringify({ token: signToken(claims) })}`));
      }
      if (seen.includes('40{"sid"')) {
        sock.off('data', onData);
        sock.pause();
        resolve(sock);
      }
    };
    sock.on('data', onData);
    setTimeout(() => reject(new Error('the stuck client did not connect')), 5000);
  });
}

/** trestle_connected_sockets from /metrics. */
async function connectedSockets(server) {
  return (await metrics(server)).trestle_connected_sockets;
}

describe('heartbeat', () => {
  test('a client that stops answering pings is dropped after pingInterval + pingTimeout; others stay', async () => {
    const server = await start({ PING_INTERVAL_MS: 300, PING_TIMEOUT_MS: 200 });
    const bystander = await connectAs(server, { userId: uniq('b') });
    const silent = await rawClient(server, { userId: uniq('s') }, { answerPings: false });
    const t0 = Date.now();
    await silent.closed;
    const took = Date.now() - t0;
    assert.ok(took <= 300 + 200 + 300, `dropped after ${took} ms`);
    await delay(700); // the bystander answers several pings meanwhile
    assert.equal(bystander.connected, true);
    assert.equal((await emitAck(bystander, 'join_room', `presence:${uniq('x')}`)).success, true);
    bystander.close();
  });
});

/**
 * trestle_disconnects_total for `reason`, from /metrics, once it reaches `atLeast` or
 * 3 s have passed. The socket leaves trestle_connected_sockets before its disconnect
 * handler (spawned by socketioxide) counts the reason, so a read right after it went
 * away can come too early; the caller asserts the exact value.
 */
async function disconnectsFor(server, reason, atLeast = 1) {
  let count;
  const reached = async () => (count = (await metrics(server))[`trestle_disconnects_total{reason="${reason}"}`]) >= atLeast;
  await waitUntil(reached).catch(() => {});
  return count;
}

describe('slow consumer', () => {
  // Heartbeats far apart, so that only the send bound can end the stuck client.
  const SLOW_ENV = { PING_INTERVAL_MS: 25_000, PING_TIMEOUT_MS: 20_000 };

  test('a client that stops reading in a busy room is disconnected (slow_consumer), server memory stays bounded, others keep their latency', async (t) => {
    const server = await start(SLOW_ENV);
    const p = uniq('p');
    const room = `project:${p}`;
    const reader = await connectAs(server, { userId: uniq('r'), projects: [p] });
    const stuck = await stuckClient(server, { userId: uniq('s'), projects: [p] });
    await waitUntil(async () => (await connectedSockets(server)) === 2);
    let gone = false;
    const before = rssMiB(server.proc.pid);
    let received = 0;
    reader.on('busy', () => received++);
    const payload = 'x'.repeat(100_000);
    let peak = before;
    let worstRtt = 0;
    const t0 = Date.now();
    const deadline = t0 + 20_000;
    let sent = 0;
    while (!gone && Date.now() < deadline) {
      for (let i = 0; i < 20; i++) await apiEmit(server, { rooms: [room], event: 'busy', data: payload }, API_KEY);
      sent += 20;
      const r0 = Date.now();
      // typing_stop is acked and not rate-limited: a round trip through the server.
      assert.equal((await emitAck(reader, 'typing_stop', { room: `${room}:comments` })).success, true);
      worstRtt = Math.max(worstRtt, Date.now() - r0);
      peak = Math.max(peak, rssMiB(server.proc.pid));
      gone = (await connectedSockets(server)) === 1;
    }
    const took = Date.now() - t0;
    stuck.destroy();
    t.diagnostic(`RSS before ${before.toFixed(1)} MiB, peak ${peak.toFixed(1)} MiB; ${sent} messages of 100 kB sent; reader got ${received}; stuck client dropped after ${took} ms; worst reader round trip ${worstRtt} ms`);
    assert.ok(gone, 'the stuck client was not disconnected within 20 s');
    assert.equal(await disconnectsFor(server, 'slow_consumer'), 1, 'closed by the send bound, not by the heartbeat');
    // MAX_BUFFER_BYTES (8 MiB) waits at most for the stuck socket, plus what the kernel
    // and the websocket writer hold for it.
    assert.ok(peak - before < 48, `server RSS grew by ${(peak - before).toFixed(1)} MiB`);
    assert.ok(worstRtt < 1000, `the reader's round trip reached ${worstRtt} ms`);
    assert.equal(reader.connected, true);
    // the reader that reads loses nothing
    await waitUntil(async () => received === sent);
    reader.close();
  });

  test('a long-polling client that stops polling in a busy room is disconnected (slow_consumer)', async () => {
    const server = await start({ ...SLOW_ENV, MAX_BUFFER_BYTES: 1_000_000 });
    const p = uniq('p');
    const room = `project:${p}`;
    // Handshake and CONNECT over polling, then never poll again.
    const base = `${server.url}/socket.io/?EIO=4&transport=polling`;
    const open = await httpGet(server, '/socket.io/?EIO=4&transport=polling');
    const sid = JSON.parse(open.text.slice(1)).sid;
    const post = await rawRequest(`${base}&sid=${sid}`, { method: 'POST', body: `40${JSON.stringify({ token: signToken({ userId: uniq('s'), projects: [p] }) })}` });
    assert.equal(post.status, 200);
    await waitUntil(async () => (await connectedSockets(server)) === 1);
    for (let i = 0; i < 30 && (await connectedSockets(server)) === 1; i++) {
      await apiEmit(server, { rooms: [room], event: 'busy', data: 'y'.repeat(100_000) }, API_KEY);
    }
    assert.equal(await connectedSockets(server), 0, 'still connected after 3 MB were queued for it');
    assert.equal(await disconnectsFor(server, 'slow_consumer'), 1);
    const poll = await rawRequest(`${base}&sid=${sid}`);
    assert.equal(poll.status, 400, 'its session is gone');
  });
});

describe('reconnect storm', () => {
  test('5,000 clients connecting at once (as after an outage) all succeed', async (t) => {
    const server = await start({ MAX_CONNECTIONS_PER_IP: 10_000, RUST_LOG: 'error' });
    const N = Number(process.env.STORM_N ?? 5000);
    const tokens = Array.from({ length: N }, (_, i) => signToken({ userId: `storm${i % 500}`, projects: ['storm'] }));
    const t0 = Date.now();
    // Every attempt starts at once; the time is reported, not asserted (bench/ measures speed).
    const results = await Promise.allSettled(tokens.map((token) => rawClient(server, {}, { token })));
    const took = Date.now() - t0;
    const failed = results.filter((r) => r.status === 'rejected');
    t.diagnostic(`${N} connections in ${took} ms; ${failed.length} failed`);
    assert.equal(failed.length, 0, failed[0]?.reason?.message);
    const closed = results.filter((r) => r.value?.readyState !== WebSocket.OPEN).length;
    const reasons = (await httpGet(server, '/metrics')).text.split('\n').filter((l) => l.startsWith('trestle_disconnects_total') && !l.endsWith(' 0'));
    assert.equal(await connectedSockets(server), N, `client side closed: ${closed}; ${reasons.join(', ')}`);
    assert.equal((await httpGet(server, '/health')).status, 200);
    for (const r of results) r.value.terminate();
  });
});
