// Section 1: websocket-only, polling-only and polling-then-upgrade connections, each with an
// event round trip.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { emitAck, openSocket, signToken, startServer, whenConnected, withTimeout } from './helpers.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(() => server?.stop());

const token = (userId) => signToken({ userId, projects: [1] });

async function roundTrip(socket, userId) {
  const ack = await emitAck(socket, 'join_room', `presence:${userId}`);
  assert.deepEqual(ack, { success: true, room: `presence:${userId}`, size: 1 });
}

test('websocket-only connection', async () => {
  const socket = openSocket(server, { transports: ['websocket'], auth: { token: token('ws-user') } });
  await whenConnected(socket);
  assert.equal(socket.io.engine.transport.name, 'websocket');
  await roundTrip(socket, 'ws-user');
  socket.close();
});

test('polling-only connection', async () => {
  const socket = openSocket(server, { transports: ['polling'], auth: { token: token('poll-user') } });
  await whenConnected(socket);
  assert.equal(socket.io.engine.transport.name, 'polling');
  await roundTrip(socket, 'poll-user');
  // still polling after the round trip: no upgrade was offered to a polling-only client
  assert.equal(socket.io.engine.transport.name, 'polling');
  socket.close();
});

test('polling connection upgraded to websocket', async () => {
  const socket = openSocket(server, { transports: ['polling', 'websocket'], upgrade: true, auth: { token: token('up-user') } });
  const engine = socket.io.engine;
  assert.equal(engine.transport.name, 'polling', 'the first transport is polling');
  const upgraded = new Promise((resolve) => engine.once('upgrade', (transport) => resolve(transport.name)));
  await whenConnected(socket);
  await roundTrip(socket, 'up-user');
  assert.equal(await withTimeout(upgraded, 5000, 'engine upgrade'), 'websocket');
  assert.equal(engine.transport.name, 'websocket');
  await roundTrip(socket, 'up-user'); // and over the upgraded transport
  socket.close();
});
