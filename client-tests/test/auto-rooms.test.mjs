// Section 2: rooms joined automatically on connect, proved with POST /api/emit, and the
// socket's own id room.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { apiEmit, connect, connectAs, flush, record, signToken, startServer, waitFor } from './helpers.mjs';

let server;
before(async () => {
  server = await startServer();
});
after(() => server?.stop());

async function emitTo(rooms, event, data) {
  const res = await apiEmit(server.url, { rooms, event, data }, server.apiKey);
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.deepEqual(res.body, { success: true });
}

const claims = {
  userId: 'auto-me',
  projects: [1, 'p-2', 'P.3'],
  teams: [7, 'team_x'],
  tasks: [9, 'task-a'],
};

for (const transport of ['websocket', 'polling']) {
  test(`auto-joined rooms over ${transport}`, async () => {
    const socket = await connectAs(server, claims, { transports: [transport] });
    const expected = [
      'notifications:auto-me',
      'contacts:auto-me',
      'presence:auto-me',
      'project:1',
      'project:p-2',
      'project:P.3',
      'team:7',
      'team:team_x',
    ];
    // right after the connect acknowledgement, every automatic room is already joined
    for (const room of expected) {
      const got = waitFor(socket, 'auto_probe', 3000);
      await emitTo([room], 'auto_probe', { room });
      assert.deepEqual(await got, { room });
    }
    socket.close();
  });
}

test('task rooms, sub-rooms and other users\' rooms are not joined automatically', async () => {
  const socket = await connectAs(server, claims);
  const seen = record(socket, 'not_joined_probe');
  for (const room of [
    'task:9',
    'task:task-a',
    'task:9:comments',
    'project:1:comments',
    'project:1:activity',
    'team:7:chat',
    'project:4',
    'notifications:someone-else',
    'presence:someone-else',
  ]) {
    await emitTo([room], 'not_joined_probe', { room });
  }
  await flush(server, socket);
  seen.stop();
  assert.deepEqual(seen.events, []);
  socket.close();
});

test('an event sent to one socket id reaches exactly that socket', async () => {
  const token = signToken({ userId: 'two-tabs' });
  const s1 = await connect(server, { auth: { token } });
  const s2 = await connect(server, { auth: { token }, transports: ['polling'] });
  assert.notEqual(s1.id, s2.id);
  const at1 = record(s1, 'to_socket');
  const at2 = record(s2, 'to_socket');

  await emitTo([s1.id], 'to_socket', { to: 1 });
  await emitTo([s2.id], 'to_socket', { to: 2 });
  await flush(server, s1, s2);
  assert.deepEqual(at1.events, [{ to: 1 }]);
  assert.deepEqual(at2.events, [{ to: 2 }]);

  // and the user's own room reaches both sockets of that user
  const both = [waitFor(s1, 'to_user'), waitFor(s2, 'to_user')];
  await emitTo(['notifications:two-tabs'], 'to_user', 'hi');
  assert.deepEqual(await Promise.all(both), ['hi', 'hi']);
  s1.close();
  s2.close();
});

test('ids in claims given as numbers and as strings name the same room', async () => {
  const a = await connectAs(server, { userId: 'num-ids', projects: [42], teams: [8] });
  const b = await connectAs(server, { userId: 'str-ids', projects: ['42'], teams: ['8'] });
  for (const room of ['project:42', 'team:8']) {
    const got = [waitFor(a, 'same_room'), waitFor(b, 'same_room')];
    await emitTo([room], 'same_room', room);
    assert.deepEqual(await Promise.all(got), [room, room]);
  }
  a.close();
  b.close();
});
