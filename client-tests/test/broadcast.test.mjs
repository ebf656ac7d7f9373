// Section 4 / 10: broadcast_room — permission, membership, reserved names, both argument forms.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { assertErrorAck, connectAs, emitAck, flush, record, startServer, waitFor } from './helpers.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(() => server?.stop());

const RESERVED = [
  'connect',
  'connect_error',
  'disconnect',
  'disconnecting',
  'newListener',
  'removeListener',
  'error',
  'user_joined',
  'user_left',
  'new_comment',
  'comment_updated',
  'comment_deleted',
  'mention',
  'typing_comment',
  'typing_stopped',
  'status_change',
  'user_active',
  'task_updated',
  'user_activity',
  'time_tracking_updated',
  'direct_message',
  'upload_progress',
  'document_uploaded',
  'document_chunk',
  'document_complete',
  'metrics_update',
  'server_shutdown',
  'resource_updated',
  'notification',
];

test('with room_broadcast in a joined room: the others get the event with the data, the sender does not', async () => {
  const sender = await connectAs(server, { userId: 'bc-sender', projects: [1], permissions: ['room_broadcast'] });
  const b = await connectAs(server, { userId: 'bc-b', projects: [1] });
  const c = await connectAs(server, { userId: 'bc-c', projects: [1] }, { transports: ['polling'] });
  const outsider = await connectAs(server, { userId: 'bc-out', projects: [2] });
  const atSender = record(sender, 'custom_event');
  const atOutsider = record(outsider, 'custom_event');

  // a room joined with join_room
  for (const s of [sender, b, c]) assert.equal((await emitAck(s, 'join_room', 'project:1:comments')).success, true);
  const data = { text: 'hello', n: 1, nested: { list: [1, 'two', null, true] } };
  let got = [waitFor(b, 'custom_event'), waitFor(c, 'custom_event')];
  const ack = await emitAck(sender, 'broadcast_room', 'project:1:comments', 'custom_event', data);
  assert.equal(ack.success, true, JSON.stringify(ack));
  assert.deepEqual(await Promise.all(got), [data, data]);

  // an auto-joined room, object form
  got = [waitFor(b, 'custom_event'), waitFor(c, 'custom_event')];
  const ack2 = await emitAck(sender, 'broadcast_room', { room: 'project:1', event: 'custom_event', data: ['x', 2] });
  assert.equal(ack2.success, true, JSON.stringify(ack2));
  assert.deepEqual(await Promise.all(got), [['x', 2], ['x', 2]]);

  // string data
  got = waitFor(b, 'plain_text_event');
  assert.equal((await emitAck(sender, 'broadcast_room', 'project:1', 'plain_text_event', 'plain text')).success, true);
  assert.equal(await got, 'plain text');

  await flush(server, sender, outsider);
  assert.deepEqual(atSender.events, []);
  assert.deepEqual(atOutsider.events, []);
  for (const s of [sender, b, c, outsider]) s.close();
});

test('admin counts as room_broadcast', async () => {
  const admin = await connectAs(server, { userId: 'bc-admin', permissions: ['admin'] });
  const b = await connectAs(server, { userId: 'bc-b2', projects: [3] });
  assert.equal((await emitAck(admin, 'join_room', 'project:3')).success, true);
  const got = waitFor(b, 'admin_says');
  assert.equal((await emitAck(admin, 'broadcast_room', { room: 'project:3', event: 'admin_says', data: { ok: true } })).success, true);
  assert.deepEqual(await got, { ok: true });
  admin.close();
  b.close();
});

test('without the permission: FORBIDDEN, nothing is sent', async () => {
  const s = await connectAs(server, { userId: 'bc-noperm', projects: [4], permissions: ['metrics'] });
  const b = await connectAs(server, { userId: 'bc-b3', projects: [4] });
  const atB = record(b, 'nope_event');
  assertErrorAck(await emitAck(s, 'broadcast_room', 'project:4', 'nope_event', 1), 'FORBIDDEN');
  assertErrorAck(await emitAck(s, 'broadcast_room', { room: 'project:4', event: 'nope_event', data: 1 }), 'FORBIDDEN');
  await flush(server, b);
  assert.deepEqual(atB.events, []);
  s.close();
  b.close();
});

test('not in the room: FORBIDDEN, even for admin', async () => {
  const s = await connectAs(server, { userId: 'bc-notin', projects: [5], permissions: ['room_broadcast'] });
  const admin = await connectAs(server, { userId: 'bc-admin2', permissions: ['admin'] });
  const b = await connectAs(server, { userId: 'bc-b4', projects: [5, 6] });
  assert.equal((await emitAck(b, 'join_room', 'project:5:comments')).success, true);
  const atB = record(b, 'sneaky');
  // allowed to join but not joined
  assertErrorAck(await emitAck(s, 'broadcast_room', 'project:5:comments', 'sneaky', 1), 'FORBIDDEN');
  // not even allowed
  assertErrorAck(await emitAck(s, 'broadcast_room', 'project:6', 'sneaky', 1), 'FORBIDDEN');
  assertErrorAck(await emitAck(admin, 'broadcast_room', 'project:5', 'sneaky', 1), 'FORBIDDEN');
  // after leaving
  assert.equal((await emitAck(s, 'join_room', 'project:5:comments')).success, true);
  assert.equal((await emitAck(s, 'leave_room', 'project:5:comments')).success, true);
  assertErrorAck(await emitAck(s, 'broadcast_room', { room: 'project:5:comments', event: 'sneaky', data: 1 }), 'FORBIDDEN');
  await flush(server, b);
  assert.deepEqual(atB.events, []);
  s.close();
  admin.close();
  b.close();
});

test('reserved and server event names: INVALID_PAYLOAD, in both forms', async () => {
  const s = await connectAs(server, { userId: 'bc-reserved', projects: [7], permissions: ['room_broadcast'] });
  const b = await connectAs(server, { userId: 'bc-b5', projects: [7] });
  const seen = RESERVED.map((e) => record(b, e));
  for (const event of RESERVED) {
    assertErrorAck(await emitAck(s, 'broadcast_room', 'project:7', event, { x: 1 }), 'INVALID_PAYLOAD');
    assertErrorAck(await emitAck(s, 'broadcast_room', { room: 'project:7', event, data: { x: 1 } }), 'INVALID_PAYLOAD');
  }
  await flush(server, b);
  for (const [i, r] of seen.entries()) assert.deepEqual(r.events, [], RESERVED[i]);
  s.close();
  b.close();
});

test('bad arguments: invalid room name INVALID_ROOM, missing event INVALID_PAYLOAD', async () => {
  const s = await connectAs(server, { userId: 'bc-args', projects: [8], permissions: ['room_broadcast'] });
  assertErrorAck(await emitAck(s, 'broadcast_room', 'foo', 'custom_event', 1), 'INVALID_ROOM');
  assertErrorAck(await emitAck(s, 'broadcast_room', { room: 'Project:8', event: 'custom_event', data: 1 }), 'INVALID_ROOM');
  assertErrorAck(await emitAck(s, 'broadcast_room', 'project:8'), 'INVALID_PAYLOAD');
  assertErrorAck(await emitAck(s, 'broadcast_room', { room: 'project:8', data: 1 }), 'INVALID_PAYLOAD');
  assertErrorAck(await emitAck(s, 'broadcast_room', { room: 'project:8', event: 42, data: 1 }), 'INVALID_PAYLOAD');
  assertErrorAck(await emitAck(s, 'broadcast_room', 42, 'custom_event', 1), 'INVALID_PAYLOAD');
  s.close();
});
