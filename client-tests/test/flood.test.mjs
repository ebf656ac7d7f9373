// Issue 13, finding 2: engine.io sessions that never send the Socket.IO CONNECT are counted
// from their handshake (docs/security.md, "Admission at the engine.io handshake").
//
// Every flood comes from real sockets. Linux routes all of 127.0.0.0/8 to the loopback
// interface, so a client bound to 127.0.0.2 (`localAddress`) is another address to the
// server: the bystanders and the several attackers of the descriptor test.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { IS_REFERENCE, apiEmit, connect, emitAck, rawRequest, signToken, startServer, waitUntil } from './helpers.mjs';

const servers = [];
const openSockets = [];
after(async () => {
  for (const ws of openSockets) ws.terminate();
  await Promise.all(servers.map((s) => s.stop()));
});

const PER_IP = 5;
// MAX_CONNECTIONS_PER_IP plus the headroom of sessions without a CONNECT (a tenth, at least 4).
const ENGINE_PER_IP = PER_IP + 4;
const CONNECT_TIMEOUT_MS = 3000;
const REFUSED_BODY = { code: 4, message: 'Too many connections from this IP' };

const rssMiB = (pid) => Number(/VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) / 1024;

/** One engine.io polling handshake from `localAddress`: { status, text } (status 0: no answer). */
function pollHandshake(server, localAddress) {
  return new Promise((resolve) => {
    const req = http.get(
      `${server.url}/socket.io/?EIO=4&transport=polling`,
      { localAddress, agent: false, headers: { connection: 'close' } },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode, text }));
      },
    );
    req.setTimeout(5000, () => req.destroy(new Error('timeout')));
    req.on('error', (err) => resolve({ status: 0, text: err.message }));
  });
}

/**
 * One raw engine.io websocket from `localAddress` that never sends a CONNECT: { status: 101,
 * ws } once the engine's open packet arrived, or { status, text } of a refused upgrade.
 */
