// Sections 4 (direct_message) and 10 (Direct messages, Text, Connecting): live delivery to
// notifications:{to}, offline queueing delivered on the next connect in order, once.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  ISO_UTC,
  assertErrorAck,
  connectAs,
  emitAck,
  flush,
  record,
  uniq,
  waitFor,
  connectRecording,
  serverPool,
} from './helpers.mjs';
import { startCluster } from './services.mjs';

const { start } = serverPool(after);

const delay = (ms) => new Promise((r) => setTimeout(r, ms));

async function dm(socket, to, message) {
  const ack = await emitAck(socket, 'direct_message', { to, message });
  assert.equal(ack.success, true, `direct_message: ${JSON.stringify(ack)}`);
  assert.deepEqual(Object.keys(ack).sort(), ['delivered', 'id', 'success'], `ack shape: ${JSON.stringify(ack)}`);
  assert.equal(typeof ack.id, 'string');
  assert.ok(ack.id.length > 0);
  return ack;
}

function assertDirectMessage(ev, { id, from, message, offline = false }) {
  const keys = ['from', 'id', 'message', 'timestamp'];
  if (offline) keys.push('offline');
  assert.deepEqual(Object.keys(ev).sort(), keys.sort(), `direct_message keys: ${JSON.stringify(ev)}`);
  assert.equal(ev.id, id);
  assert.deepEqual(ev.from, from);
  assert.equal(ev.message, message);
  assert.match(ev.timestamp, ISO_UTC);
  assert.ok(Math.abs(Date.parse(ev.timestamp) - Date.now()) < 60_000);
  if (offline) assert.equal(ev.offline, true);
}

