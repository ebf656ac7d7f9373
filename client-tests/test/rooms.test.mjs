// Sections 2, 3, 4 (join_room / leave_room) and 10 (Rooms): access, names, payloads, sizes,
// user_joined / user_left, ROOM_FULL, the rooms-per-socket cap, error acks and `error` events.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  assertErrorAck,
  connect,
  connectAs,
  emitAck,
  flush,
  record,
  waitFor,
  serverPool,
} from './helpers.mjs';

const { start } = serverPool(after);

describe('join_room / leave_room (default limits)', () => {
  let server;
  before(async () => {
    server = await start();
  });

  test('string and { room } forms; ack { success, room, size }', async () => {
    const s = await connectAs(server, { userId: 'forms', projects: [11] });
    assert.deepEqual(await emitAck(s, 'join_room', 'project:11:comments'), { success: true, room: 'project:11:comments', size: 1 });
    assert.deepEqual(await emitAck(s, 'join_room', { room: 'project:11:activity' }), { success: true, room: 'project:11:activity', size: 1 });
    const left1 = await emitAck(s, 'leave_room', 'project:11:comments');
    assert.equal(left1.success, true, JSON.stringify(left1));
    if ('room' in left1) assert.equal(left1.room, 'project:11:comments');
    const left2 = await emitAck(s, 'leave_room', { room: 'project:11:activity' });
    assert.equal(left2.success, true, JSON.stringify(left2));
    if ('room' in left2) assert.equal(left2.room, 'project:11:activity');
    // left for real: joining again is size 1 and tells the others nothing new
    assert.deepEqual(await emitAck(s, 'join_room', 'project:11:comments'), { success: true, room: 'project:11:comments', size: 1 });
    s.close();
  });

  test('rooms allowed by the claims', async () => {
    const s = await connectAs(server, { userId: 'claims-u', projects: [12, 'p-x'], tasks: [5, 't.y'], teams: ['tm'] });
    for (const room of [
      'notifications:claims-u',
      'contacts:claims-u',
      'presence:claims-u',
      'presence:somebody-else',
      'project:12',
      'project:12:comments',
      'project:12:activity',
      'project:p-x:comments',
      'task:5',
      'task:5:comments',
      'task:5:time',
      'task:t.y:time',
      'team:tm',
      'team:tm:chat',
    ]) {
      const ack = await emitAck(s, 'join_room', room);
      assert.equal(ack.success, true, `${room}: ${JSON.stringify(ack)}`);
      assert.equal(ack.room, room);
      assert.equal(typeof ack.size, 'number');
    }
    s.close();
  });

  test('FORBIDDEN for rooms the claims do not grant', async () => {
    const s = await connectAs(server, { userId: 'forbid-u', projects: [13], tasks: [6], teams: ['t1'], permissions: ['room_broadcast', 'metrics'] });
    for (const room of [
      'notifications:other-user',
      'contacts:other-user',
      'project:14',
      'project:14:comments',
      'project:130',
      'task:7',
      'task:7:time',
      'team:t2',
      'team:t2:chat',
    ]) {
      assertErrorAck(await emitAck(s, 'join_room', room), 'FORBIDDEN');
      assertErrorAck(await emitAck(s, 'join_room', { room }), 'FORBIDDEN');
    }
    s.close();
  });

  test('admin joins any valid room, but never a socket id room', async () => {
    const other = await connectAs(server, { userId: 'admin-target' });
    const admin = await connectAs(server, { userId: 'root', permissions: ['admin'] });
    for (const room of [
      'notifications:admin-target',
      'contacts:admin-target',
      'project:999',
      'project:999:comments',
      'task:42:time',
      'team:z:chat',
      `project:${'a'.repeat(128)}`,
    ]) {
      const ack = await emitAck(admin, 'join_room', room);
      assert.equal(ack.success, true, `${room}: ${JSON.stringify(ack)}`);
      assert.equal(ack.room, room);
    }
    assertErrorAck(await emitAck(admin, 'join_room', other.id), 'INVALID_ROOM');
    assertErrorAck(await emitAck(admin, 'join_room', admin.id), 'INVALID_ROOM');
    assertErrorAck(await emitAck(admin, 'join_room', `project:${'a'.repeat(129)}`), 'INVALID_ROOM');
    other.close();
    admin.close();
  });

  test('INVALID_ROOM for bad names', async () => {
    const peer = await connectAs(server, { userId: 'peer' });
    const s = await connectAs(server, { userId: 'names', projects: ['a', 1] });
    const bad = [
      'foo',
      '',
      'project:',
      'project:a:b',
      'project:a b',
      'project:1:chat',
      'team:a:comments',
      `project:${'a'.repeat(129)}`,
      'Project:1',
      'PROJECT:1',
      'project:1 ',
      ' project:1',
      'project:a/b',
      'notifications:',
      peer.id,
      s.id,
    ];
    for (const room of bad) {
      assertErrorAck(await emitAck(s, 'join_room', room), 'INVALID_ROOM');
      assertErrorAck(await emitAck(s, 'join_room', { room }), 'INVALID_ROOM');
    }
    for (const room of ['foo', 'project:', 'Project:1', peer.id]) {
      assertErrorAck(await emitAck(s, 'leave_room', room), 'INVALID_ROOM');
    }
    peer.close();
    s.close();
  });

  test('INVALID_PAYLOAD for a payload that is neither a string nor { room }', async () => {
    const s = await connectAs(server, { userId: 'payloads', projects: [1] });
    for (const payload of [42, null, {}, true, ['project:1']]) {
      assertErrorAck(await emitAck(s, 'join_room', payload), 'INVALID_PAYLOAD');
      assertErrorAck(await emitAck(s, 'leave_room', payload), 'INVALID_PAYLOAD');
    }
    s.close();
  });

  test('size counts auto-joined sockets and the joiner; others get user_joined, the joiner does not', async () => {
    const a = await connectAs(server, { userId: 'size-a', projects: [20] });
    const b = await connectAs(server, { userId: 'size-b', projects: [20] });
    const c = await connectAs(server, { userId: 'size-c', projects: [20] });
    const joinedA = record(a, 'user_joined');
    const joinedB = record(b, 'user_joined');
    const joinedC = record(c, 'user_joined');

    // b is in presence:size-b automatically: a joining makes 2
    assert.deepEqual(await emitAck(a, 'join_room', 'presence:size-b'), { success: true, room: 'presence:size-b', size: 2 });
    // project:20:comments: a then b
    assert.deepEqual(await emitAck(a, 'join_room', 'project:20:comments'), { success: true, room: 'project:20:comments', size: 1 });
    assert.deepEqual(await emitAck(b, 'join_room', 'project:20:comments'), { success: true, room: 'project:20:comments', size: 2 });
    await flush(server, a, b, c);
    assert.deepEqual(joinedA.events, [{ userId: 'size-b', roomId: 'project:20:comments' }]);
    assert.deepEqual(joinedB.events, [{ userId: 'size-a', roomId: 'presence:size-b' }]);
    assert.deepEqual(joinedC.events, []);

    // already joined through join_room, and auto-joined: success, same size, no event
    assert.deepEqual(await emitAck(a, 'join_room', 'project:20:comments'), { success: true, room: 'project:20:comments', size: 2 });
    assert.deepEqual(await emitAck(c, 'join_room', 'project:20'), { success: true, room: 'project:20', size: 3 });
    assert.deepEqual(await emitAck(c, 'join_room', { room: 'notifications:size-c' }), { success: true, room: 'notifications:size-c', size: 1 });
    await flush(server, a, b, c);
    assert.equal(joinedA.events.length, 1);
    assert.equal(joinedB.events.length, 1);
    assert.deepEqual(joinedC.events, []);
    for (const r of [joinedA, joinedB, joinedC]) r.stop();
    a.close();
    b.close();
    c.close();
  });

  test('leave_room: others get user_left, the leaver does not; leaving a room not joined succeeds silently', async () => {
    const a = await connectAs(server, { userId: 'leave-a', projects: [21] });
    const b = await connectAs(server, { userId: 'leave-b', projects: [21] });
    await emitAck(a, 'join_room', 'project:21:activity');
    await emitAck(b, 'join_room', 'project:21:activity');
    const leftA = record(a, 'user_left');
    const leftB = record(b, 'user_left');

    const ack = await emitAck(a, 'leave_room', 'project:21:activity');
    assert.equal(ack.success, true, JSON.stringify(ack));
    await flush(server, a, b);
    assert.deepEqual(leftB.events, [{ userId: 'leave-a', roomId: 'project:21:activity' }]);
    assert.deepEqual(leftA.events, []);

    // not joined (any more / never / not even allowed): success, no event
    for (const room of ['project:21:activity', 'project:21:comments', 'project:999', 'team:nope:chat']) {
      const again = await emitAck(a, 'leave_room', room);
      assert.equal(again.success, true, `${room}: ${JSON.stringify(again)}`);
    }
    await flush(server, a, b);
    assert.equal(leftB.events.length, 1);
    assert.deepEqual(leftA.events, []);

    // b is alone in the room now
    assert.deepEqual(await emitAck(b, 'join_room', 'project:21:activity'), { success: true, room: 'project:21:activity', size: 1 });
    leftA.stop();
    leftB.stop();
    a.close();
    b.close();
  });

  test('user_left is sent when a socket that joined the room disconnects', async () => {
    const a = await connectAs(server, { userId: 'gone-a', projects: [22] });
    const b = await connectAs(server, { userId: 'gone-b', projects: [22] }, { transports: ['polling'] });
    await emitAck(a, 'join_room', 'project:22:comments');
    await emitAck(b, 'join_room', 'project:22:comments');
    const left = waitFor(a, 'user_left', 3000, (e) => e?.roomId === 'project:22:comments');
    b.close();
    assert.deepEqual(await left, { userId: 'gone-b', roomId: 'project:22:comments' });
    // and the size went down
    const c = await connectAs(server, { userId: 'gone-c', projects: [22] });
    assert.deepEqual(await emitAck(c, 'join_room', 'project:22:comments'), { success: true, room: 'project:22:comments', size: 2 });
    a.close();
    c.close();
  });

  test('a failing event sent without a callback answers with an `error` event', async () => {
    const s = await connectAs(server, { userId: 'no-cb', projects: [23] });
    let got = waitFor(s, 'error');
    s.emit('join_room', 'foo');
    assertErrorAck(await got, 'INVALID_ROOM');
    got = waitFor(s, 'error');
    s.emit('join_room', 'project:24');
    assertErrorAck(await got, 'FORBIDDEN');
    got = waitFor(s, 'error');
    s.emit('leave_room', 42);
    assertErrorAck(await got, 'INVALID_PAYLOAD');
    // a successful event without a callback sends nothing back
    const errors = record(s, 'error');
    s.emit('join_room', 'project:23:comments');
    assert.deepEqual(await emitAck(s, 'join_room', 'project:23:comments'), { success: true, room: 'project:23:comments', size: 1 });
    await flush(server, s);
    assert.deepEqual(errors.events, []);
    errors.stop();
    s.close();
  });
});

