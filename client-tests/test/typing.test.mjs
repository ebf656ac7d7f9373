// Sections 4 (typing_comment, typing_stop) and 10 (Typing, Who receives what): typing
// indicators, the relay throttle, typing_stopped on stop / timeout / comment / disconnect.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import {
  ISO_UTC,
  assertErrorAck,
  connectAs,
  emitAck,
  flush,
  record,
  uniq,
  waitFor,
  waitUntil,
  join,
  serverPool,
  signToken,
} from './helpers.mjs';
import { startCluster } from './services.mjs';

const { start } = serverPool(after);

const delay = (ms) => new Promise((r) => setTimeout(r, ms));

async function typing(socket, room) {
  const ack = await emitAck(socket, 'typing_comment', { room });
  assert.equal(ack.success, true, `typing_comment: ${JSON.stringify(ack)}`);
}

async function typingStop(socket, room) {
  const ack = await emitAck(socket, 'typing_stop', { room });
  assert.equal(ack.success, true, `typing_stop: ${JSON.stringify(ack)}`);
}

/** A project comments room with a typist (two sockets of one user) and an observer, all joined. */
async function scene(server, { name } = {}) {
  const p = uniq('p');
  const room = `project:${p}:comments`;
  const typistId = uniq('typist');
  const typist = await connectAs(server, { userId: typistId, projects: [p], ...(name ? { name } : {}) });
  const sibling = await connectAs(server, { userId: typistId, projects: [p] });
  const observer = await connectAs(server, { userId: uniq('obs'), projects: [p] });
  for (const s of [typist, sibling, observer]) await join(s, room);
  return { p, room, typistId, typist, sibling, observer, close: () => [typist, sibling, observer].forEach((s) => s.close()) };
}

