// Section 9 / 10: the per-socket event limit (RATE_LIMIT_PER_MINUTE), whose buckets are the
// user's and survive reconnects, unknown events counted like any other, and the disconnect
// of a socket that keeps sending (RATE_LIMIT_DISCONNECT_AFTER).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { assertErrorAck, connect, connectAs, emitAck, flush, metrics, startServer, uniq, waitForDisconnect, waitUntil } from './helpers.mjs';

/** Disconnects counted by the server so far. */
async function disconnects(server) {
  const m = await metrics(server);
  return Object.entries(m)
    .filter(([k]) => k.startsWith('trestle_disconnects_total'))
    .reduce((sum, [, v]) => sum + v, 0);
}

/** Closes `socket` and waits until the server has seen it go (its bucket is then free). */
async function closeAndWait(server, socket) {
  const before = await disconnects(server);
  socket.close();
  await waitUntil(async () => (await disconnects(server)) > before);
}

const servers = [];
after(() => Promise.all(servers.map((s) => s.stop())));

describe('RATE_LIMIT_PER_MINUTE=5', () => {
  let server;
  before(async () => {
    server = await startServer({ RATE_LIMIT_PER_MINUTE: 5 });
    servers.push(server);
  });

  test('five events succeed, the sixth is RATE_LIMITED; the limit is per socket', async () => {
    const s = await connectAs(server, { userId: 'rl-a', projects: [1] });
    const other = await connectAs(server, { userId: 'rl-a', projects: [1] });
    for (let i = 0; i < 5; i++) {
      assert.deepEqual(await emitAck(s, 'join_room', 'presence:rl-a'), { success: true, room: 'presence:rl-a', size: 2 }, `event ${i + 1}`);
    }
    assertErrorAck(await emitAck(s, 'join_room', 'presence:rl-a'), 'RATE_LIMITED');
    assertErrorAck(await emitAck(s, 'leave_room', 'project:1:comments'), 'RATE_LIMITED');
    // another socket of the same user has its own budget
    assert.deepEqual(await emitAck(other, 'join_room', 'presence:rl-a'), { success: true, room: 'presence:rl-a', size: 2 });
    s.close();
    other.close();
  });

  test('a refused event without a callback answers with an `error` event', async () => {
    const s = await connectAs(server, { userId: 'rl-nocb' });
    for (let i = 0; i < 5; i++) assert.equal((await emitAck(s, 'join_room', 'presence:rl-nocb')).success, true);
    const got = new Promise((resolve) => s.once('error', resolve));
    s.emit('join_room', 'presence:rl-nocb');
    assertErrorAck(await got, 'RATE_LIMITED');
    s.close();
  });

  test('unknown events count toward the budget: once it is spent they are RATE_LIMITED, and so is the next known event', async () => {
    const s = await connectAs(server, { userId: 'rl-unknown' });
    for (let i = 0; i < 5; i++) assertErrorAck(await emitAck(s, 'no_such_event', { i }), 'INVALID_PAYLOAD');
    assertErrorAck(await emitAck(s, 'no_such_event', {}), 'RATE_LIMITED');
    assertErrorAck(await emitAck(s, 'join_room', 'presence:rl-unknown'), 'RATE_LIMITED');
    s.close();
  });

  test('reconnecting does not refill the budget: the next socket of the user takes over the spent bucket', async () => {
    const userId = uniq('rl-again');
    const s = await connectAs(server, { userId });
    for (let i = 0; i < 5; i++) assert.equal((await emitAck(s, 'join_room', `presence:${userId}`)).success, true, `event ${i + 1}`);
    await closeAndWait(server, s);
    // twice: being refused on the new socket does not refill it either
    for (let round = 0; round < 2; round++) {
      const again = await connectAs(server, { userId });
      assertErrorAck(await emitAck(again, 'join_room', `presence:${userId}`), 'RATE_LIMITED');
      await closeAndWait(server, again);
    }
    // another user is not affected
    const other = await connectAs(server, { userId: uniq('rl-other') });
    assert.equal((await emitAck(other, 'join_room', 'presence:x')).success, true);
    other.close();
  });
});