function wsHandshake(server, localAddress) {
  return new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${server.port}/socket.io/?EIO=4&transport=websocket`, { localAddress });
    ws.once('message', (data) => {
      openSockets.push(ws);
      ws.closed = new Promise((r) => ws.once('close', r));
      resolve({ status: 101, ws, text: data.toString() });
    });
    ws.once('unexpected-response', (req, res) => {
      // Without an agent, Node keeps the socket of a finished keep-alive response open
      // (and detaches it from `res`): close it, as a browser would.
      const socket = req.socket;
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (text += c));
      res.on('end', () => {
        socket.destroy();
        resolve({ status: res.statusCode, text });
      });
    });
    ws.once('error', (err) => resolve({ status: 0, text: err.message }));
  });
}

/** Runs fn(0..n-1) with at most `concurrency` at once; resolves with the results in order. */
async function pool(n, concurrency, fn) {
  const results = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < n) {
        const i = next++;
        results[i] = await fn(i);
      }
    }),
  );
  return results;
}

const opts = (userId, more = {}) => ({ auth: { token: signToken({ userId, projects: [1] }) }, ...more });

/** GET `path` from `localAddress`, failing after `ms`: resolves { status, text }. */
function getFrom(server, path, localAddress, ms) {
  return new Promise((resolve, reject) => {
    const req = http.get(`${server.url}${path}`, { localAddress, agent: false, headers: { connection: 'close' } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode, text }));
    });
    req.setTimeout(ms, () => req.destroy(new Error(`GET ${path} not answered within ${ms} ms`)));
    req.on('error', reject);
  });
}

// A health check comes from the monitoring system's address, not the flooding one.
async function healthWithin(server, ms) {
  assert.equal((await getFrom(server, '/health', '127.0.0.5', ms)).status, 200);
}

describe('engine.io sessions are admitted at the handshake', { skip: IS_REFERENCE && 'Trestle settings' }, () => {
  test('a flood of handshakes from one address: at most the per-address sessions, RSS bounded, bystander and /health unaffected, idle sessions closed', async () => {
    const server = await startServer({ MAX_CONNECTIONS_PER_IP: PER_IP, CONNECT_TIMEOUT_MS });
    servers.push(server);
    const pid = server.proc.pid;
    const rssBefore = rssMiB(pid);

    const started = Date.now();
    let done = 0;
    let halfway;
    const midFlood = new Promise((r) => (halfway = r));
    const count = (r) => {
      if (++done === 1000) halfway();
      return r;
    };
    const flood = Promise.all([
      pool(4000, 8, () => pollHandshake(server, '127.0.0.1').then(count)),
      pool(600, 4, () => wsHandshake(server, '127.0.0.1').then(count)),
    ]);

    // While the flood runs: /health answers, and a client of another address connects and works.
    await midFlood;
    await healthWithin(server, 1000);
    const bystander = await connect(server, opts('bystander', { localAddress: '127.0.0.2' }));
    assert.equal((await emitAck(bystander, 'join_room', 'project:1:comments')).success, true);
    const [polls, sockets] = await flood;
    const elapsed = Date.now() - started;
    const rssAfter = rssMiB(pid);

    const accepted = [...polls, ...sockets].filter((r) => r.status === 200 || r.status === 101);
    const refused = [...polls, ...sockets].filter((r) => r.status === 403);
    const other = [...polls, ...sockets].filter((r) => ![200, 101, 403].includes(r.status));
    console.log(
      `flood: ${polls.length} polling + ${sockets.length} websocket handshakes in ${elapsed} ms, ` +
        `${accepted.length} accepted, ${refused.length} refused; RSS ${rssBefore.toFixed(1)} -> ${rssAfter.toFixed(1)} MiB`,
    );
    // A session that timed out frees its place for another; the flood takes well under
    // CONNECT_TIMEOUT_MS here, but the bound allows for a slow machine.
    const bound = ENGINE_PER_IP * (1 + Math.floor(elapsed / CONNECT_TIMEOUT_MS));
    assert.ok(accepted.length <= bound, `${accepted.length} sessions accepted in ${elapsed} ms (bound ${bound})`);
    assert.ok(accepted.length >= 1);
    assert.deepEqual(other, [], 'every handshake is answered 200/101 or 403');
    for (const r of refused.slice(0, 3)) assert.deepEqual(JSON.parse(r.text), REFUSED_BODY);
    assert.ok(sockets.some((r) => r.status === 403), 'websocket handshakes are refused too');
    assert.ok(rssAfter - rssBefore < 40, `RSS grew by ${(rssAfter - rssBefore).toFixed(1)} MiB`);

    // The sessions that never sent a CONNECT are closed after CONNECT_TIMEOUT_MS ...
    const open = sockets.filter((r) => r.status === 101).map((r) => r.ws);
    await Promise.race([
      Promise.all(open.map((ws) => ws.closed)),
      new Promise((_, reject) => setTimeout(() => reject(new Error('idle websockets still open')), CONNECT_TIMEOUT_MS + 3000)),
    ]);
    // ... and their places are free again: the flooding address connects normally.
    await waitUntil(async () => {
      try {
        const s = await connect(server, opts('after-flood', { transports: ['polling'] }));
        s.close();
        return true;
      } catch {
        return false;
      }
    }, CONNECT_TIMEOUT_MS + 3000);
    assert.equal(bystander.connected, true);
    bystander.close();
  });

  test('a session its client closes before the CONNECT gives its place back at once', async () => {
    const server = await startServer({ MAX_CONNECTIONS_PER_IP: PER_IP, CONNECT_TIMEOUT_MS: 30_000 });
    servers.push(server);
    const first = await pool(ENGINE_PER_IP, 3, () => wsHandshake(server, '127.0.0.6'));
    assert.deepEqual(first.map((r) => r.status), Array(ENGINE_PER_IP).fill(101));
    assert.equal((await wsHandshake(server, '127.0.0.6')).status, 403);
    for (const { ws } of first) ws.close();
    await Promise.all(first.map(({ ws }) => ws.closed));
    // Well before CONNECT_TIMEOUT_MS (30 s): the places are free once the sessions are gone.
    await waitUntil(async () => (await pollHandshake(server, '127.0.0.6')).status === 200, 2000);

    // Connected sessions give their places back too: 30 clients of another address in
    // turn, each closed before the next, where the address holds 9 sessions at most.
    for (let i = 0; i < 30; i++) {
      const transports = i % 2 ? ['polling'] : ['websocket'];
      const s = await connect(server, opts(`churn-${i}`, { transports, localAddress: '127.0.0.7' }));
      const gone = new Promise((r) => s.io.engine.once('close', r));
      s.close();
      await gone;
    }
  });

  test('a client past the Socket.IO cap still gets its connect_error, over polling and websocket', async () => {
    const server = await startServer({ MAX_CONNECTIONS_PER_IP: 1, CONNECT_TIMEOUT_MS });
    servers.push(server);
    const a = await connect(server, opts('a'));
    for (const transports of [['websocket'], ['polling'], ['polling', 'websocket']]) {
      await assert.rejects(connect(server, opts('b', { transports })), { message: 'Too many connections from this IP' });
    }
    a.close();
  });
});

describe('slow request bodies', { skip: IS_REFERENCE && 'Trestle settings' }, () => {
  test('a polling POST whose body trickles in is cut at HTTP_BODY_TIMEOUT_MS and its session closed', async () => {
    const server = await startServer({ HTTP_BODY_TIMEOUT_MS: 1500, CONNECT_TIMEOUT_MS: 30_000 });
    servers.push(server);
    const open = await pollHandshake(server, '127.0.0.4');
    assert.equal(open.status, 200);
    const { sid } = JSON.parse(open.text.slice(1));

    // A raw request: the head at once, then one byte of the body every 500 ms (a per-read
    // timeout would never fire), for up to 10 s.
    const socket = net.connect({ host: '127.0.0.1', port: server.port, localAddress: '127.0.0.4' });
    await new Promise((r) => socket.once('connect', r));
    socket.write(
      `POST /socket.io/?EIO=4&transport=polling&sid=${sid} HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
        'Content-Type: text/plain;charset=UTF-8\r\nContent-Length: 40\r\n\r\n',
    );
    const started = Date.now();
    const trickle = setInterval(() => socket.writable && socket.write('4'), 500);
    let answer = '';
    const answered = new Promise((resolve) => {
      socket.on('data', (c) => {
        answer += c.toString();
        if (answer.includes('\r\n\r\n')) resolve();
      });
      socket.on('close', resolve);
    });
    const timedOut = new Promise((r) => setTimeout(r, 10_000, 'timeout'));
    const result = await Promise.race([answered, timedOut]);
    const elapsed = Date.now() - started;
    clearInterval(trickle);
    socket.destroy();
    assert.notEqual(result, 'timeout', 'the slow body was still being read after 10 s');
    assert.match(answer, /^HTTP\/1\.1 400 /);
    assert.ok(elapsed < 1500 + 2000, `answered after ${elapsed} ms`);
    // The session is gone.
    const poll = await rawRequest(`${server.url}/socket.io/?EIO=4&transport=polling&sid=${sid}`);
    assert.equal(poll.status, 400);
    assert.deepEqual(poll.body, { code: 1, message: 'Session ID unknown' });
  });
});