describe('direct_message', () => {
  let server;
  before(async () => {
    server = await start();
  });

  test('to an online user with two sockets: each socket gets direct_message once; ack {id, delivered: true}', async () => {
    const fromId = uniq('from');
    const toId = uniq('to');
    const sender = await connectAs(server, { userId: fromId, name: 'Sam Sender' });
    const senderOther = await connectAs(server, { userId: fromId, name: 'Sam Sender' });
    const tab1 = await connectAs(server, { userId: toId });
    const tab2 = await connectAs(server, { userId: toId });
    const bystander = await connectAs(server, { userId: uniq('by') });
    const recs = [tab1, tab2, sender, senderOther, bystander].map((s) => record(s, 'direct_message'));
    const ack = await dm(sender, toId, '  hello there  ');
    assert.equal(ack.delivered, true);
    await flush(server, tab1, tab2, sender, senderOther, bystander);
    for (const rec of recs.slice(0, 2)) {
      assert.equal(rec.events.length, 1);
      assertDirectMessage(rec.events[0], { id: ack.id, from: { id: fromId, name: 'Sam Sender' }, message: 'hello there' });
    }
    for (const rec of recs.slice(2)) assert.deepEqual(rec.events, []);
    const second = await dm(sender, toId, 'second');
    assert.notEqual(second.id, ack.id);
    for (const s of [sender, senderOther, tab1, tab2, bystander]) s.close();
  });

  test('from.name falls back to the id; numeric ids are accepted and compared as strings', async () => {
    const fromId = uniq('from');
    const toNum = Math.floor(Math.random() * 1e9) + 1;
    const sender = await connectAs(server, { userId: fromId });
    const rcpt = await connectAs(server, { userId: String(toNum) });
    const got = waitFor(rcpt, 'direct_message');
    const ack = await emitAck(sender, 'direct_message', { to: toNum, message: 'numbers' });
    assert.deepEqual(Object.keys(ack).sort(), ['delivered', 'id', 'success']);
    assert.equal(ack.delivered, true);
    assertDirectMessage(await got, { id: ack.id, from: { id: fromId, name: fromId }, message: 'numbers' });
    sender.close();
    rcpt.close();
  });

  test('to an offline user: delivered false; on connect the queued messages arrive in order with offline: true, once', async () => {
    const fromId = uniq('from');
    const toId = uniq('away');
    const sender = await connectAs(server, { userId: fromId, name: 'Queue Sender' });
    const acks = [];
    for (const msg of ['one', 'two', 'three', 'four']) {
      const ack = await dm(sender, toId, msg);
      assert.equal(ack.delivered, false);
      acks.push(ack);
    }
    const first = await connectRecording(server, { userId: toId }, ['direct_message']);
    const evs = first.recs.direct_message.events;
    assert.equal(evs.length, 4, JSON.stringify(evs));
    ['one', 'two', 'three', 'four'].forEach((message, i) =>
      assertDirectMessage(evs[i], { id: acks[i].id, from: { id: fromId, name: 'Queue Sender' }, message, offline: true }),
    );
    // once: another socket of the user (while the first is still connected, and after) gets none
    const second = await connectRecording(server, { userId: toId }, ['direct_message']);
    await flush(server, first.s, second.s);
    assert.deepEqual(second.recs.direct_message.events, []);
    assert.equal(evs.length, 4);
    first.s.close();
    second.s.close();
    // now online again through a new socket: live delivery, no offline flag
    const third = await connectRecording(server, { userId: toId }, ['direct_message']);
    assert.deepEqual(third.recs.direct_message.events, []);
    const live = waitFor(third.s, 'direct_message');
    const ack = await dm(sender, toId, 'live now');
    assert.equal(ack.delivered, true);
    assertDirectMessage(await live, { id: ack.id, from: { id: fromId, name: 'Queue Sender' }, message: 'live now' });
    sender.close();
    third.s.close();
  });

  test('message blank or not a string INVALID_PAYLOAD; over 10,000 code points TOO_LARGE; exactly 10,000 accepted', async () => {
    const toId = uniq('to');
    const sender = await connectAs(server, { userId: uniq('from') });
    const rcpt = await connectAs(server, { userId: toId });
    const rec = record(rcpt, 'direct_message');
    for (const message of ['', '    ', '\n\t ', undefined, null, 5, ['hi'], { text: 'hi' }]) {
      assertErrorAck(await emitAck(sender, 'direct_message', { to: toId, message }), 'INVALID_PAYLOAD');
    }
    const clef = '\u{1D11E}';
    assertErrorAck(await emitAck(sender, 'direct_message', { to: toId, message: clef.repeat(10_001) }), 'TOO_LARGE');
    assertErrorAck(await emitAck(sender, 'direct_message', { to: toId, message: 'm'.repeat(10_001) }), 'TOO_LARGE');
    await flush(server, rcpt);
    assert.deepEqual(rec.events, []);
    const ack = await dm(sender, toId, `  ${clef.repeat(10_000)}  `);
    assert.equal(ack.delivered, true);
    await flush(server, rcpt);
    assert.equal(rec.events.length, 1);
    assert.equal(rec.events[0].message, clef.repeat(10_000));
    sender.close();
    rcpt.close();
  });

  test('`to` invalid INVALID_PAYLOAD; payload not an object INVALID_PAYLOAD', async () => {
    const sender = await connectAs(server, { userId: uniq('from') });
    for (const to of ['', 'has space', 'a/b', 'x'.repeat(129), undefined, null, {}, ['u1'], true, 1.5]) {
      assertErrorAck(await emitAck(sender, 'direct_message', { to, message: 'hi' }), 'INVALID_PAYLOAD');
    }
    for (const payload of [null, 'hi', 42]) {
      assertErrorAck(await emitAck(sender, 'direct_message', payload), 'INVALID_PAYLOAD');
    }
    sender.close();
  });
});

describe('direct_message offline expiry (OFFLINE_TTL_MS=300)', () => {
  let server;
  before(async () => {
    server = await start({ OFFLINE_TTL_MS: 300 });
  });

  test('a queued message older than OFFLINE_TTL_MS is not delivered', async () => {
    const toId = uniq('late');
    const sender = await connectAs(server, { userId: uniq('from') });
    assert.equal((await dm(sender, toId, 'too old')).delivered, false);
    await delay(800); // the message must outlive its TTL; time passing is the point of the test
    const { s, recs } = await connectRecording(server, { userId: toId }, ['direct_message']);
    await flush(server, s);
    assert.deepEqual(recs.direct_message.events, []);
    sender.close();
    s.close();
  });
});

