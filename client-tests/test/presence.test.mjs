// Sections 4 (set_status, user_active, get_presence), 6 (Presence) and 10 (Presence, Names,
// ids, times): status_change on the first connect, set_status, offline after the grace period
// with lastSeen the last disconnect, no flapping on a reload or a second socket, get_presence,
// user_active; on one instance, across three instances, and after an instance crashes (the
// last two on one Redis server and on a Redis Cluster).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  IS_REFERENCE,
  ISO_UTC,
  assertErrorAck,
  assertRecentIso,
  connectAs,
  emitAck,
  flush,
  join,
  record,
  serverPool,
  uniq,
  waitFor,
} from './helpers.mjs';
import { startCluster, startRedis, startRedisCluster } from './services.mjs';

const { start } = serverPool(after);

const delay = (ms) => new Promise((r) => setTimeout(r, ms));

// A short grace period keeps the offline tests fast; one describe keeps the default (5 s).
const GRACE = 1000;

/** The status_change events about `userId` among those recorded (a watcher also hears others). */
const about = (rec, userId) => rec.events.filter((e) => e?.userId === userId);

/** Resolves with the next status_change about `userId` with `status`. */
const waitStatus = (socket, userId, status, timeoutMs = 3000) =>
  waitFor(socket, 'status_change', timeoutMs, (e) => e?.userId === userId && e?.status === status);

function assertStatusChange(ev, userId, status) {
  assert.deepEqual(Object.keys(ev).sort(), ['lastSeen', 'status', 'userId'], `status_change keys: ${JSON.stringify(ev)}`);
  assert.equal(ev.userId, userId);
  assert.equal(ev.status, status);
  assertRecentIso(ev.lastSeen, 'lastSeen');
}

async function setStatus(socket, status) {
  assert.deepEqual(await emitAck(socket, 'set_status', { status }), { success: true, status });
}

/** get_presence, asserting the ack's shape; resolves with its `presence` map. */
async function getPresence(socket, userIds) {
  const ack = await emitAck(socket, 'get_presence', { userIds });
  assert.equal(ack.success, true, `get_presence: ${JSON.stringify(ack)}`);
  assert.deepEqual(Object.keys(ack).sort(), ['presence', 'success'], `get_presence ack: ${JSON.stringify(ack)}`);
  for (const [id, entry] of Object.entries(ack.presence)) {
    assert.deepEqual(Object.keys(entry).sort(), ['lastSeen', 'status'], `presence of ${id}: ${JSON.stringify(entry)}`);
    if (entry.lastSeen !== null) assert.match(entry.lastSeen, ISO_UTC, `lastSeen of ${id}`);
  }
  return ack.presence;
}

/** Flushes through every instance: an event announced by any of them has then arrived. */
const flushAll = (instances, ...sockets) => Promise.all(instances.map((inst) => flush(inst, ...sockets)));

/** Checks an offline status_change's lastSeen: the time of the disconnect at `closedAt`, not of the announcement. */
function assertLastSeenIsDisconnect(ev, closedAt, arrivedAt) {
  const seen = Date.parse(ev.lastSeen);
  assert.ok(seen >= closedAt - 1000, `lastSeen ${ev.lastSeen} is before the disconnect (${new Date(closedAt).toISOString()})`);
  assert.ok(seen <= arrivedAt, `lastSeen ${ev.lastSeen} is after the event arrived (${new Date(arrivedAt).toISOString()})`);
  assert.ok(
    seen <= closedAt + GRACE / 2,
    `lastSeen ${ev.lastSeen} is the time of the announcement, not of the disconnect (${new Date(closedAt).toISOString()})`,
  );
}