describe('typing_comment / typing_stop (default throttle)', () => {
  let server;
  before(async () => {
    server = await start();
  });

  test('typing_comment relays {userId, userName, room, timestamp} to the room, not to the typing socket', async () => {
    const sc = await scene(server, { name: 'Tina Typist' });
    const recs = [sc.typist, sc.sibling, sc.observer].map((s) => record(s, 'typing_comment'));
    const outsider = await connectAs(server, { userId: uniq('out'), projects: [sc.p] }); // not joined
    const outRec = record(outsider, 'typing_comment');
    await typing(sc.typist, sc.room);
    await flush(server, sc.typist, sc.sibling, sc.observer, outsider);
    assert.deepEqual(recs[0].events, [], 'the typing socket got its own typing_comment');
    assert.deepEqual(outRec.events, []);
    for (const rec of recs.slice(1)) {
      assert.equal(rec.events.length, 1);
      const ev = rec.events[0];
      assert.deepEqual(Object.keys(ev).sort(), ['room', 'timestamp', 'userId', 'userName']);
      assert.equal(ev.userId, sc.typistId);
      assert.equal(ev.userName, 'Tina Typist');
      assert.equal(ev.room, sc.room);
      assert.match(ev.timestamp, ISO_UTC);
      assert.ok(Math.abs(Date.parse(ev.timestamp) - Date.now()) < 60_000);
    }
    sc.close();
    outsider.close();
  });

  test('userName falls back to the user id', async () => {
    const sc = await scene(server);
    const got = waitFor(sc.observer, 'typing_comment');
    await typing(sc.typist, sc.room);
    const ev = await got;
    assert.equal(ev.userId, sc.typistId);
    assert.equal(ev.userName, sc.typistId);
    sc.close();
  });

  test('a burst of 10 within 100 ms relays at most 2, with no trailing relay; a later burst relays again', async () => {
    const sc = await scene(server);
    const rec = record(sc.observer, 'typing_comment');
    const started = Date.now();
    const acks = await Promise.all(Array.from({ length: 10 }, () => emitAck(sc.typist, 'typing_comment', { room: sc.room })));
    assert.ok(Date.now() - started < 100 + 200, 'the burst took too long to be a burst');
    for (const ack of acks) assert.equal(ack.success, true, JSON.stringify(ack));
    await flush(server, sc.observer);
    const n = rec.events.length;
    assert.ok(n >= 1 && n <= 2, `burst of 10 relayed ${n} times`);
    await delay(600); // twice the 300 ms throttle window: a trailing relay would have been sent by now
    await flush(server, sc.observer);
    assert.equal(rec.events.length, n, 'a trailing typing_comment was relayed after the burst');
    await typing(sc.typist, sc.room);
    await flush(server, sc.observer);
    assert.equal(rec.events.length, n + 1, 'typing after the throttle window must be relayed');
    sc.close();
  });

  test('typing_stop relays typing_stopped {userId, room} only if that socket was typing', async () => {
    const sc = await scene(server);
    const recs = [sc.typist, sc.sibling, sc.observer].map((s) => record(s, 'typing_stopped'));
    await typingStop(sc.typist, sc.room); // not typing: nothing
    await flush(server, sc.typist, sc.sibling, sc.observer);
    assert.deepEqual(recs.map((r) => r.events.length), [0, 0, 0]);

    await typing(sc.typist, sc.room);
    await typingStop(sc.sibling, sc.room); // the user's other socket was not typing: nothing
    await flush(server, sc.typist, sc.sibling, sc.observer);
    assert.deepEqual(recs.map((r) => r.events.length), [0, 0, 0]);

    await typingStop(sc.typist, sc.room);
    await flush(server, sc.typist, sc.sibling, sc.observer);
    assert.deepEqual(recs[0].events, [], 'the typing socket got its own typing_stopped');
    assert.deepEqual(recs[1].events, [{ userId: sc.typistId, room: sc.room }]);
    assert.deepEqual(recs[2].events, [{ userId: sc.typistId, room: sc.room }]);

    await typingStop(sc.typist, sc.room); // stopped already
    await flush(server, sc.observer);
    assert.equal(recs[2].events.length, 1);
    sc.close();
  });

  test("typing_stopped on the user's new_comment in the room", async () => {
    const sc = await scene(server);
    const stopped = record(sc.observer, 'typing_stopped');
    const comments = record(sc.observer, 'new_comment');
    await typing(sc.typist, sc.room);
    const ack = await emitAck(sc.typist, 'new_comment', { room: sc.room, content: 'done typing' });
    assert.equal(ack.success, true, JSON.stringify(ack));
    await flush(server, sc.observer);
    assert.deepEqual(stopped.events, [{ userId: sc.typistId, room: sc.room }]);
    assert.deepEqual(comments.events, [ack.comment]);
    // not typing any more: a second comment sends no typing_stopped
    assert.equal((await emitAck(sc.typist, 'new_comment', { room: sc.room, content: 'again' })).success, true);
    await flush(server, sc.observer);
    assert.equal(stopped.events.length, 1);
    sc.close();
  });

  test('typing_stopped on disconnect of the typing socket only', async () => {
    const sc = await scene(server);
    const stopped = record(sc.observer, 'typing_stopped');
    // a socket that never typed leaves: user_left, but no typing_stopped
    const left = waitFor(sc.observer, 'user_left');
    sc.sibling.close();
    assert.equal((await left).userId, sc.typistId);
    await flush(server, sc.observer);
    assert.deepEqual(stopped.events, []);

    await typing(sc.typist, sc.room);
    const got = waitFor(sc.observer, 'typing_stopped');
    sc.typist.close();
    assert.deepEqual(await got, { userId: sc.typistId, room: sc.room });
    await flush(server, sc.observer);
    assert.equal(stopped.events.length, 1);
    sc.close();
  });

  test('errors: FORBIDDEN without access, INVALID_ROOM for a bad name, INVALID_PAYLOAD for a bad payload', async () => {
    const p = uniq('p');
    const s = await connectAs(server, { userId: uniq('u'), projects: [p] });
    const other = uniq('q');
    const member = await connectAs(server, { userId: uniq('m'), projects: [other] });
    await join(member, `project:${other}:comments`);
    const rec = record(member, 'typing_comment');
    assertErrorAck(await emitAck(s, 'typing_comment', { room: `project:${other}:comments` }), 'FORBIDDEN');
    for (const room of ['nope', 'project:', `Project:${p}:comments`, s.id]) {
      assertErrorAck(await emitAck(s, 'typing_comment', { room }), 'INVALID_ROOM');
    }
    for (const payload of [null, 42, {}, { room: 7 }]) {
      assertErrorAck(await emitAck(s, 'typing_comment', payload), 'INVALID_PAYLOAD');
    }
    await flush(server, member);
    assert.deepEqual(rec.events, []);
    s.close();
    member.close();
  });
});

