// Section 7 / 10: graceful shutdown on SIGTERM: server_shutdown, /ready 503 while draining,
// engine connections closed (`transport close`, not a socket.io disconnect), exit code 0.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { connectAs, emitAck, httpGet, startServer, waitFor, waitForDisconnect, withTimeout } from './helpers.mjs';

const servers = [];
after(() => Promise.all(servers.map((s) => s.stop())));

function assertShutdownEvent(ev) {
  assert.equal(typeof ev, 'object', JSON.stringify(ev));
  assert.equal(typeof ev.message, 'string', JSON.stringify(ev));
  assert.ok(ev.message.length > 0, 'empty message');
  assert.equal(ev.reconnectDelay, 5000, JSON.stringify(ev));
}

async function startWithClients() {
  const server = await startServer({ SHUTDOWN_DRAIN_MS: 1500 });
  servers.push(server);
  const ws = await connectAs(server, { userId: 'sd-ws' }, { transports: ['websocket'] });
  const polling = await connectAs(server, { userId: 'sd-poll' }, { transports: ['polling'] });
  assert.equal(polling.io.engine.transport.name, 'polling');
  const events = { ws: waitFor(ws, 'server_shutdown', 5000), polling: waitFor(polling, 'server_shutdown', 5000) };
  const disconnects = { ws: waitForDisconnect(ws, 10_000), polling: waitForDisconnect(polling, 10_000) };
  return { server, ws, polling, events, disconnects };
}

test('SIGTERM: server_shutdown to every client, then transport close, then exit 0 within 10 s', async () => {
  const { server, ws, polling, events, disconnects } = await startWithClients();
  const t0 = Date.now();
  server.terminate();

  assertShutdownEvent(await events.ws);
  assertShutdownEvent(await events.polling);
  assert.equal(await disconnects.ws, 'transport close');
  assert.equal(await disconnects.polling, 'transport close');
  assert.equal(ws.connected, false);
  assert.equal(polling.connected, false);

  const exit = await withTimeout(server.exited, Math.max(0, 10_000 - (Date.now() - t0)), 'process exit');
  assert.deepEqual(exit, { code: 0, signal: null });
});

test('while draining (SHUTDOWN_DRAIN_MS=1500): /ready is 503, /health 200, connected clients are still served', async () => {
  const { server, ws, polling, events, disconnects } = await startWithClients();
  server.terminate();
  assertShutdownEvent(await events.ws);
  assertShutdownEvent(await events.polling);

  const ready = await httpGet(server, '/ready');
  assert.equal(ready.status, 503);
  assert.equal((await httpGet(server, '/health')).status, 200);
  assert.equal(ws.connected, true);
  assert.equal(polling.connected, true);
  assert.deepEqual(await emitAck(ws, 'join_room', 'presence:sd-ws'), { success: true, room: 'presence:sd-ws', size: 1 });
  assert.deepEqual(await emitAck(polling, 'join_room', 'presence:sd-poll'), { success: true, room: 'presence:sd-poll', size: 1 });

  assert.equal(await disconnects.ws, 'transport close');
  assert.equal(await disconnects.polling, 'transport close');
  assert.deepEqual(await withTimeout(server.exited, 10_000, 'process exit'), { code: 0, signal: null });
});

test('SIGINT stops the server the same way', async () => {
  const { server, ws, polling, events, disconnects } = await startWithClients();
  server.signalled = true;
  server.proc.kill('SIGINT');
  assertShutdownEvent(await events.ws);
  assertShutdownEvent(await events.polling);
  assert.equal(await disconnects.ws, 'transport close');
  assert.equal(await disconnects.polling, 'transport close');
  assert.deepEqual(await withTimeout(server.exited, 10_000, 'process exit'), { code: 0, signal: null });
});

test('the shutdown deadline bounds the stop: SHUTDOWN_TIMEOUT_MS=800 with a 30 s drain exits 0 in time', async () => {
  const server = await startServer({ SHUTDOWN_DRAIN_MS: 30_000, SHUTDOWN_TIMEOUT_MS: 800 });
  servers.push(server);
  const ws = await connectAs(server, { userId: 'sd-deadline' });
  const notice = waitFor(ws, 'server_shutdown', 5000);
  const t0 = Date.now();
  server.terminate();
  assertShutdownEvent(await notice);
  const exit = await withTimeout(server.exited, 5000, 'process exit');
  assert.deepEqual(exit, { code: 0, signal: null });
  assert.ok(Date.now() - t0 < 5000, `stopped after ${Date.now() - t0} ms`);
  ws.close();
});