describe(`presence, one instance (PRESENCE_GRACE_MS=${GRACE})`, () => {
  let server;
  before(async () => {
    server = await start({ PRESENCE_GRACE_MS: GRACE });
  });

  test('first connect: status_change online to project:{p}, team:{m} and presence:{u} watchers; outsiders get nothing', async () => {
    const p = uniq('p');
    const m = uniq('m');
    const X = uniq('x');
    const byProject = await connectAs(server, { userId: uniq('wp'), projects: [p] });
    const byTeam = await connectAs(server, { userId: uniq('wm'), teams: [m] });
    const byRoom = await connectAs(server, { userId: uniq('wr') }); // shares nothing with X
    await join(byRoom, `presence:${X}`);
    const outsider = await connectAs(server, { userId: uniq('out'), projects: [uniq('p')], teams: [uniq('m')] });
    const watchers = [byProject, byTeam, byRoom];
    const recs = watchers.map((s) => record(s, 'status_change'));
    const outRec = record(outsider, 'status_change');

    const got = watchers.map((s) => waitStatus(s, X, 'online'));
    const subject = await connectAs(server, { userId: X, projects: [p], teams: [m] });
    for (const ev of await Promise.all(got)) assertStatusChange(ev, X, 'online');
    await flush(server, ...watchers, outsider);
    for (const rec of recs) assert.equal(about(rec, X).length, 1, JSON.stringify(rec.events));
    assert.deepEqual(about(outRec, X), []);
    for (const s of [...watchers, outsider, subject]) s.close();
  });

  test('ids in status_change are strings: a numeric userId claim', async () => {
    const p = uniq('p');
    const n = 7_000_000_000 + Math.floor(Math.random() * 1e9);
    const watcher = await connectAs(server, { userId: uniq('w'), projects: [p] });
    const got = waitFor(watcher, 'status_change', 3000, (e) => String(e?.userId) === String(n));
    const subject = await connectAs(server, { userId: n, projects: [p] });
    assertStatusChange(await got, String(n), 'online');
    watcher.close();
    subject.close();
  });

  test('a watcher in all three rooms gets exactly one status_change per transition: online, away, online, offline', async () => {
    const p = uniq('p');
    const m = uniq('m');
    const X = uniq('x');
    const watcher = await connectAs(server, { userId: uniq('w'), projects: [p], teams: [m] });
    await join(watcher, `presence:${X}`);
    const rec = record(watcher, 'status_change');
    const step = async (status, action, timeoutMs = 3000) => {
      const got = waitStatus(watcher, X, status, timeoutMs);
      await action();
      assertStatusChange(await got, X, status);
    };
    let subject;
    await step('online', async () => {
      subject = await connectAs(server, { userId: X, projects: [p], teams: [m] });
    });
    await step('away', () => setStatus(subject, 'away'));
    await step('online', () => setStatus(subject, 'online'));
    await step('offline', () => subject.close(), GRACE + 5000);
    await delay(300); // a second announcement of the same offline would come from the same timer
    await flush(server, watcher);
    assert.deepEqual(
      about(rec, X).map((e) => e.status),
      ['online', 'away', 'online', 'offline'],
      JSON.stringify(about(rec, X)),
    );
    watcher.close();
  });

  test('set_status: ack {success, status}; away and back; no event when nothing changes; offline, busy and bad payloads INVALID_PAYLOAD', async () => {
    const p = uniq('p');
    const X = uniq('x');
    const watcher = await connectAs(server, { userId: uniq('w'), projects: [p] });
    // The online change goes to the watcher's socket, which may deliver it after X's own
    // connect resolves: wait for it before counting.
    const online = waitStatus(watcher, X, 'online');
    const s1 = await connectAs(server, { userId: X, projects: [p] });
    const s2 = await connectAs(server, { userId: X, projects: [p] });
    await online;
    const recs = [watcher, s1, s2].map((s) => record(s, 'status_change'));
    const counts = () => recs.map((r) => about(r, X).length);

    // away reaches the watcher and both of the user's sockets (they are in presence:{X})
    const got = [watcher, s1, s2].map((s) => waitStatus(s, X, 'away'));
    await setStatus(s1, 'away');
    for (const ev of await Promise.all(got)) assertStatusChange(ev, X, 'away');
    await flush(server, watcher, s1, s2);
    assert.deepEqual(counts(), [1, 1, 1]);
    assert.equal((await getPresence(watcher, [X]))[X].status, 'away');

    // away again, from either socket: acked, nothing sent
    await setStatus(s1, 'away');
    await setStatus(s2, 'away');
    await flush(server, watcher, s1, s2);
    assert.deepEqual(counts(), [1, 1, 1]);

    // refused, and nothing changes
    assertErrorAck(await emitAck(s1, 'set_status', { status: 'offline' }), 'INVALID_PAYLOAD');
    assertErrorAck(await emitAck(s1, 'set_status', { status: 'busy' }), 'INVALID_PAYLOAD');
    for (const payload of [{}, { status: 'AWAY' }, { status: 1 }, 'away', null]) {
      assertErrorAck(await emitAck(s1, 'set_status', payload), 'INVALID_PAYLOAD');
    }
    await flush(server, watcher, s1, s2);
    assert.deepEqual(counts(), [1, 1, 1]);
    assert.equal((await getPresence(watcher, [X]))[X].status, 'away');

    // back online from the other socket
    const back = waitStatus(watcher, X, 'online');
    await setStatus(s2, 'online');
    assertStatusChange(await back, X, 'online');
    await setStatus(s1, 'online'); // no change
    await flush(server, watcher, s1, s2);
    assert.deepEqual(counts(), [2, 2, 2]);
    assert.equal((await getPresence(watcher, [X]))[X].status, 'online');
    for (const s of [watcher, s1, s2]) s.close();
  });

  test('no flapping: closing one of two sockets, or reconnecting within the grace period, sends nothing', async () => {
    const p = uniq('p');
    const X = uniq('x');
    const watcher = await connectAs(server, { userId: uniq('w'), projects: [p] });
    const s1 = await connectAs(server, { userId: X, projects: [p] });
    const s2 = await connectAs(server, { userId: X, projects: [p] });
    await flush(server, watcher);
    const rec = record(watcher, 'status_change');

    s1.close();
    await delay(GRACE + 700); // past the grace period: an offline would have been announced by now
    await flush(server, watcher);
    assert.deepEqual(about(rec, X), [], 'closing one of two sockets announced something');
    assert.equal((await getPresence(watcher, [X]))[X].status, 'online');

    s2.close(); // the last socket; a new one comes half a grace period later (a page reload)
    await delay(GRACE / 2);
    const s3 = await connectAs(server, { userId: X, projects: [p] });
    await delay(GRACE + 700);
    await flush(server, watcher);
    assert.deepEqual(about(rec, X), [], 'a reconnect within the grace period announced something');
    assert.equal((await getPresence(watcher, [X]))[X].status, 'online');
    watcher.close();
    s3.close();
  });

  test('offline after the grace period, not before; lastSeen is the last disconnect; once; online again on the next connect', async () => {
    const p = uniq('p');
    const X = uniq('x');
    const watcher = await connectAs(server, { userId: uniq('w'), projects: [p] });
    const s1 = await connectAs(server, { userId: X, projects: [p] });
    const s2 = await connectAs(server, { userId: X, projects: [p] });
    await flush(server, watcher);
    const rec = record(watcher, 'status_change');

    s1.close();
    await delay(300); // the first close is not the last disconnect
    const offline = waitStatus(watcher, X, 'offline', GRACE + 5000);
    const closedAt = Date.now();
    s2.close();
    const ev = await offline;
    const arrivedAt = Date.now();
    assertStatusChange(ev, X, 'offline');
    assert.ok(arrivedAt - closedAt >= GRACE * 0.8, `offline ${arrivedAt - closedAt} ms after the last close (grace ${GRACE} ms)`);
    assertLastSeenIsDisconnect(ev, closedAt, arrivedAt);
    assert.ok(Date.parse(ev.lastSeen) >= closedAt - 150, `lastSeen ${ev.lastSeen} is the first close, not the last`);

    await delay(300);
    await flush(server, watcher);
    assert.equal(about(rec, X).length, 1, JSON.stringify(about(rec, X)));
    assert.deepEqual((await getPresence(watcher, [X]))[X], { status: 'offline', lastSeen: ev.lastSeen });

    const online = waitStatus(watcher, X, 'online');
    const s3 = await connectAs(server, { userId: X, projects: [p] });
    assertStatusChange(await online, X, 'online');
    assert.equal((await getPresence(watcher, [X]))[X].status, 'online');
    watcher.close();
    s3.close();
  });

  test('get_presence: online, away, offline with lastSeen, never seen (offline, null); duplicates; 200 ids', async () => {
    const p = uniq('p');
    const [on, aw, off, never] = [uniq('on'), uniq('aw'), uniq('off'), uniq('never')];
    const asker = await connectAs(server, { userId: uniq('ask'), projects: [p] });
    const sOn = await connectAs(server, { userId: on });
    const sAw = await connectAs(server, { userId: aw });
    await setStatus(sAw, 'away');
    const offline = waitStatus(asker, off, 'offline', GRACE + 5000);
    const sOff = await connectAs(server, { userId: off, projects: [p] });
    sOff.close();
    const offEv = await offline;

    const presence = await getPresence(asker, [on, aw, off, never, on, off]);
    assert.deepEqual(Object.keys(presence).sort(), [on, aw, off, never].sort());
    assert.equal(presence[on].status, 'online');
    assertRecentIso(presence[on].lastSeen, 'lastSeen of an online user');
    assert.equal(presence[aw].status, 'away');
    assertRecentIso(presence[aw].lastSeen, 'lastSeen of an away user');
    assert.deepEqual(presence[off], { status: 'offline', lastSeen: offEv.lastSeen });
    assert.deepEqual(presence[never], { status: 'offline', lastSeen: null });

    const many = Array.from({ length: 200 }, (_, i) => `${never}-${i}`);
    many[0] = on;
    const big = await getPresence(asker, many);
    assert.equal(Object.keys(big).length, 200);
    assert.equal(big[on].status, 'online');
    assert.deepEqual(big[many[199]], { status: 'offline', lastSeen: null });
    assert.deepEqual(await getPresence(asker, []), {});
    for (const s of [asker, sOn, sAw]) s.close();
  });

  test('get_presence: more than 200 ids, an invalid id, userIds not an array → INVALID_PAYLOAD', async () => {
    const s = await connectAs(server, { userId: uniq('ask') });
    const ok = uniq('ok');
    const payloads = [
      { userIds: Array.from({ length: 201 }, (_, i) => `${ok}-${i}`) },
      { userIds: [ok, 'bad id'] },
      { userIds: [''] },
      { userIds: ['x'.repeat(129)] },
      { userIds: ['a:b'] },
      { userIds: [null] },
      { userIds: [{ id: ok }] },
      { userIds: ok },
      { userIds: { 0: ok } },
      { userIds: null },
      {},
      null,
      ok,
    ];
    for (const payload of payloads) assertErrorAck(await emitAck(s, 'get_presence', payload), 'INVALID_PAYLOAD');
    s.close();
  });

  test('user_active: the room gets {userId, location, activity, timestamp}, sender included; a room the user may join but is not in', async () => {
    const p = uniq('p');
    const t = uniq('t');
    const U = uniq('u');
    const sender = await connectAs(server, { userId: U, projects: [p], tasks: [t] });
    const member = await connectAs(server, { userId: uniq('mem'), projects: [p] });
    const taskMember = await connectAs(server, { userId: uniq('tm'), tasks: [t] });
    await join(taskMember, `task:${t}`);
    const outsider = await connectAs(server, { userId: uniq('out'), projects: [uniq('p')] });
    const all = [sender, member, taskMember, outsider];
    const recs = all.map((s) => record(s, 'user_active'));

    const ack = await emitAck(sender, 'user_active', { location: `project:${p}`, activity: 'viewing the plans' });
    assert.equal(ack.success, true, `user_active: ${JSON.stringify(ack)}`);
    await flush(server, ...all);
    const [senderEvs, memberEvs, taskEvs, outEvs] = recs.map((r) => r.events.splice(0));
    for (const evs of [senderEvs, memberEvs]) {
      assert.equal(evs.length, 1, JSON.stringify(evs));
      const ev = evs[0];
      assert.deepEqual(Object.keys(ev).sort(), ['activity', 'location', 'timestamp', 'userId'], JSON.stringify(ev));
      assert.equal(ev.userId, U);
      assert.equal(ev.location, `project:${p}`);
      assert.equal(ev.activity, 'viewing the plans');
      assertRecentIso(ev.timestamp);
    }
    assert.deepEqual(taskEvs, []);
    assert.deepEqual(outEvs, []);

    // task:{t} is in the sender's claims but not joined: the room gets it, the sender does not
    const ack2 = await emitAck(sender, 'user_active', { location: `task:${t}`, activity: 'editing' });
    assert.equal(ack2.success, true, `user_active: ${JSON.stringify(ack2)}`);
    await flush(server, ...all);
    const [s2, m2, t2, o2] = recs.map((r) => r.events.splice(0));
    assert.equal(t2.length, 1, JSON.stringify(t2));
    assert.equal(t2[0].userId, U);
    assert.equal(t2[0].location, `task:${t}`);
    assert.equal(t2[0].activity, 'editing');
    assertRecentIso(t2[0].timestamp);
    assert.deepEqual([s2, m2, o2], [[], [], []]);
    for (const s of all) s.close();
  });

  test('user_active errors: FORBIDDEN for a room the user may not join, INVALID_ROOM, INVALID_PAYLOAD; nothing sent', async () => {
    const p = uniq('p');
    const other = uniq('q');
    const s = await connectAs(server, { userId: uniq('u'), projects: [p] });
    const member = await connectAs(server, { userId: uniq('mem'), projects: [other, p] });
    const rec = record(member, 'user_active');
    assertErrorAck(await emitAck(s, 'user_active', { location: `project:${other}`, activity: 'peeking' }), 'FORBIDDEN');
    assertErrorAck(await emitAck(s, 'user_active', { location: `notifications:${uniq('x')}`, activity: 'peeking' }), 'FORBIDDEN');
    for (const location of ['nope', 'project:', `Project:${p}`, `project:${p}:nope`, s.id]) {
      assertErrorAck(await emitAck(s, 'user_active', { location, activity: 'x' }), 'INVALID_ROOM');
    }
    for (const payload of [
      { location: `project:${p}` },
      { location: `project:${p}`, activity: 42 },
      { location: `project:${p}`, activity: null },
      { location: `project:${p}`, activity: { a: 1 } },
      { activity: 'x' },
      { location: 42, activity: 'x' },
      null,
      `project:${p}`,
    ]) {
      assertErrorAck(await emitAck(s, 'user_active', payload), 'INVALID_PAYLOAD');
    }
    await flush(server, member);
    assert.deepEqual(rec.events, []);
    s.close();
    member.close();
  });
});

