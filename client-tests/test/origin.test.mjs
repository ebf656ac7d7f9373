// The Origin allow-list (CORS_ORIGINS) on the Socket.IO handshake, polling and the
// websocket upgrade: a browser page of another site cannot open a socket, while clients
// that send no Origin (native apps, Node services) connect as before.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { connectAs, emitAck, rawRequest, signToken, startServer, uniq, waitForUpgrade, waitUntil } from './helpers.mjs';

const clientTests = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
// The virtualenv that ../scripts/test.sh makes from python/requirements.txt.
const PYTHON = process.env.PYTHON_CLIENT || path.join(clientTests, '.venv/bin/python');

const ALLOWED = 'https://app.example.com';
const EVIL = 'https://evil.example.net';

const servers = [];
after(() => Promise.all(servers.map((s) => s.stop())));

async function start(env) {
  const s = await startServer(env);
  servers.push(s);
  return s;
}

const handshake = (server, origin) =>
  rawRequest(`${server.url}/socket.io/?EIO=4&transport=polling`, { headers: origin ? { origin } : {} });

/** Opens a raw websocket with an Origin; resolves 'open' or the HTTP status it was refused with. */
function wsOutcome(server, origin) {
  return new Promise((resolve) => {
    const ws = new WebSocket(`${server.url.replace('http', 'ws')}/socket.io/?EIO=4&transport=websocket`, origin ? { origin } : {});
    ws.on('open', () => {
      ws.close();
      resolve('open');
    });
    ws.on('unexpected-response', (_req, res) => {
      resolve(res.statusCode);
      ws.terminate();
    });
    ws.on('error', () => {});
  });
}

describe('CORS_ORIGINS set', () => {
  test('polling handshake: an unlisted Origin is 403, a listed one (any case) or none gets a session', async () => {
    const server = await start({ CORS_ORIGINS: `${ALLOWED},http://localhost:5173` });
    const evil = await handshake(server, EVIL);
    assert.equal(evil.status, 403);
    assert.ok(!evil.text.includes('"sid"'), 'no session for a refused origin');
    assert.equal((await handshake(server, 'https://app.example.com.evil.net')).status, 403);
    assert.equal((await handshake(server, 'null')).status, 403);
    const ok = await handshake(server, 'https://APP.example.com');
    assert.equal(ok.status, 200);
    assert.match(ok.text, /"sid"/);
    const none = await handshake(server);
    assert.equal(none.status, 200);
    assert.match(none.text, /"sid"/);
  });

  test('websocket upgrade: an unlisted Origin is refused with 403, a listed one and none open', async () => {
    const server = await start({ CORS_ORIGINS: ALLOWED });
    assert.equal(await wsOutcome(server, EVIL), 403);
    assert.equal(await wsOutcome(server, ALLOWED), 'open');
    assert.equal(await wsOutcome(server), 'open');
  });

  test('a socket.io client sending a listed Origin works; /metrics counts the refusals', async () => {
    const server = await start({ CORS_ORIGINS: ALLOWED });
    const s = await connectAs(server, { userId: uniq('u') }, { extraHeaders: { origin: ALLOWED }, transports: ['polling', 'websocket'] });
    assert.equal((await emitAck(s, 'join_room', `presence:${uniq('x')}`)).success, true);
    s.close();
    await handshake(server, EVIL);
    await wsOutcome(server, EVIL);
    const metrics = (await rawRequest(`${server.url}/metrics`)).text;
    const line = metrics.split('\n').find((l) => l.startsWith('trestle_connections_refused_total{reason="origin"}'));
    assert.ok(line, 'origin refusals are counted');
    assert.ok(Number(line.split(' ').pop()) >= 2, line);
  });

  test("the server's own origin (same scheme, host and port as Host) passes; another port or scheme does not", async () => {
    const server = await start({ CORS_ORIGINS: ALLOWED });
    const own = `http://127.0.0.1:${server.port}`;
    assert.equal((await handshake(server, own)).status, 200);
    assert.equal(await wsOutcome(server, own), 'open');
    assert.equal(await wsOutcome(server, `ws://127.0.0.1:${server.port}`), 'open');
    assert.equal(await wsOutcome(server, `http://127.0.0.1:${server.port + 1}`), 403);
    assert.equal(await wsOutcome(server, `https://127.0.0.1:${server.port}`), 403);
    assert.equal(await wsOutcome(server, `http://localhost:${server.port}`), 403, 'Host is 127.0.0.1, not localhost');
    // socket.io-client with that Origin goes on to the websocket, rather than staying on polling.
    const s = await connectAs(server, { userId: uniq('u') }, { extraHeaders: { origin: own }, transports: ['polling', 'websocket'] });
    await waitForUpgrade(s);
    assert.equal(s.io.engine.transport.name, 'websocket');
    s.close();
  });

  test('python-socketio (websocket-client sends the server URL as Origin) upgrades to websocket', async () => {
    const server = await start({ CORS_ORIGINS: ALLOWED });
    const user = uniq('py');
    const out = await new Promise((resolve, reject) => {
      execFile(PYTHON, [path.join(clientTests, 'python/connect.py'), server.url, signToken({ userId: user }), `presence:${user}`], { timeout: 20_000 }, (err, stdout, stderr) =>
        err ? reject(new Error(`python client failed: ${err.message}\n${stderr}`)) : resolve(stdout),
      );
    });
    const result = JSON.parse(out.trim().split('\n').pop());
    assert.deepEqual(result, { transport: 'websocket', ack: { success: true, room: `presence:${user}`, size: 1 } });
  });

  test('a refusal is logged at info with the origin', async () => {
    const server = await start({ CORS_ORIGINS: ALLOWED, RUST_LOG: 'info' });
    assert.equal((await handshake(server, EVIL)).status, 403);
    const find = () => server.output.split('\n').find((l) => l.includes('refused') && l.includes(EVIL));
    // The line reaches this process through a pipe, possibly after the 403 did.
    await waitUntil(find, 3000).catch(() => {});
    const line = find();
    assert.ok(line, `no log line naming ${EVIL}:\n${server.output}`);
    assert.equal(JSON.parse(line).level, 'INFO', line);
  });

  test('the HTTP API is not subject to it (server-to-server calls)', async () => {
    const server = await start({ CORS_ORIGINS: ALLOWED });
    assert.equal((await rawRequest(`${server.url}/health`, { headers: { origin: EVIL } })).status, 200);
  });
});

describe('CORS_ORIGINS=* (the default)', () => {
  test('any Origin connects, over polling and websocket', async () => {
    const server = await start({});
    assert.equal((await handshake(server, EVIL)).status, 200);
    assert.equal(await wsOutcome(server, EVIL), 'open');
  });
});
