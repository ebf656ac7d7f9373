// Section 9 / 10: the per-socket event limit (RATE_LIMIT_PER_MINUTE), unknown events not
// counted, and the disconnect of a socket that keeps sending (RATE_LIMIT_DISCONNECT_AFTER).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { assertErrorAck, connectAs, emitAck, flush, startServer, waitForDisconnect } from './helpers.mjs';

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

  test('unknown events are not counted', async () => {
    const s = await connectAs(server, { userId: 'rl-unknown' });
    // sent without a callback: what (if anything) answers an unknown event is not specified
    for (let i = 0; i < 20; i++) s.emit('no_such_event', { i });
    for (let i = 0; i < 5; i++) {
      assert.deepEqual(await emitAck(s, 'join_room', 'presence:rl-unknown'), { success: true, room: 'presence:rl-unknown', size: 1 }, `event ${i + 1}`);
    }
    assertErrorAck(await emitAck(s, 'join_room', 'presence:rl-unknown'), 'RATE_LIMITED');
    s.close();
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
      const s = await connectAs(server, { userId: 'rl-flood' }, { transports: [transport] });
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
});