describe('presence, default grace period (5 s)', () => {
  let server;
  before(async () => {
    server = await start(); // PRESENCE_GRACE_MS unset
  });

  test('a page reload (1.5 s gone) shows nothing; a user gone for good is offline about 5 s later', async () => {
    const p = uniq('p');
    const R = uniq('reload');
    const L = uniq('leaver');
    const watcher = await connectAs(server, { userId: uniq('w'), projects: [p] });
    const r1 = await connectAs(server, { userId: R, projects: [p] });
    const l1 = await connectAs(server, { userId: L, projects: [p] });
    await flush(server, watcher);
    const rec = record(watcher, 'status_change');

    const offline = waitStatus(watcher, L, 'offline', 9000);
    const closedAt = Date.now();
    r1.close();
    l1.close();
    await delay(1500); // a slow page reload
    const r2 = await connectAs(server, { userId: R, projects: [p] });
    await flush(server, watcher);
    assert.deepEqual(rec.events, [], 'something was announced within 1.5 s of the close');

    const ev = await offline;
    const elapsed = Date.now() - closedAt;
    assertStatusChange(ev, L, 'offline');
    assert.ok(elapsed >= 4000, `offline ${elapsed} ms after the close (default grace 5000 ms)`);
    // R's offline would have been due at the same time: the reconnect cancelled it
    await delay(500);
    await flush(server, watcher);
    assert.deepEqual(about(rec, R), [], JSON.stringify(about(rec, R)));
    assert.equal(about(rec, L).length, 1);
    const presence = await getPresence(watcher, [R, L]);
    assert.equal(presence[R].status, 'online');
    assert.deepEqual(presence[L], { status: 'offline', lastSeen: ev.lastSeen });
    watcher.close();
    r2.close();
  });
});