describe('MAX_ROOM_SIZE=2', () => {
  let server;
  before(async () => {
    server = await start({ MAX_ROOM_SIZE: 2 });
  });

  test('auto-joined rooms are never refused; join_room past the cap is ROOM_FULL', async () => {
    const claims = (userId) => ({ userId, projects: [1] });
    const a = await connectAs(server, claims('full-a'));
    const b = await connectAs(server, claims('full-b'));
    const c = await connectAs(server, claims('full-c'));
    // all three are in project:1, over the cap: joining it again is a success
    assert.deepEqual(await emitAck(a, 'join_room', 'project:1'), { success: true, room: 'project:1', size: 3 });

    assert.deepEqual(await emitAck(a, 'join_room', 'project:1:comments'), { success: true, room: 'project:1:comments', size: 1 });
    const joined = record(a, 'user_joined');
    assert.deepEqual(await emitAck(b, 'join_room', 'project:1:comments'), { success: true, room: 'project:1:comments', size: 2 });
    assertErrorAck(await emitAck(c, 'join_room', 'project:1:comments'), 'ROOM_FULL');
    assertErrorAck(await emitAck(c, 'join_room', { room: 'project:1:comments' }), 'ROOM_FULL');
    await flush(server, a);
    assert.deepEqual(joined.events, [{ userId: 'full-b', roomId: 'project:1:comments' }]);
    joined.stop();

    // a member re-joining a full room is not refused
    assert.deepEqual(await emitAck(b, 'join_room', 'project:1:comments'), { success: true, room: 'project:1:comments', size: 2 });
    // a place frees up
    assert.equal((await emitAck(a, 'leave_room', 'project:1:comments')).success, true);
    assert.deepEqual(await emitAck(c, 'join_room', 'project:1:comments'), { success: true, room: 'project:1:comments', size: 2 });
    a.close();
    b.close();
    c.close();
  });
});

