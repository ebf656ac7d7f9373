// Trestle on a Redis Cluster (issue 15): REDIS_URL `redis-cluster://…` naming a real local
// cluster of three masters. The adapter's shard channels live on the nodes serving their
// slots and the presence keys in one slot; a master restarted (its keys lost, its slots
// kept) brings cross-instance delivery and presence back by themselves; a hung master
// shows in /ready. The scenarios shared
// with one Redis server run on the cluster too, in cluster.test.mjs and presence.test.mjs.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import {
  API_KEY,
  IS_REFERENCE,
  apiEmit,
  apiEmitAccepted,
  assertErrorAck,
  connectAs,
  emitAck,
  expectNoEvent,
  httpGet,
  uniq,
  waitFor,
  waitUntil,
} from './helpers.mjs';
import { clusterNodeOf, startCluster, startRedisCluster } from './services.mjs';

const GRACE = 1000;
/** The adapter's channel for broadcasts to every instance (namespace `/`, no REDIS_PREFIX). */
const BROADCAST_CHANNEL = 'socket.io-request#/#';
/** Any presence key: they all carry the hash tag `{trestle:presence}`. */
const PRESENCE_KEY = '{trestle:presence}:pending';

const cli = (node, ...args) =>
  execFileSync('redis-cli', ['-h', '127.0.0.1', '-p', String(node.port), '--raw', ...args], { encoding: 'utf8' })
    .split('\n')
    .filter(Boolean);

const readyIs = (server, status) => async () => (await httpGet(server, '/ready')).status === status;

/** get_presence of `userIds` through `socket`: the `presence` map. */
async function presenceOf(socket, userIds) {
  const ack = await emitAck(socket, 'get_presence', { userIds });
  assert.equal(ack.success, true, JSON.stringify(ack));
  return ack.presence;
}

/** Resolves with the next status_change about `userId` with `status` at `socket`. */
const statusChange = (socket, userId, status, timeoutMs = 5000) =>
  waitFor(socket, 'status_change', timeoutMs, (e) => e?.userId === userId && e?.status === status);