describe('cluster: direct message to a user connected only on B', () => {
  let cluster;
  before(async () => {
    cluster = await startCluster(2);
  });
  after(() => cluster.stop());

  test('delivered live (delivered: true) to every socket of the user on B', async () => {
    const [A, B] = cluster.instances;
    const fromId = uniq('from');
    const toId = uniq('onB');
    const sender = await connectAs(A, { userId: fromId, name: 'On A' });
    const tab1 = await connectAs(B, { userId: toId });
    const tab2 = await connectAs(B, { userId: toId });
    const got = [waitFor(tab1, 'direct_message'), waitFor(tab2, 'direct_message')];
    const ack = await dm(sender, toId, 'across');
    assert.equal(ack.delivered, true);
    for (const ev of await Promise.all(got)) assertDirectMessage(ev, { id: ack.id, from: { id: fromId, name: 'On A' }, message: 'across' });
    // not also queued
    const later = await connectRecording(A, { userId: toId }, ['direct_message']);
    await flush(A, later.s);
    assert.deepEqual(later.recs.direct_message.events, []);
    for (const s of [sender, tab1, tab2, later.s]) s.close();
  });
});

describe('cluster: offline direct messages queued via A, delivered on B', () => {
  let cluster;
  before(async () => {
    cluster = await startCluster(2);
  });
  after(() => cluster.stop());

  test('in order, with offline: true, once', async () => {
    const [A, B] = cluster.instances;
    const fromId = uniq('from');
    const toId = uniq('away');
    const sender = await connectAs(A, { userId: fromId });
    const acks = [];
    for (let i = 1; i <= 5; i++) {
      const ack = await dm(sender, toId, `queued ${i}`);
      assert.equal(ack.delivered, false);
      acks.push(ack);
    }
    const onB = await connectRecording(B, { userId: toId }, ['direct_message']);
    const evs = onB.recs.direct_message.events;
    assert.equal(evs.length, 5, JSON.stringify(evs));
    evs.forEach((ev, i) => assertDirectMessage(ev, { id: acks[i].id, from: { id: fromId, name: fromId }, message: `queued ${i + 1}`, offline: true }));
    const onA = await connectRecording(A, { userId: toId }, ['direct_message']);
    await flush(A, onA.s);
    assert.deepEqual(onA.recs.direct_message.events, []);
    for (const s of [sender, onB.s, onA.s]) s.close();
  });
});