describe('MAX_ROOMS_PER_SOCKET=2', () => {
  let server;
  before(async () => {
    server = await start({ MAX_ROOMS_PER_SOCKET: 2 });
  });

  test('the third join_room is FORBIDDEN; auto-joined rooms do not count', async () => {
    // 3 automatic rooms + project:1 + team:1
    const s = await connectAs(server, { userId: 'many', projects: [1], teams: [1] });
    assert.deepEqual(await emitAck(s, 'join_room', 'project:1:comments'), { success: true, room: 'project:1:comments', size: 1 });
    assert.deepEqual(await emitAck(s, 'join_room', 'project:1:activity'), { success: true, room: 'project:1:activity', size: 1 });
    assertErrorAck(await emitAck(s, 'join_room', 'team:1:chat'), 'FORBIDDEN');
    // rooms already in: still a success
    assert.deepEqual(await emitAck(s, 'join_room', 'project:1:comments'), { success: true, room: 'project:1:comments', size: 1 });
    assert.deepEqual(await emitAck(s, 'join_room', 'project:1'), { success: true, room: 'project:1', size: 1 });
    // leaving one makes room for another
    assert.equal((await emitAck(s, 'leave_room', 'project:1:activity')).success, true);
    assert.deepEqual(await emitAck(s, 'join_room', 'team:1:chat'), { success: true, room: 'team:1:chat', size: 1 });
    assertErrorAck(await emitAck(s, 'join_room', 'project:1:activity'), 'FORBIDDEN');
    // the cap is per socket
    const other = await connect(server, { auth: s.auth });
    assert.deepEqual(await emitAck(other, 'join_room', 'project:1:activity'), { success: true, room: 'project:1:activity', size: 1 });
    s.close();
    other.close();
  });
});