describe('HTTP/2', { skip: IS_REFERENCE && 'Trestle settings' }, () => {
  test('one h2c connection opens no more sessions than the per-address cap, and has bounded streams', async () => {
    const server = await startServer({ MAX_CONNECTIONS_PER_IP: PER_IP, CONNECT_TIMEOUT_MS: 30_000 });
    servers.push(server);
    const session = http2.connect(server.url, { localAddress: '127.0.0.3' });
    await new Promise((resolve, reject) => {
      session.once('remoteSettings', resolve);
      session.once('error', reject);
    });
    const handshake = () =>
      new Promise((resolve, reject) => {
        const req = session.request({ ':path': '/socket.io/?EIO=4&transport=polling' });
        let status;
        let text = '';
        req.setEncoding('utf8');
        req.on('response', (h) => (status = h[':status']));
        req.on('data', (c) => (text += c));
        req.on('end', () => resolve({ status, text }));
        req.on('error', reject);
      });
    const results = await pool(60, 4, handshake);
    const accepted = results.filter((r) => r.status === 200);
    const refused = results.filter((r) => r.status === 403);
    assert.equal(accepted.length, ENGINE_PER_IP, `${accepted.length} sessions over one HTTP/2 connection`);
    assert.equal(refused.length, 60 - ENGINE_PER_IP);
    assert.deepEqual(JSON.parse(refused[0].text), REFUSED_BODY);
    assert.ok(session.remoteSettings.maxConcurrentStreams <= 100, `${session.remoteSettings.maxConcurrentStreams} streams`);
    session.close();
    // Another address is not affected.
    const other = await connect(server, opts('h2-bystander', { localAddress: '127.0.0.2' }));
    other.close();
  });
});

