// Three instances behind one Redis behave as one server (issue: scale-out), on a Redis server
// and on a Redis Cluster of three masters (issue 15).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { API_KEY, IS_REFERENCE, apiEmit, assertErrorAck, connectAs, emitAck, expectNoEvent, uniq, waitFor } from './helpers.mjs';
import { startCluster, startRedis, startRedisCluster } from './services.mjs';

// The same scenarios on one Redis server and on a Redis Cluster (REDIS_URL redis-cluster://…).
const backends = [
  { name: 'one Redis', start: () => startRedis() },
  { name: 'a Redis Cluster of three masters', start: () => startRedisCluster(), skip: IS_REFERENCE && 'Trestle only' },
];

for (const backend of backends) describe(`three instances, ${backend.name}`, { skip: backend.skip }, () => {
  let redis;
  let cluster;
  let A;
  let B;
  let C;
  before(async () => {
    redis = await backend.start();
    cluster = await startCluster(3, { MAX_ROOM_SIZE: 2 }, redis);
    [A, B, C] = cluster.instances;
  });
  after(async () => {
    await cluster?.stop();
    await redis?.stop();
  });

  test('POST /api/emit on C reaches clients on A and B', async () => {
    const p = uniq('p');
    const a = await connectAs(A, { userId: uniq('a'), projects: [p] });
    const b = await connectAs(B, { userId: uniq('b'), projects: [p] });
    const got = [waitFor(a, 'resource_updated'), waitFor(b, 'resource_updated')];
    const res = await apiEmit(C, { rooms: [`project:${p}`], event: 'resource_updated', data: { id: 1 } }, API_KEY);
    assert.equal(res.status, 202);
    assert.deepEqual(await Promise.all(got), [{ id: 1 }, { id: 1 }]);
    a.close();
    b.close();
  });

  test('broadcast_room from A reaches the room on B and C, not the sender', async () => {
    const p = uniq('p');
    const sender = await connectAs(A, { userId: uniq('s'), projects: [p], permissions: ['room_broadcast'] });
    const b = await connectAs(B, { userId: uniq('b'), projects: [p] });
    const c = await connectAs(C, { userId: uniq('c'), projects: [p] });
    const got = [waitFor(b, 'markup_moved'), waitFor(c, 'markup_moved')];
    const quiet = expectNoEvent(sender, 'markup_moved', 300);
    assert.deepEqual(await emitAck(sender, 'broadcast_room', `project:${p}`, 'markup_moved', { x: 3 }), { success: true });
    assert.deepEqual(await Promise.all(got), [{ x: 3 }, { x: 3 }]);
    await quiet;
    for (const s of [sender, b, c]) s.close();
  });

  test('user_joined and the room count cross instances; the room cap is cluster-wide', async () => {
    const t = uniq('t');
    const claims = () => ({ userId: uniq('u'), tasks: [t] });
    const a = await connectAs(A, claims());
    const b = await connectAs(B, claims());
    const c = await connectAs(C, claims());
    assert.deepEqual(await emitAck(a, 'join_room', `task:${t}`), { success: true, room: `task:${t}`, size: 1 });
    const joined = waitFor(a, 'user_joined');
    assert.deepEqual(await emitAck(b, 'join_room', `task:${t}`), { success: true, room: `task:${t}`, size: 2 });
    assert.equal((await joined).roomId, `task:${t}`);
    assertErrorAck(await emitAck(c, 'join_room', `task:${t}`), 'ROOM_FULL');
    const left = waitFor(b, 'user_left');
    a.close();
    assert.equal((await left).roomId, `task:${t}`);
    assert.equal((await emitAck(c, 'join_room', `task:${t}`)).size, 2);
    b.close();
    c.close();
  });

  test('a message to one socket id on another instance', async () => {
    const user = uniq('u');
    const target = await connectAs(C, { userId: user });
    const sibling = await connectAs(B, { userId: user });
    const got = waitFor(target, 'just_you');
    const quiet = expectNoEvent(sibling, 'just_you', 300);
    assert.equal((await apiEmit(A, { rooms: [target.id], event: 'just_you', data: 7 }, API_KEY)).status, 202);
    assert.equal(await got, 7);
    await quiet;
    target.close();
    sibling.close();
  });
});

describe('REDIS_PREFIX: two deployments on one Redis', () => {
  let redis;
  let staging;
  let prod;
  before(async () => {
    redis = await startRedis();
    staging = await startCluster(2, { REDIS_PREFIX: 'staging:' }, redis);
    prod = await startCluster(1, { REDIS_PREFIX: 'prod:' }, redis);
  });
  after(async () => {
    await staging.stop();
    await prod.stop();
    await redis.stop();
  });

  test('each deployment hears only itself, and every key and channel carries its prefix', async () => {
    const p = uniq('p');
    const [S1, S2] = staging.instances;
    const [P1] = prod.instances;
    const s2 = await connectAs(S2, { userId: uniq('s'), projects: [p] });
    const p1 = await connectAs(P1, { userId: uniq('p'), projects: [p] });
    const got = waitFor(s2, 'resource_updated');
    const quiet = expectNoEvent(p1, 'resource_updated', 300);
    assert.equal((await apiEmit(S1, { rooms: [`project:${p}`], event: 'resource_updated', data: { id: 2 } }, API_KEY)).status, 202);
    assert.deepEqual(await got, { id: 2 });
    await quiet;
    const cli = (...args) => execFileSync('redis-cli', ['-p', String(redis.port), '--raw', ...args], { encoding: 'utf8' }).split('\n').filter(Boolean);
    const keys = cli('KEYS', '*');
    const channels = [...cli('PUBSUB', 'CHANNELS'), ...cli('PUBSUB', 'SHARDCHANNELS')];
    assert.ok(keys.some((k) => k.startsWith('staging:{trestle:presence}:')), `keys: ${keys}`);
    assert.ok(keys.some((k) => k.startsWith('prod:{trestle:presence}:')), `keys: ${keys}`);
    assert.ok(channels.some((c) => c.startsWith('staging:socket.io')), `channels: ${channels}`);
    const stray = [...keys, ...channels].filter((n) => !n.startsWith('staging:') && !n.startsWith('prod:'));
    assert.deepEqual(stray, [], 'keys or channels without a prefix');
    s2.close();
    p1.close();
  });
});