// Any authenticated user may join `presence:{u}`: one user's sockets used to fill it (or any
// room) up to MAX_ROOM_SIZE, so that the user's colleagues got ROOM_FULL. A user now holds
// at most MAX_ROOM_SOCKETS_PER_USER (10) places in a room on an instance.
describe('MAX_ROOM_SIZE=20: one user cannot lock others out of a room', () => {
  let server;
  before(async () => {
    server = await start({ MAX_ROOM_SIZE: 20 });
  });

  test("19 sockets of one user join presence:{victim}: the 11th is FORBIDDEN, the victim's colleague still joins", async () => {
    const victim = await connectAs(server, { userId: 'victim' }); // auto-joined to presence:victim
    const squatters = [];
    const acks = [];
    for (let i = 0; i < 19; i++) {
      const s = await connectAs(server, { userId: 'squatter' });
      squatters.push(s);
      acks.push(await emitAck(s, 'join_room', 'presence:victim'));
    }
    for (const [i, ack] of acks.entries()) {
      if (i < 10) assert.deepEqual(ack, { success: true, room: 'presence:victim', size: i + 2 }, `join ${i + 1}`);
      else assertErrorAck(ack, 'FORBIDDEN');
    }
    const colleague = await connectAs(server, { userId: 'colleague' });
    assert.deepEqual(await emitAck(colleague, 'join_room', 'presence:victim'), { success: true, room: 'presence:victim', size: 12 });
    // the squatter's places are its own: one leaves, another of its sockets may join
    assert.equal((await emitAck(squatters[0], 'leave_room', 'presence:victim')).success, true);
    assert.deepEqual(await emitAck(squatters[10], 'join_room', 'presence:victim'), { success: true, room: 'presence:victim', size: 12 });
    // auto-joined places are never refused: the victim's 11th socket is in its own room
    const own = [];
    for (let i = 0; i < 11; i++) own.push(await connectAs(server, { userId: 'victim' }));
    assert.deepEqual(await emitAck(own[10], 'join_room', 'presence:victim'), { success: true, room: 'presence:victim', size: 23 });
    for (const s of [victim, colleague, ...squatters, ...own]) s.close();
  });
});