describe('file descriptors', { skip: IS_REFERENCE && 'Trestle settings' }, () => {
  test('with ulimit -n 256, sessions from many addresses leave /health and /api/emit answering', async () => {
    // The server is started through a shell that sets the limit (soft and hard).
    const here = path.dirname(fileURLToPath(import.meta.url));
    const bin = process.env.TRESTLE_BIN
      ? path.resolve(here, '..', process.env.TRESTLE_BIN)
      : path.resolve(here, '../../target/release/trestle');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trestle-nofile-'));
    const wrapper = path.join(dir, 'trestle-nofile');
    fs.writeFileSync(wrapper, `#!/bin/sh\nulimit -n 256 || exit 1\nexec '${bin}' "$@"\n`, { mode: 0o755 });
    const saved = process.env.TRESTLE_BIN;
    process.env.TRESTLE_BIN = wrapper;
    let server;
    try {
      server = await startServer({ MAX_CONNECTIONS_PER_IP: 20, CONNECT_TIMEOUT_MS: 30_000, RUST_LOG: 'warn' });
    } finally {
      if (saved === undefined) delete process.env.TRESTLE_BIN;
      else process.env.TRESTLE_BIN = saved;
      fs.rmSync(dir, { recursive: true, force: true });
    }
    servers.push(server);

    // Twelve addresses, each up to its 24 sessions: 288 websockets, more than the process
    // has descriptors for.
    const addresses = Array.from({ length: 12 }, (_, i) => `127.0.0.${10 + i}`);
    const results = await pool(288, 12, (i) => wsHandshake(server, addresses[i % addresses.length]));
    const accepted = results.filter((r) => r.status === 101).length;
    const refused = results.filter((r) => r.status === 403);
    console.log(`descriptors: ${accepted} websocket sessions accepted, ${refused.length} refused`);
    assert.ok(accepted > 100, `${accepted} accepted`);
    assert.ok(refused.length > 0);
    assert.deepEqual(JSON.parse(refused[0].text), { code: 4, message: 'Server at capacity' });

    await healthWithin(server, 1000);
    assert.equal((await getFrom(server, '/ready', '127.0.0.5', 1000)).status, 200);
    assert.equal((await getFrom(server, '/metrics', '127.0.0.5', 1000)).status, 200);
    const emitted = await apiEmit(server, { rooms: ['project:1'], event: 'noop', data: {} }, server.apiKey, { timeoutMs: 1000 });
    assert.equal(emitted.status, 202);
    // The cap was fitted to the descriptors, and the log says so.
    assert.match(server.output, /MAX_CONNECTIONS lowered/);
    for (const ws of results.filter((r) => r.status === 101).map((r) => r.ws)) ws.terminate();
  });
});