describe('automatic typing_stopped (TYPING_TIMEOUT_MS=1000)', () => {
  let server;
  before(async () => {
    server = await start({ TYPING_TIMEOUT_MS: 1000 });
  });

  test('typing_stopped about TYPING_TIMEOUT_MS after the last typing_comment, not before ~800 ms', async () => {
    const sc = await scene(server);
    const stopped = record(sc.observer, 'typing_stopped');
    await typing(sc.typist, sc.room);
    await delay(500); // half the timeout: typing again restarts it
    await typing(sc.typist, sc.room);
    const last = Date.now();
    const ev = await waitFor(sc.observer, 'typing_stopped', 4000);
    const elapsed = Date.now() - last;
    assert.deepEqual(ev, { userId: sc.typistId, room: sc.room });
    assert.ok(elapsed >= 800, `typing_stopped came ${elapsed} ms after the last typing_comment`);
    assert.ok(elapsed <= 2500, `typing_stopped came ${elapsed} ms after the last typing_comment`);
    await flush(server, sc.observer);
    assert.equal(stopped.events.length, 1);
    // stopped: an explicit typing_stop now relays nothing
    await typingStop(sc.typist, sc.room);
    await flush(server, sc.observer);
    assert.equal(stopped.events.length, 1);
    sc.close();
  });
});

const MiB = 1024 * 1024;
const rss = (pid) => Number(/VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]) * 1024;
const mib = (n) => `${(n / MiB).toFixed(1)} MiB`;

/** A raw engine.io websocket with a socket.io CONNECT done: floods without client overhead. */
async function rawSocket(server, claims) {
  const ws = new WebSocket(`ws://127.0.0.1:${server.port}/socket.io/?EIO=4&transport=websocket`);
  const connected = new Promise((resolve, reject) => {
    ws.on('message', (data) => {
      const f = data.toString();
      if (f === '2') ws.send('3');
      else if (f.startsWith('0')) ws.send(`40${JSON.stringify({ token: signToken(claims) })}`);
      else if (f.startsWith('40')) resolve(ws);
      else if (f.startsWith('44')) reject(new Error(f));
    });
    ws.on('error', reject);
  });
  return connected;
}

/** Sends `frame` as fast as the socket takes it for `ms`; resolves with the count sent. */
async function flood(ws, frame, ms) {
  const end = Date.now() + ms;
  let sent = 0;
  while (Date.now() < end && ws.readyState === WebSocket.OPEN) {
    if (ws.bufferedAmount < 256 * 1024) {
      for (let i = 0; i < 200; i++) ws.send(frame);
      sent += 200;
    }
    await new Promise((r) => setImmediate(r));
  }
  return sent;
}