// Issue 13, item 4: what one sender can make the store keep is bounded.
describe('offline quotas (OFFLINE_QUOTA_PER_SENDER=5, OFFLINE_CAP_UNSEEN=3)', () => {
  let server;
  before(async () => {
    server = await start({ OFFLINE_QUOTA_PER_SENDER: 5, OFFLINE_CAP_UNSEEN: 3 });
  });

  test('one sender queueing to many offline recipients is RATE_LIMITED at the quota; another sender still can; reading frees it', async () => {
    const p = uniq('p');
    const flooder = await connectAs(server, { userId: uniq('flood'), projects: [p] });
    const recipients = [];
    for (let i = 0; i < 5; i++) {
      const to = uniq('nobody');
      recipients.push(to);
      assert.equal((await dm(flooder, to, `m${i}`)).delivered, false);
    }
    assertErrorAck(await emitAck(flooder, 'direct_message', { to: uniq('nobody'), message: 'one too many' }), 'RATE_LIMITED');
    // A comment with mentions is refused too, before it is stored; one without is not.
    const room = `project:${p}:comments`;
    assertErrorAck(await emitAck(flooder, 'new_comment', { room, content: 'hey', mentions: [uniq('m')] }), 'RATE_LIMITED');
    assert.equal((await emitAck(flooder, 'new_comment', { room, content: 'no mentions' })).success, true);
    const list = await emitAck(flooder, 'list_comments', { room });
    assert.deepEqual(list.comments.map((c) => c.content), ['no mentions']);
    // Live delivery queues nothing: still allowed.
    const onlineId = uniq('online');
    const online = await connectAs(server, { userId: onlineId });
    const live = waitFor(online, 'direct_message');
    assert.equal((await dm(flooder, onlineId, 'live')).delivered, true);
    assert.equal((await live).message, 'live');
    online.close();
    // Another sender is not affected.
    const other = await connectAs(server, { userId: uniq('other') });
    assert.equal((await dm(other, uniq('nobody'), 'fine')).delivered, false);
    // Once a recipient has read theirs, the sender may queue one more.
    const reader = await connectRecording(server, { userId: recipients[0] }, ['direct_message']);
    assert.equal(reader.recs.direct_message.events.length, 1);
    assert.equal((await dm(flooder, uniq('nobody'), 'room again')).delivered, false);
    assertErrorAck(await emitAck(flooder, 'direct_message', { to: uniq('nobody'), message: 'full again' }), 'RATE_LIMITED');
    for (const s of [flooder, other, reader.s]) s.close();
  });

  test('a user id never seen keeps the latest OFFLINE_CAP_UNSEEN (3); a user seen before keeps them all', async () => {
    const unseen = uniq('new-colleague');
    const seen = uniq('colleague');
    const before = await connectAs(server, { userId: seen });
    before.close();
    await delay(100); // the disconnect reaches the server (the socket leaves its rooms)
    const senders = await Promise.all([1, 2].map(() => connectAs(server, { userId: uniq('s') })));
    for (let i = 1; i <= 5; i++) {
      const from = senders[i % 2];
      assert.equal((await dm(from, unseen, `u${i}`)).delivered, false);
      assert.equal((await dm(from, seen, `s${i}`)).delivered, false);
    }
    const a = await connectRecording(server, { userId: unseen }, ['direct_message']);
    assert.deepEqual(a.recs.direct_message.events.map((e) => e.message), ['u3', 'u4', 'u5']);
    const b = await connectRecording(server, { userId: seen }, ['direct_message']);
    assert.deepEqual(b.recs.direct_message.events.map((e) => e.message), ['s1', 's2', 's3', 's4', 's5']);
    for (const s of [...senders, a.s, b.s]) s.close();
  });
});

describe('offline store total (OFFLINE_MAX_BYTES=30000, no per-sender quota)', () => {
  let server;
  before(async () => {
    server = await start({ OFFLINE_MAX_BYTES: 30_000, OFFLINE_QUOTA_PER_SENDER: 0 });
  });

  test('past the total queued bytes every sender is RATE_LIMITED; live delivery still works; reading frees space', async () => {
    const big = 'x'.repeat(9_000);
    const senders = await Promise.all([1, 2, 3].map(() => connectAs(server, { userId: uniq('s') })));
    const to = [];
    for (let i = 0; i < 3; i++) {
      to.push(uniq('away'));
      assert.equal((await dm(senders[i], to[i], big)).delivered, false);
    }
    for (const s of senders) assertErrorAck(await emitAck(s, 'direct_message', { to: uniq('away'), message: big }), 'RATE_LIMITED');
    // a short one still fits
    assert.equal((await dm(senders[0], uniq('away'), 'short')).delivered, false);
    const onlineId = uniq('online');
    const online = await connectAs(server, { userId: onlineId });
    assert.equal((await dm(senders[1], onlineId, big)).delivered, true);
    const reader = await connectRecording(server, { userId: to[0] }, ['direct_message']);
    assert.equal(reader.recs.direct_message.events.length, 1);
    assert.equal((await dm(senders[2], uniq('away'), big)).delivered, false);
    for (const s of [...senders, online, reader.s]) s.close();
  });
});
