// Issue 13, findings 6 and 9, with a real Redis and two instances: a hung Redis (the
// process stopped with SIGSTOP, its TCP connections still open) makes no caller wait on it
// in turn, `/api/emit` tells the publisher the event did not reach the cluster, and a Redis
// that comes back empty gets every instance's users back with their status, unannounced.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { API_KEY, apiEmit, connectAs, emitAck, expectNoEvent, flush, httpGet, record, uniq, waitFor, withTimeout } from './helpers.mjs';
import { startCluster } from './services.mjs';

const delay = (ms) => new Promise((r) => setTimeout(r, ms));

/** Runs `f`, failing when it has not settled within `ms`; resolves { value, ms }. */
async function within(ms, what, f) {
  const t0 = Date.now();
  const value = await withTimeout(f(), ms, what);
  return { value, ms: Date.now() - t0 };
}

/** Polls GET /ready until it answers `status`. */
async function readyBecomes(server, status, withinMs) {
  const t0 = Date.now();
  for (;;) {
    const res = await httpGet(server, '/ready');
    if (res.status === status) return;
    if (Date.now() - t0 > withinMs) assert.fail(`/ready still ${res.status} after ${withinMs} ms`);
    await delay(100); // a state with no event to wait on: poll it
  }
}

const clusters = [];
let hung = null; // the pid of a Redis left stopped by a failing test
after(async () => {
  if (hung) process.kill(hung, 'SIGCONT');
  await Promise.all(clusters.map((c) => c.stop()));
});

test('hung Redis: connections, join_room and a comment with 50 mentions answer within bounds; /ready 503; /api/emit 503 CLUSTER_UNAVAILABLE delivering nothing, then 202 everywhere', async (t) => {
  const cluster = await startCluster(2);
  clusters.push(cluster);
  const [A, B] = cluster.instances;
  const p = uniq('p');
  const room = `project:${p}`;
  const author = await connectAs(A, { userId: uniq('author'), projects: [p], permissions: ['room_broadcast'] });
  const peer = await connectAs(A, { userId: uniq('peer'), projects: [p] });
  const remote = await connectAs(B, { userId: uniq('remote'), projects: [p] });
  // 50 mentions: 5 users online on this instance (they get `mention` live), 45 offline.
  const mentions = Array.from({ length: 50 }, () => uniq('m'));
  const liveHere = [];
  for (const id of mentions.slice(0, 5)) liveHere.push(await connectAs(A, { userId: id, projects: [p] }));

  const changes = record(remote, 'status_change');
  hung = cluster.redis.pid;
  process.kill(hung, 'SIGSTOP');

  // The first Redis call after the hang waits out REDIS_TIMEOUT_MS (500 ms) and marks Redis
  // down; the calls after it do not wait (before: 2 s each, one after another).
  const lateIds = Array.from({ length: 6 }, () => uniq('late'));
  const conn = await within(1500, 'a new connection while Redis is hung', () => connectAs(A, { userId: lateIds[0], projects: [p] }));
  const more = await within(1500, 'five more connections, one after another', async () => {
    const out = [];
    for (const id of lateIds.slice(1)) out.push(await connectAs(A, { userId: id, projects: [p] }));
    return out;
  });
  const join = await within(1500, 'three join_room while Redis is hung', async () => {
    const acks = [];
    for (const s of more.value.slice(0, 3)) acks.push(await emitAck(s, 'join_room', `presence:${uniq('x')}`));
    return acks;
  });
  for (const ack of join.value) assert.equal(ack.success, true, JSON.stringify(ack));
  const mentioned = Promise.all(liveHere.map((s) => waitFor(s, 'mention', 3000)));
  const comment = await within(2000, 'new_comment with 50 mentions while Redis is hung', () =>
    emitAck(author, 'new_comment', { room: `${room}:comments`, content: 'all hands', mentions }),
  );
  assert.equal(comment.value.success, true, JSON.stringify(comment.value));
  await mentioned; // the online ones got it live

  const ready = await within(1000, '/ready while Redis is hung', () => httpGet(A, '/ready'));
  assert.equal(ready.value.status, 503);
  assert.ok(ready.value.body.failed.includes('redis'), JSON.stringify(ready.value.body));

  // The publisher is told the event did not reach the cluster, and nothing was delivered,
  // so that its retry delivers it once.
  const nothingHere = expectNoEvent(peer, 'during_hang', 500);
  const emit = await within(1000, '/api/emit while Redis is hung', () =>
    apiEmit(A, { rooms: [room], event: 'during_hang', data: 1 }, API_KEY),
  );
  assert.equal(emit.value.status, 503, JSON.stringify(emit.value.body));
  assert.equal(emit.value.body.success, false);
  assert.equal(emit.value.body.code, 'CLUSTER_UNAVAILABLE');
  assert.equal(typeof emit.value.body.error, 'string');
  await nothingHere;

  // Client events keep reaching this instance's sockets.
  const relayed = waitFor(peer, 'hung_relay', 2000);
  const relay = await within(1000, 'broadcast_room while Redis is hung', () => emitAck(author, 'broadcast_room', room, 'hung_relay', 2));
  assert.deepEqual(relay.value, { success: true });
  assert.equal(await relayed, 2);

  t.diagnostic(
    `hung Redis: first connect ${conn.ms} ms, 5 more connects ${more.ms} ms, 3 join_room ${join.ms} ms, new_comment with 50 mentions ${comment.ms} ms, ` +
      `/ready ${ready.ms} ms, /api/emit ${emit.ms} ms, broadcast_room ${relay.ms} ms`,
  );

  process.kill(hung, 'SIGCONT');
  hung = null;
  await readyBecomes(A, 200, 5000);
  await readyBecomes(B, 200, 5000);
  const onA = waitFor(peer, 'after_hang', 3000);
  const onB = waitFor(remote, 'after_hang', 3000);
  const res = await apiEmit(A, { rooms: [room], event: 'after_hang', data: 3 }, API_KEY);
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.deepEqual(res.body, { success: true });
  assert.equal(await onA, 3);
  assert.equal(await onB, 3);
  // The users who connected during the hang are announced online once Redis is back
  // (their instance's resync), once each.
  await withTimeout(
    (async () => {
      while (!lateIds.every((id) => changes.events.some((e) => e.userId === id))) await delay(50); // the resync has no event of its own
    })(),
    5000,
    'status_change online for the users who connected during the hang',
  );
  await flush(A, remote);
  await flush(B, remote);
  for (const id of lateIds) {
    assert.deepEqual(changes.events.filter((e) => e.userId === id).map((e) => e.status), ['online'], id);
  }
});