// Each typing_comment used to start a 5 s timer task of its own: 10 sockets flooding for
// 10 s grew the server by 567 MiB, which stayed. Now a socket has one deadline per room
// that later events push back, and repeats within TYPING_THROTTLE_MS stop at that.
describe('typing floods (default settings)', () => {
  let server;
  before(async () => {
    server = await start();
  });

  // One room and one observer per typist: relays are volatile, and socketioxide keeps only
  // the latest volatile packet waiting for a client, so ten typing_stopped sent to one
  // observer in the same millisecond may arrive as fewer.
  test('10 sockets flooding typing_comment for 6 s: server RSS grows < 48 MiB, relays stay throttled, no typing_stopped while typing, one ~5 s after', async (t) => {
    const typists = [];
    for (let i = 0; i < 10; i++) {
      const p = uniq('p');
      const room = `project:${p}:comments`;
      const observer = await connectAs(server, { userId: uniq('obs'), projects: [p] });
      await join(observer, room);
      const userId = uniq(`flood${i}-`);
      const ws = await rawSocket(server, { userId, projects: [p] });
      ws.send(`421["join_room","${room}"]`);
      typists.push({ userId, ws, room, observer });
    }
    await flush(server, ...typists.map((x) => x.observer));
    for (const x of typists) {
      x.comments = record(x.observer, 'typing_comment');
      x.stopped = record(x.observer, 'typing_stopped');
    }
    const pid = server.proc.pid;
    const baseline = rss(pid);
    let peak = baseline;
    const sampler = setInterval(() => {
      peak = Math.max(peak, rss(pid));
    }, 100);
    const FLOOD_MS = 6000;
    const sent = await Promise.all(typists.map(({ ws, room }) => flood(ws, `42["typing_comment",{"room":"${room}"}]`, FLOOD_MS)));
    const ended = Date.now();
    await flush(server, ...typists.map((x) => x.observer));
    clearInterval(sampler);
    peak = Math.max(peak, rss(pid));
    const total = sent.reduce((a, b) => a + b, 0);
    t.diagnostic(`${total} typing_comment frames sent in ${FLOOD_MS} ms; server RSS ${mib(baseline)} before, peak ${mib(peak)} (+${mib(peak - baseline)})`);
    assert.ok(total > 10_000, `the flood was too small to show anything (${total} frames)`);
    assert.ok(peak - baseline < 48 * MiB, `RSS grew by ${mib(peak - baseline)} during the typing flood`);
    for (const x of typists) {
      assert.equal(x.ws.readyState, WebSocket.OPEN, 'a typist was disconnected');
      assert.deepEqual(x.stopped.events, [], 'typing_stopped while the typist kept typing: later events must push the deadline back');
      const n = x.comments.events.length;
      assert.ok(n >= 1 && n <= FLOOD_MS / 300 + 3, `${x.userId}: ${n} typing_comment relays in ${FLOOD_MS} ms (throttle 300 ms)`);
    }
    // Silence: each typist's one deadline fires about TYPING_TIMEOUT_MS (5 s) later.
    await waitUntil(() => typists.every((x) => x.stopped.events.length > 0), 9000);
    const after = Date.now() - ended;
    assert.ok(after >= 4000, `typing_stopped ${after} ms after the last typing_comment`);
    await flush(server, ...typists.map((x) => x.observer));
    for (const x of typists) assert.deepEqual(x.stopped.events, [{ userId: x.userId, room: x.room }]);
    const settled = rss(pid);
    t.diagnostic(`server RSS once the typists stopped: ${mib(settled)}`);
    assert.ok(settled - baseline < 48 * MiB, `RSS stayed ${mib(settled - baseline)} above the baseline`);
    for (const x of typists) {
      x.ws.terminate();
      x.observer.close();
    }
  });

  test('a socket types in at most 8 rooms at once: a 9th is RATE_LIMITED until one stops', async () => {
    const projects = Array.from({ length: 9 }, () => uniq('p'));
    const rooms = projects.map((p) => `project:${p}:comments`);
    const s = await connectAs(server, { userId: uniq('u'), projects });
    for (const room of rooms.slice(0, 8)) await typing(s, room);
    assertErrorAck(await emitAck(s, 'typing_comment', { room: rooms[8] }), 'RATE_LIMITED');
    await typing(s, rooms[0]); // a room it types in already is fine
    await typingStop(s, rooms[0]);
    await typing(s, rooms[8]);
    // another socket of the same user has its own rooms
    const other = await connectAs(server, { userId: uniq('u'), projects });
    await typing(other, rooms[0]);
    s.close();
    other.close();
  });
});

describe('cluster: typing relayed across instances', () => {
  let cluster;
  before(async () => {
    cluster = await startCluster(2);
  });
  after(() => cluster.stop());

  test('typing_comment and typing_stopped from A reach the room on B', async () => {
    const [A, B] = cluster.instances;
    const p = uniq('p');
    const room = `project:${p}:comments`;
    const uid = uniq('typist');
    const typist = await connectAs(A, { userId: uid, name: 'Cross', projects: [p] });
    const observer = await connectAs(B, { userId: uniq('obs'), projects: [p] });
    await join(typist, room);
    await join(observer, room);
    const got = waitFor(observer, 'typing_comment');
    await typing(typist, room);
    const ev = await got;
    assert.equal(ev.userId, uid);
    assert.equal(ev.userName, 'Cross');
    assert.equal(ev.room, room);
    const stop = waitFor(observer, 'typing_stopped');
    await typingStop(typist, room);
    assert.deepEqual(await stop, { userId: uid, room });
    typist.close();
    observer.close();
  });
});
