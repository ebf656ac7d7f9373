// Section 7 / 10: graceful shutdown on SIGTERM: server_shutdown, /ready 503 while draining,
// engine connections closed (`transport close`, not a socket.io disconnect), exit code 0.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import {
  connect,
  connectAs,
  emitAck,
  flush,
  httpGet,
  openSocket,
  signToken,
  startServer,
  waitFor,
  waitForDisconnect,
  whenConnected,
  withTimeout,
} from './helpers.mjs';

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

// A stop reaches every client, whatever its transport is doing at that moment. One server
// takes 100 clients: long-polling ones (with a poll waiting at the server, or between two
// polls), websocket ones, and ones in the middle of an upgrade. SHUTDOWN_DRAIN_MS=0 (the
// default) closes the engine connections right after the notice. That used to lose the
// notice for a polling client with no poll at the server or in an upgrade; a waiting poll
// got the notice but never the close packet (a transport error instead), or got both in
// one payload, which loses the notice too: socket.io-client emits the events of a poll a
// tick later, by when the close packet has disconnected it.
test('SIGTERM reaches 100 of 100 clients, polling, websocket and mid-upgrade, before the close', async () => {
  const server = await startServer({ MAX_CONNECTIONS_PER_IP: 1000 });
  servers.push(server);
  // autoUnref: a client left behind by a failed run must not keep the test process alive
  // until its ping timeout.
  const token = (i) => ({ auth: { token: signToken({ userId: `sd-many-${i}` }) }, autoUnref: true });
  const gate = () => {
    let open;
    const opened = new Promise((r) => (open = r));
    return { opened, open };
  };
  // Every client is released at its own moment after the signal, so the releases fall
  // before, during and after the server's close.
  const releaseDelay = (i) => (i * 7) % 150;

  // Polling: half of them have a poll waiting at the server. In the other half the next
  // poll has not reached the server yet (the network time between one poll's answer and
  // the next request): it is held there until after the signal.
  const polling = await Promise.all(
    Array.from({ length: 34 }, async (_, i) => {
      const s = await connect(server, { transports: ['polling'], ...token(`p${i}`) });
      if (i % 2 === 0) return { s, kind: 'polling (waiting poll)', release: () => {}, parked: null };
      const transport = s.io.engine.transport;
      const doPoll = transport.doPoll.bind(transport);
      const hold = gate();
      const parked = gate();
      transport.doPoll = () => {
        if (!parked.armed) return doPoll();
        parked.armed = false;
        parked.open();
        hold.opened.then(doPoll);
      };
      return { s, kind: 'polling (between polls)', release: hold.open, parked };
    }),
  );
  const between = polling.filter((c) => c.parked);
  for (const c of between) c.parked.armed = true;
  // The marker answers each client's waiting poll, so its next one is the held one.
  await flush(server, ...between.map((c) => c.s));
  await Promise.all(between.map((c) => c.parked.opened));

  const websocket = await Promise.all(
    Array.from({ length: 33 }, async (_, i) => ({
      s: await connect(server, { transports: ['websocket'], ...token(`w${i}`) }),
      kind: 'websocket',
      release: () => {},
    })),
  );

  // Mid-upgrade: the websocket probe waits for the Socket.IO connect (over polling), then
  // answers 3probe; the client's switch (pausing polling, then sending `5`) is held until
  // after the signal.
  const upgrading = await Promise.all(
    Array.from({ length: 33 }, async (_, i) => {
      const s = openSocket(server, { transports: ['polling', 'websocket'], ...token(`u${i}`) });
      const engine = s.io.engine;
      const connected = gate();
      const createTransport = engine.createTransport.bind(engine);
      engine.createTransport = (name) => {
        const t = createTransport(name);
        if (name === 'websocket') {
          const open = t.open.bind(t);
          t.open = () => {
            connected.opened.then(open);
            return t;
          };
        }
        return t;
      };
      const hold = gate();
      const polling = engine.transport;
      const pause = polling.pause.bind(polling);
      polling.pause = (onPause) => pause(() => hold.opened.then(onPause));
      const probed = waitFor(engine, 'upgrading', 5000);
      await whenConnected(s);
      connected.open();
      await probed;
      assert.equal(engine.transport.name, 'polling');
      return { s, kind: 'upgrading', release: hold.open };
    }),
  );

  const clients = [...polling, ...websocket, ...upgrading];
  const outcomes = clients.map(({ s, kind }) =>
    new Promise((resolve) => {
      let notice;
      s.on('server_shutdown', (ev) => (notice ??= ev));
      const timer = setTimeout(() => resolve({ kind, notice, reason: 'no close within 8 s' }), 8000);
      s.on('disconnect', (reason) => {
        clearTimeout(timer);
        resolve({ kind, notice, reason });
      });
    }),
  );

  server.terminate();
  clients.forEach((c, i) => setTimeout(c.release, releaseDelay(i)));
  const results = await Promise.all(outcomes);

  const failed = results.filter((r) => r.notice === undefined || r.reason !== 'transport close');
  const summary = failed.map((r) => `${r.kind}: ${r.notice ? 'notice, then' : 'no notice;'} ${r.reason}`);
  assert.equal(failed.length, 0, `${failed.length} of ${results.length} clients failed:\n${summary.join('\n')}`);
  for (const r of results) assertShutdownEvent(r.notice);
  assert.deepEqual(await withTimeout(server.exited, 10_000, 'process exit'), { code: 0, signal: null });
});