// The cluster scenarios run on one Redis server and on a Redis Cluster, where every script
// must find its keys in one hash slot.
const backends = [
  { name: 'Redis', start: () => startRedis() },
  { name: 'a Redis Cluster', start: () => startRedisCluster(), skip: IS_REFERENCE && 'Trestle only' },
];

/** Three instances on a Redis of `backend`'s kind, stopped with the describe. */
function threeInstances(backend) {
  const c = { instances: [] };
  before(async () => {
    c.redis = await backend.start();
    c.cluster = await startCluster(3, { PRESENCE_GRACE_MS: GRACE }, c.redis);
    c.instances = c.cluster.instances;
  });
  after(async () => {
    await c.cluster?.stop();
    await c.redis?.stop();
  });
  return c;
}

for (const backend of backends) describe(`presence, three instances and ${backend.name} (PRESENCE_GRACE_MS=${GRACE})`, { skip: backend.skip }, () => {
  const cluster = threeInstances(backend);
  let A;
  let B;
  let C;
  before(() => {
    [A, B, C] = cluster.instances;
  });

  test('first connect on A: watchers on B and C get one status_change online each, by project, team and presence room', async () => {
    const p = uniq('p');
    const m = uniq('m');
    const X = uniq('x');
    const byProject = await connectAs(B, { userId: uniq('wp'), projects: [p] });
    const byTeam = await connectAs(C, { userId: uniq('wm'), teams: [m] });
    const byRoom = await connectAs(C, { userId: uniq('wr') });
    await join(byRoom, `presence:${X}`);
    const byAll = await connectAs(B, { userId: uniq('wa'), projects: [p], teams: [m] });
    await join(byAll, `presence:${X}`);
    const outsider = await connectAs(B, { userId: uniq('out'), projects: [uniq('p')] });
    const watchers = [byProject, byTeam, byRoom, byAll];
    const recs = watchers.map((s) => record(s, 'status_change'));
    const outRec = record(outsider, 'status_change');

    const got = watchers.map((s) => waitStatus(s, X, 'online'));
    const subject = await connectAs(A, { userId: X, projects: [p], teams: [m] });
    for (const ev of await Promise.all(got)) assertStatusChange(ev, X, 'online');
    await flushAll(cluster.instances, ...watchers, outsider);
    for (const rec of recs) assert.equal(about(rec, X).length, 1, JSON.stringify(rec.events));
    assert.deepEqual(about(outRec, X), []);
    for (const s of [...watchers, outsider, subject]) s.close();
  });

  test('set_status on A reaches watchers on B and C once per change; a repeated status sends nothing', async () => {
    const p = uniq('p');
    const X = uniq('x');
    const wB = await connectAs(B, { userId: uniq('wb'), projects: [p] });
    const wC = await connectAs(C, { userId: uniq('wc'), projects: [p] });
    await join(wC, `presence:${X}`);
    const subject = await connectAs(A, { userId: X, projects: [p] });
    await flushAll(cluster.instances, wB, wC);
    const recs = [wB, wC].map((s) => record(s, 'status_change'));

    let got = [wB, wC].map((s) => waitStatus(s, X, 'away'));
    await setStatus(subject, 'away');
    for (const ev of await Promise.all(got)) assertStatusChange(ev, X, 'away');
    await setStatus(subject, 'away');
    got = [wB, wC].map((s) => waitStatus(s, X, 'online'));
    await setStatus(subject, 'online');
    for (const ev of await Promise.all(got)) assertStatusChange(ev, X, 'online');
    await flushAll(cluster.instances, wB, wC);
    for (const rec of recs) assert.deepEqual(about(rec, X).map((e) => e.status), ['away', 'online']);
    for (const s of [wB, wC, subject]) s.close();
  });

  test('sockets on A and C: closing one sends nothing; a reconnect on B within the grace sends nothing; then offline once', async () => {
    const p = uniq('p');
    const X = uniq('x');
    const watcher = await connectAs(B, { userId: uniq('w'), projects: [p] });
    const onA = await connectAs(A, { userId: X, projects: [p] });
    const onC = await connectAs(C, { userId: X, projects: [p] });
    await flushAll(cluster.instances, watcher);
    const rec = record(watcher, 'status_change');

    onA.close();
    await delay(GRACE + 700); // past the grace period
    await flushAll(cluster.instances, watcher);
    assert.deepEqual(about(rec, X), [], 'closing one of two sockets announced something');
    assert.equal((await getPresence(watcher, [X]))[X].status, 'online');

    onC.close(); // the last socket; the user comes back through another instance half a grace period later
    await delay(GRACE / 2);
    const onB = await connectAs(B, { userId: X, projects: [p] });
    await delay(GRACE + 700);
    await flushAll(cluster.instances, watcher);
    assert.deepEqual(about(rec, X), [], 'a reconnect on another instance within the grace period announced something');
    assert.equal((await getPresence(watcher, [X]))[X].status, 'online');

    const offline = waitStatus(watcher, X, 'offline', GRACE + 5000);
    const closedAt = Date.now();
    onB.close();
    const ev = await offline;
    const arrivedAt = Date.now();
    assertStatusChange(ev, X, 'offline');
    assert.ok(arrivedAt - closedAt >= GRACE * 0.8, `offline ${arrivedAt - closedAt} ms after the last close (grace ${GRACE} ms)`);
    assertLastSeenIsDisconnect(ev, closedAt, arrivedAt);
    await delay(500); // every instance's offline timer has run by now: only one may announce
    await flushAll(cluster.instances, watcher);
    assert.deepEqual(about(rec, X).map((e) => e.status), ['offline']);
    watcher.close();
  });

  test('get_presence on C: a user online on A, away on B, offline after leaving A, and a never-seen user', async () => {
    const p = uniq('p');
    const [on, aw, off, never] = [uniq('on'), uniq('aw'), uniq('off'), uniq('never')];
    const asker = await connectAs(C, { userId: uniq('ask'), projects: [p] });
    const sOn = await connectAs(A, { userId: on });
    const sAw = await connectAs(B, { userId: aw });
    await setStatus(sAw, 'away');
    const offline = waitStatus(asker, off, 'offline', GRACE + 5000);
    const sOff = await connectAs(A, { userId: off, projects: [p] });
    sOff.close();
    const offEv = await offline;

    const presence = await getPresence(asker, [on, aw, off, never, aw]);
    assert.deepEqual(Object.keys(presence).sort(), [on, aw, off, never].sort());
    assert.equal(presence[on].status, 'online');
    assertRecentIso(presence[on].lastSeen, 'lastSeen of an online user');
    assert.equal(presence[aw].status, 'away');
    assertRecentIso(presence[aw].lastSeen, 'lastSeen of an away user');
    assert.deepEqual(presence[off], { status: 'offline', lastSeen: offEv.lastSeen });
    assert.deepEqual(presence[never], { status: 'offline', lastSeen: null });
    for (const s of [asker, sOn, sAw]) s.close();
  });

  test('user_active on A reaches room members on B and C, and the sender', async () => {
    const p = uniq('p');
    const U = uniq('u');
    const sender = await connectAs(A, { userId: U, projects: [p] });
    const onB = await connectAs(B, { userId: uniq('mb'), projects: [p] });
    const onC = await connectAs(C, { userId: uniq('mc'), projects: [p] });
    const recs = [sender, onB, onC].map((s) => record(s, 'user_active'));
    const got = [sender, onB, onC].map((s) => waitFor(s, 'user_active'));
    const ack = await emitAck(sender, 'user_active', { location: `project:${p}`, activity: 'reviewing' });
    assert.equal(ack.success, true, `user_active: ${JSON.stringify(ack)}`);
    for (const ev of await Promise.all(got)) {
      assert.deepEqual(Object.keys(ev).sort(), ['activity', 'location', 'timestamp', 'userId'], JSON.stringify(ev));
      assert.equal(ev.userId, U);
      assert.equal(ev.location, `project:${p}`);
      assert.equal(ev.activity, 'reviewing');
      assertRecentIso(ev.timestamp);
    }
    await flush(A, sender, onB, onC);
    for (const rec of recs) assert.equal(rec.events.length, 1);
    for (const s of [sender, onB, onC]) s.close();
  });
});

