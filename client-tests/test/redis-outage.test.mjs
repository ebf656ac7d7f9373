// Redis goes away and comes back while clients are connected: /ready reports it, local
// delivery keeps working, cross-instance delivery resumes by itself (issue: scale-out).
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { API_KEY, apiEmit, connectAs, emitAck, expectNoEvent, httpGet, uniq, waitFor } from './helpers.mjs';
import { startCluster } from './services.mjs';

const delay = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls GET /ready until it answers `status`; returns the milliseconds it took. */
async function readyBecomes(server, status, withinMs) {
  const t0 = Date.now();
  for (;;) {
    const res = await httpGet(server, '/ready');
    if (res.status === status) return { ms: Date.now() - t0, body: res.body };
    if (Date.now() - t0 > withinMs) assert.fail(`/ready still ${res.status} after ${withinMs} ms`);
    await delay(100); // a state that has no event to wait on: poll it
  }
}

let cluster;
after(() => cluster?.stop());

test('Redis restart: 503 naming redis, local delivery of client events meanwhile, /api/emit 503 CLUSTER_UNAVAILABLE, cross-instance delivery back within 10 s', async () => {
  cluster = await startCluster(2);
  const [A, B] = cluster.instances;
  const p = uniq('p');
  const a1Id = uniq('a');
  const a1 = await connectAs(A, { userId: a1Id, projects: [p], permissions: ['room_broadcast'] });
  const a2 = await connectAs(A, { userId: uniq('a'), projects: [p] });
  const b = await connectAs(B, { userId: uniq('b'), projects: [p] });
  const room = `project:${p}`;

  await cluster.redis.stop();
  const down = await readyBecomes(A, 503, 5000);
  assert.deepEqual(down.body, { status: 'unavailable', failed: ['redis'] });

  // The publish API says the event did not reach the cluster and delivers nothing (so
  // that the publisher's retry delivers it once); client events reach A's sockets.
  const nothing = expectNoEvent(a1, 'during_outage', 300);
  const refused = await apiEmit(A, { rooms: [room], event: 'during_outage', data: 1 }, API_KEY);
  assert.equal(refused.status, 503);
  assert.equal(refused.body.code, 'CLUSTER_UNAVAILABLE');
  assert.equal(refused.body.success, false);
  await nothing;
  const relayed = waitFor(a2, 'outage_relay', 5000);
  assert.deepEqual(await emitAck(a1, 'broadcast_room', room, 'outage_relay', 2), { success: true });
  assert.equal(await relayed, 2);
  // join_room still answers, counting this instance.
  assert.equal((await emitAck(a2, 'join_room', `presence:x`)).success, true);
  // Joins and leaves are announced to the room's members on this instance (every room
  // emit goes through the one cluster emit with its local fallback; an emit straight to
  // the Redis adapter fails at its publish and reaches no one, as user_joined once did).
  const watched = `presence:${uniq('w')}`;
  assert.equal((await emitAck(a2, 'join_room', watched)).success, true);
  const joined = waitFor(a2, 'user_joined', 3000, (ev) => ev.roomId === watched);
  assert.deepEqual(await emitAck(a1, 'join_room', watched), { success: true, room: watched, size: 2 });
  assert.deepEqual(await joined, { userId: a1Id, roomId: watched });
  const left = waitFor(a2, 'user_left', 3000, (ev) => ev.roomId === watched);
  assert.equal((await emitAck(a1, 'leave_room', watched)).success, true);
  assert.deepEqual(await left, { userId: a1Id, roomId: watched });

  await cluster.redis.start();
  const back = Date.now();
  await readyBecomes(A, 200, 10_000);
  await readyBecomes(B, 200, 10_000);

  // Cross-instance delivery resumes by itself: emit on A until B's client hears it.
  let i = 0;
  let heard = false;
  b.on('after_outage', () => (heard = true));
  while (!heard) {
    assert.ok(Date.now() - back < 10_000, 'cross-instance delivery did not resume within 10 s');
    await apiEmit(A, { rooms: [room], event: 'after_outage', data: ++i }, API_KEY);
    await delay(200); // measuring recovery time: one emit per 200 ms
  }
  // And the other way round.
  const toA = waitFor(a2, 'from_b', 3000);
  assert.equal((await apiEmit(B, { rooms: [room], event: 'from_b', data: 'x' }, API_KEY)).status, 202);
  assert.equal(await toA, 'x');
  for (const s of [a1, a2, b]) s.close();
});