describe('two instances on a Redis Cluster of three masters', { skip: IS_REFERENCE && 'Trestle only' }, () => {
  let redis;
  let cluster;
  let A;
  let B;
  before(async () => {
    redis = await startRedisCluster();
    cluster = await startCluster(2, { PRESENCE_GRACE_MS: GRACE, MAX_ROOM_SIZE: 2 }, redis);
    [A, B] = cluster.instances;
  });
  after(async () => {
    await cluster?.stop();
    await redis?.stop();
  });

  test('the shard channels are subscribed on the nodes serving them; every presence key is in one slot', async () => {
    // Presence keys exist once a user is online.
    const s = await connectAs(A, { userId: uniq('u') });
    const channels = new Map(redis.nodes.map((n) => [n.port, cli(n, 'PUBSUB', 'SHARDCHANNELS')]));
    const broadcastNode = clusterNodeOf(redis, BROADCAST_CHANNEL);
    assert.ok(channels.get(broadcastNode.port).includes(BROADCAST_CHANNEL), `channels by node: ${[...channels]}`);
    assert.deepEqual(cli(broadcastNode, 'PUBSUB', 'SHARDNUMSUB', BROADCAST_CHANNEL), [BROADCAST_CHANNEL, '2']);
    const all = [...channels.values()].flat();
    // Each instance's own request and response channels, spread by their slots.
    assert.equal(all.filter((c) => c.startsWith('socket.io-response#/#')).length, 2, `channels: ${all}`);
    for (const c of all) assert.equal(clusterNodeOf(redis, c).port, [...channels].find(([, cs]) => cs.includes(c))[0], c);

    const presenceNode = clusterNodeOf(redis, PRESENCE_KEY);
    const keys = new Map(redis.nodes.map((n) => [n.port, cli(n, '--scan')]));
    assert.ok(keys.get(presenceNode.port).some((k) => k.startsWith('{trestle:presence}:user:')), `keys: ${[...keys]}`);
    for (const [port, ks] of keys) {
      if (port !== presenceNode.port) assert.deepEqual(ks, [], `keys on another node than the presence slot's`);
    }
    s.close();
  });

  test('rooms, socket ids, room counts and presence across the instances', async () => {
    const p = uniq('p');
    const t = uniq('t');
    const aId = uniq('a');
    const watcher = await connectAs(B, { userId: uniq('w'), projects: [p] });
    const online = statusChange(watcher, aId, 'online');
    const a = await connectAs(A, { userId: aId, projects: [p], tasks: [t], permissions: ['room_broadcast'] });
    await online;
    const b = await connectAs(B, { userId: uniq('b'), projects: [p], tasks: [t] });
    const c = await connectAs(A, { userId: uniq('c'), tasks: [t] });

    const moved = waitFor(b, 'markup_moved');
    assert.deepEqual(await emitAck(a, 'broadcast_room', `project:${p}`, 'markup_moved', { x: 1 }), { success: true });
    assert.deepEqual(await moved, { x: 1 });

    const justB = waitFor(b, 'just_you');
    const quiet = expectNoEvent(watcher, 'just_you', 300);
    assert.equal((await apiEmit(A, { rooms: [b.id], event: 'just_you', data: 7 }, API_KEY)).status, 202);
    assert.equal(await justB, 7);
    await quiet;

    assert.equal((await emitAck(a, 'join_room', `task:${t}`)).size, 1);
    assert.equal((await emitAck(b, 'join_room', `task:${t}`)).size, 2);
    assertErrorAck(await emitAck(c, 'join_room', `task:${t}`), 'ROOM_FULL');

    const away = statusChange(watcher, aId, 'away');
    assert.deepEqual(await emitAck(a, 'set_status', { status: 'away' }), { success: true, status: 'away' });
    await away;
    assert.equal((await presenceOf(b, [aId]))[aId].status, 'away');
    for (const s of [watcher, a, b, c]) s.close();
  });

  test('a hung master, whichever it is: /ready 503 on every instance until it answers again', async () => {
    // A PING names no key, so a client sends it to one node; each master is hung in turn
    // (SIGSTOP: its connections stay open) with no traffic to it, and the probe must see it.
    for (const node of redis.nodes) {
      process.kill(node.pid, 'SIGSTOP');
      try {
        await waitUntil(readyIs(A, 503), 10_000);
        await waitUntil(readyIs(B, 503), 10_000);
      } finally {
        process.kill(node.pid, 'SIGCONT');
      }
      await waitUntil(readyIs(A, 200), 10_000);
      await waitUntil(readyIs(B, 200), 10_000);
    }
  });

  test('a master restarted: Redis is down meanwhile, then delivery, room counts and presence come back', async () => {
    const p = uniq('p');
    const t = uniq('t');
    const ids = { a: uniq('a'), away: uniq('away'), b: uniq('b') };
    const a = await connectAs(A, { userId: ids.a, projects: [p], tasks: [t], permissions: ['room_broadcast'] });
    const a2 = await connectAs(A, { userId: uniq('a2'), projects: [p] });
    const awayUser = await connectAs(A, { userId: ids.away, projects: [p] });
    const b = await connectAs(B, { userId: ids.b, projects: [p], tasks: [t] });
    assert.deepEqual(await emitAck(awayUser, 'set_status', { status: 'away' }), { success: true, status: 'away' });
    const before = await presenceOf(b, Object.values(ids));

    // The node serving both the broadcast channel and the presence keys, when one does (as
    // `redis-cli --cluster create` lays out three masters); else each of the two in turn.
    const nodes = [...new Set([clusterNodeOf(redis, BROADCAST_CHANNEL), clusterNodeOf(redis, PRESENCE_KEY)])];
    for (const node of nodes) {
      await node.stop();
      await waitUntil(readyIs(A, 503), 10_000);
      await waitUntil(readyIs(B, 503), 10_000);
      // While a master is gone, as while Redis is: the publish API refuses, client events
      // reach this instance's sockets.
      const refused = await apiEmit(A, { rooms: [`project:${p}`], event: 'during', data: 1 }, API_KEY);
      assert.equal(refused.status, 503);
      assert.equal(refused.body.code, 'CLUSTER_UNAVAILABLE');
      const local = waitFor(a2, 'local_relay', 5000);
      assert.deepEqual(await emitAck(a, 'broadcast_room', `project:${p}`, 'local_relay', 2), { success: true });
      assert.equal(await local, 2);

      await node.start();
      await redis.ready();
      await waitUntil(readyIs(A, 200), 20_000);
      await waitUntil(readyIs(B, 200), 20_000);
    }

    // Cross-instance delivery, both ways, once every instance has subscribed again.
    const toB = waitFor(b, 'after_restart', 20_000);
    assert.equal((await apiEmitAccepted(A, { rooms: [`project:${p}`], event: 'after_restart', data: 3 }, API_KEY, { withinMs: 20_000 })).status, 202);
    assert.equal(await toB, 3);
    const toA = waitFor(a2, 'from_b', 20_000);
    assert.equal((await apiEmitAccepted(B, { rooms: [`project:${p}`], event: 'from_b', data: 4 }, API_KEY, { withinMs: 20_000 })).status, 202);
    assert.equal(await toA, 4);
    const moved = waitFor(b, 'markup_moved', 5000);
    assert.deepEqual(await emitAck(a, 'broadcast_room', `project:${p}`, 'markup_moved', { x: 5 }), { success: true });
    assert.deepEqual(await moved, { x: 5 });

    // The cross-instance room count, through the instances' own channels.
    assert.equal((await emitAck(a, 'join_room', `task:${t}`)).size, 1);
    assert.equal((await emitAck(b, 'join_room', `task:${t}`)).size, 2);

    // The restarted node lost the presence keys: each instance wrote its users back, with
    // the status they had (away stays away), and status changes cross instances again.
    await waitUntil(async () => {
      const now = await presenceOf(b, Object.values(ids));
      return Object.values(ids).every((id) => now[id].status === before[id].status);
    }, 20_000);
    assert.deepEqual(
      Object.fromEntries(Object.entries(await presenceOf(a, Object.values(ids))).map(([id, e]) => [id, e.status])),
      { [ids.a]: 'online', [ids.away]: 'away', [ids.b]: 'online' },
    );
    const back = statusChange(b, ids.away, 'online');
    assert.deepEqual(await emitAck(awayUser, 'set_status', { status: 'online' }), { success: true, status: 'online' });
    await back;
    const gone = statusChange(b, ids.a, 'offline', 10_000);
    a.close();
    await gone;
    for (const s of [a2, awayUser, b]) s.close();
  });
});