describe('RATE_LIMIT_PER_MINUTE=5, AUTH_REQUIRED=false', () => {
  let server;
  before(async () => {
    server = await startServer({ RATE_LIMIT_PER_MINUTE: 5, AUTH_REQUIRED: 'false' });
    servers.push(server);
  });

  test('anonymous sockets: the budget is the address\'s, and reconnecting does not refill it', async () => {
    const s = await connect(server);
    // whatever anonymous users may do, each answer spends a token
    for (let i = 0; i < 5; i++) assert.notEqual((await emitAck(s, 'join_room', 'presence:anyone')).code, 'RATE_LIMITED', `event ${i + 1}`);
    await closeAndWait(server, s);
    const again = await connect(server);
    assertErrorAck(await emitAck(again, 'join_room', 'presence:anyone'), 'RATE_LIMITED');
    again.close();
  });
});

describe('RATE_LIMIT_PER_MINUTE=5, RATE_LIMIT_DISCONNECT_AFTER=10', () => {
  let server;
  before(async () => {
    server = await startServer({ RATE_LIMIT_PER_MINUTE: 5, RATE_LIMIT_DISCONNECT_AFTER: 10 });
    servers.push(server);
  });

  // The server sends a Socket.IO disconnect. When more of the flooder's events arrive
  // after it, socketioxide closes the engine session for the unknown socket, and what was
  // still queued for that client (the disconnect packet included) may be dropped: the
  // client then sees `transport close`. Either way it is cut off (docs/events.md).
  for (const [transport, reasons] of [
    ['websocket', ['io server disconnect', 'transport close']],
    ['polling', ['io server disconnect', 'transport close']],
  ]) {
    test(`${transport}: a socket that keeps sending after being refused is disconnected; a bystander is not`, async () => {
      const bystander = await connectAs(server, { userId: 'rl-by' });
      const s = await connectAs(server, { userId: `rl-flood-${transport}` }, { transports: [transport] });
      const acks = [];
      for (let i = 0; i < 40; i++) s.emit('join_room', 'presence:rl-flood', (ack) => acks.push(ack));
      const reason = await waitForDisconnect(s, 5000);
      assert.ok(reasons.includes(reason), `disconnect reason ${reason}`);
      // what was answered before the disconnect: 5 successes, then refusals only, in order
      assert.ok(acks.length < 40, `${acks.length} acks`);
      for (const [i, ack] of acks.entries()) {
        if (i < 5) assert.deepEqual(ack, { success: true, room: 'presence:rl-flood', size: 1 });
        else assertErrorAck(ack, 'RATE_LIMITED');
      }

      assert.equal(bystander.connected, true);
      assert.deepEqual(await emitAck(bystander, 'join_room', 'presence:rl-by'), { success: true, room: 'presence:rl-by', size: 1 });
      await flush(server, bystander);
      bystander.close();
    });
  }

  test('a flood of unknown event names is refused with RATE_LIMITED, then disconnected; a bystander is not', async () => {
    const bystander = await connectAs(server, { userId: uniq('rl-by') });
    const s = await connectAs(server, { userId: uniq('rl-names') });
    for (let i = 0; i < 5; i++) assertErrorAck(await emitAck(s, `made_up_${i}`, { i }), 'INVALID_PAYLOAD');
    assertErrorAck(await emitAck(s, 'made_up_again', {}), 'RATE_LIMITED');
    // Then a flood: cut off (what was queued for it may be dropped with the connection,
    // as in the tests above; whatever arrived is a refusal).
    const acks = [];
    for (let i = 0; i < 200; i++) s.emit(`made_up_${i}`, { i }, (ack) => acks.push(ack));
    const reason = await waitForDisconnect(s, 5000);
    assert.ok(['io server disconnect', 'transport close'].includes(reason), `disconnect reason ${reason}`);
    assert.ok(acks.length < 200, `${acks.length} acks`);
    for (const ack of acks) assertErrorAck(ack, 'RATE_LIMITED');
    assert.equal(bystander.connected, true);
    assert.equal((await emitAck(bystander, 'join_room', 'presence:x')).success, true);
    bystander.close();
  });
});