/** get_presence → { [id]: status } */
async function statuses(socket, ids) {
  const ack = await emitAck(socket, 'get_presence', { userIds: ids });
  assert.equal(ack.success, true, JSON.stringify(ack));
  return ack.presence;
}

test('Redis restarted empty: every user is back with their status (away stays away, lastSeen kept) and watchers get no status_change', async (t) => {
  const cluster = await startCluster(2);
  clusters.push(cluster);
  const [A, B] = cluster.instances;
  const p = uniq('p');
  const ids = { away: uniq('away'), onA: uniq('ona'), onB: uniq('onb'), both: uniq('both'), wA: uniq('wa'), wB: uniq('wb') };
  const join = (server, id) => connectAs(server, { userId: id, projects: [p] });
  const away = await join(A, ids.away);
  assert.deepEqual(await emitAck(away, 'set_status', { status: 'away' }), { success: true, status: 'away' });
  const sockets = [away, await join(A, ids.onA), await join(B, ids.onB), await join(A, ids.both), await join(B, ids.both)];
  const wA = await join(A, ids.wA);
  const wB = await join(B, ids.wB);
  // Everything announced so far has arrived; from here on nothing is to change.
  await flush(A, wA, wB);
  await flush(B, wA, wB);
  const seen = [record(wA, 'status_change'), record(wB, 'status_change')];
  const all = Object.values(ids);
  const before = await statuses(wA, all);
  assert.equal(before[ids.away].status, 'away');

  await cluster.redis.stop();
  await cluster.redis.start(); // empty: nothing saved
  await readyBecomes(A, 200, 10_000);
  await readyBecomes(B, 200, 10_000);
  // Each instance writes its users back: poll until Redis has them all again.
  const t0 = Date.now();
  let now;
  for (;;) {
    now = await statuses(wA, all).catch((e) => ({ error: e.message }));
    if (all.every((id) => now[id]?.status === before[id].status)) break;
    if (Date.now() - t0 > 10_000) assert.fail(`presence not restored: ${JSON.stringify(now)} (before: ${JSON.stringify(before)})`);
    await delay(100); // state shown only on request: poll it
  }
  t.diagnostic(`presence restored ${Date.now() - t0} ms after /ready was 200 on both instances`);
  assert.equal(now[ids.away].status, 'away', 'a user who had set away is still away');
  assert.equal(now[ids.away].lastSeen, before[ids.away].lastSeen, 'lastSeen of the away user kept');
  // One heartbeat later (2 s, when each instance finds Redis had lost it and resyncs
  // again), still nothing announced.
  await delay(2500); // the heartbeat has no event to wait on
  await flush(A, wA, wB);
  await flush(B, wA, wB);
  assert.deepEqual(seen[0].events, [], 'watcher on A got a status_change that did not happen');
  assert.deepEqual(seen[1].events, [], 'watcher on B got a status_change that did not happen');
  assert.equal((await statuses(wB, [ids.away]))[ids.away].status, 'away');

  // Presence still works afterwards: a real change is announced once.
  const change = waitFor(wB, 'status_change', 3000, (e) => e.userId === ids.away);
  assert.deepEqual(await emitAck(away, 'set_status', { status: 'online' }), { success: true, status: 'online' });
  assert.equal((await change).status, 'online');
  for (const s of [...sockets, wA, wB]) s.close();
});
