// Messages for an offline user survive a restart of the instance that queued them
// (issue: collaboration events): on one instance with its SQLite file, and in a cluster
// on PostgreSQL where the user comes back through a new instance.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { connectAs, emitAck, openSocket, record, signToken, startServer, uniq, whenConnected } from './helpers.mjs';
import { startCluster } from './services.mjs';

const cleanup = [];
after(async () => {
  for (const fn of cleanup.reverse()) await fn();
});

/** Sends three direct messages to `to` through `server`; all must be queued. */
async function queueMessages(server, to) {
  const sender = await connectAs(server, { userId: uniq('sender'), name: 'Sender' });
  const texts = ['first', 'second', 'third'];
  for (const message of texts) {
    const ack = await emitAck(sender, 'direct_message', { to, message });
    assert.equal(ack.delivered, false, JSON.stringify(ack));
  }
  sender.close();
  return texts;
}

/** Connects `user` and returns the direct messages received before its first ack. */
async function receive(server, user) {
  const s = openSocket(server, { auth: { token: signToken({ userId: user }) } });
  const got = record(s, 'direct_message');
  await whenConnected(s);
  assert.equal((await emitAck(s, 'join_room', `presence:${user}`)).success, true);
  s.close();
  return got.events.map((m) => ({ message: m.message, offline: m.offline }));
}

test('one instance: queued messages survive a restart (same SQLite file)', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trestle-restart-'));
  cleanup.push(() => fs.rmSync(dir, { recursive: true, force: true }));
  const env = { DATABASE_URL: `sqlite://${path.join(dir, 'trestle.db')}` };
  const user = uniq('away');
  const first = await startServer(env);
  const texts = await queueMessages(first, user);
  await first.stop();

  const second = await startServer(env);
  cleanup.push(() => second.stop());
  assert.deepEqual(await receive(second, user), texts.map((message) => ({ message, offline: true })));
  assert.deepEqual(await receive(second, user), [], 'delivered once');
});

test('cluster: the queuing instance restarts; the user comes back through a new instance', async () => {
  const cluster = await startCluster(2);
  cleanup.push(() => cluster.stop());
  const [A] = cluster.instances;
  const user = uniq('away');
  const texts = await queueMessages(A, user);
  await A.stop();
  const replacement = await startServer({ REDIS_URL: cluster.redis.url, DATABASE_URL: cluster.database });
  cleanup.push(() => replacement.stop());
  assert.deepEqual(await receive(replacement, user), texts.map((message) => ({ message, offline: true })));
  assert.deepEqual(await receive(cluster.instances[1], user), [], 'delivered once, on any instance');
});

test('two sockets of one user connecting at once on one instance get the queued messages once between them', async () => {
  const server = await startServer();
  cleanup.push(() => server.stop());
  const user = uniq('twin');
  const texts = await queueMessages(server, user);
  const received = await Promise.all([receive(server, user), receive(server, user)]);
  const all = received.flat().map((m) => m.message);
  assert.deepEqual(all.sort(), [...texts].sort(), `got ${JSON.stringify(received)}`);
});