for (const backend of backends) describe(`presence after an instance crash (three instances, ${backend.name}, PRESENCE_GRACE_MS=${GRACE})`, { skip: backend.skip }, () => {
  const cluster = threeInstances(backend);

  test('kill -9 of A: its only-there user goes offline within 30 s; a user with a socket on B stays online', async (t) => {
    const [A, B, C] = cluster.instances;
    const p = uniq('p');
    const X = uniq('x'); // only on A
    const Y = uniq('y'); // on A and B
    const watcher = await connectAs(C, { userId: uniq('w'), projects: [p] });
    const rec = record(watcher, 'status_change');
    const online = [waitStatus(watcher, X, 'online'), waitStatus(watcher, Y, 'online')];
    const connectedAt = Date.now();
    // connectAs sockets do not reconnect: those on A simply drop with it
    await connectAs(A, { userId: X, projects: [p] });
    await connectAs(A, { userId: Y, projects: [p] });
    const yOnB = await connectAs(B, { userId: Y, projects: [p] });
    await Promise.all(online);
    const seenBefore = await getPresence(watcher, [X, Y]);
    assert.deepEqual([seenBefore[X].status, seenBefore[Y].status], ['online', 'online']);

    const offline = waitStatus(watcher, X, 'offline', 30_000);
    const killedAt = Date.now();
    A.signalled = true; // the after hook's stop() then accepts the exit
    A.proc.kill('SIGKILL');
    await A.exited;
    const ev = await offline;
    const arrivedAt = Date.now();
    t.diagnostic(`offline ${arrivedAt - killedAt} ms after kill -9`);
    assertStatusChange(ev, X, 'offline');
    const seen = Date.parse(ev.lastSeen);
    assert.ok(seen >= connectedAt - 1000 && seen <= arrivedAt, `lastSeen ${ev.lastSeen} out of range`);

    // no offline for Y, not even a grace period later
    await delay(GRACE + 500);
    await flush(B, watcher);
    await flush(C, watcher);
    assert.deepEqual(about(rec, Y).filter((e) => e.status !== 'online'), [], JSON.stringify(about(rec, Y)));
    assert.deepEqual(about(rec, X).map((e) => e.status), ['online', 'offline']);
    assert.ok(yOnB.connected);
    const presence = await getPresence(watcher, [X, Y]);
    assert.deepEqual(presence[X], { status: 'offline', lastSeen: ev.lastSeen });
    assert.equal(presence[Y].status, 'online');
    watcher.close();
    yOnB.close();
  });
});
