// Sections 4 (task_update, time_tracking) and 10 (Tasks, Names, ids, times): task_updated,
// user_activity in project:{p}:activity, time_tracking_updated in task:{t}:time.
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
  join,
  assertRecentIso,
  serverPool,
} from './helpers.mjs';

const { start } = serverPool(after);

const randomNumericId = () => Math.floor(Math.random() * 1e9) + 1;

describe('task_update', () => {
  let server;
  before(async () => {
    server = await start();
  });

  test('with the task in the claims: task:{t} (sender included) gets task_updated {taskId, changes, updatedBy, timestamp}', async () => {
    const t = randomNumericId(); // numbers in claims and payloads; ids in events are strings
    const uid = uniq('u');
    const s = await connectAs(server, { userId: uid, tasks: [t] });
    const watcher = await connectAs(server, { userId: uniq('w'), tasks: [String(t)] });
    await join(s, `task:${t}`);
    await join(watcher, `task:${t}`);
    const changes = { status: 'done', assignee: { id: 'x', name: 'X' }, tags: ['a', 'b'], estimate: 3.5, note: null };
    const atSender = waitFor(s, 'task_updated');
    const atWatcher = waitFor(watcher, 'task_updated');
    const ack = await emitAck(s, 'task_update', { taskId: t, changes });
    assert.equal(ack.success, true, JSON.stringify(ack));
    for (const ev of [await atSender, await atWatcher]) {
      assert.deepEqual(Object.keys(ev).sort(), ['changes', 'taskId', 'timestamp', 'updatedBy']);
      assert.equal(ev.taskId, String(t));
      assert.deepEqual(ev.changes, changes);
      assert.equal(ev.updatedBy, uid);
      assertRecentIso(ev.timestamp);
    }
    s.close();
    watcher.close();
  });

  test('an admin may update any task', async () => {
    const t = uniq('t');
    const adminId = uniq('root');
    const admin = await connectAs(server, { userId: adminId, permissions: ['admin'] });
    const watcher = await connectAs(server, { userId: uniq('w'), tasks: [t] });
    await join(watcher, `task:${t}`);
    const got = waitFor(watcher, 'task_updated');
    assert.equal((await emitAck(admin, 'task_update', { taskId: t, changes: { priority: 1 } })).success, true);
    const ev = await got;
    assert.equal(ev.taskId, t);
    assert.deepEqual(ev.changes, { priority: 1 });
    assert.equal(ev.updatedBy, adminId);
    admin.close();
    watcher.close();
  });

  test('with a projectId the user may access: project:{p}:activity gets user_activity', async () => {
    const t = uniq('t');
    const p = uniq('p');
    const uid = uniq('u');
    const s = await connectAs(server, { userId: uid, name: 'Pat Doer', tasks: [t], projects: [p] });
    const watcher = await connectAs(server, { userId: uniq('w'), projects: [p] });
    await join(watcher, `project:${p}:activity`);
    await join(s, `project:${p}:activity`);
    const changes = { status: 'in_progress' };
    const atWatcher = waitFor(watcher, 'user_activity');
    const atSender = waitFor(s, 'user_activity');
    const ack = await emitAck(s, 'task_update', { taskId: t, projectId: p, changes });
    assert.equal(ack.success, true, JSON.stringify(ack));
    for (const ev of [await atWatcher, await atSender]) {
      assert.deepEqual(Object.keys(ev).sort(), ['changes', 'projectId', 'taskId', 'timestamp', 'type', 'userId', 'userName']);
      assert.equal(ev.type, 'task_updated');
      assert.equal(ev.userId, uid);
      assert.equal(ev.userName, 'Pat Doer');
      assert.equal(ev.taskId, t);
      assert.equal(ev.projectId, p);
      assert.deepEqual(ev.changes, changes);
      assertRecentIso(ev.timestamp);
    }
    s.close();
    watcher.close();
  });

  test('userName falls back to the id; numeric projectId is sent back as a string', async () => {
    const t = uniq('t');
    const p = randomNumericId();
    const uid = uniq('u');
    const s = await connectAs(server, { userId: uid, tasks: [t], projects: [p] });
    const watcher = await connectAs(server, { userId: uniq('w'), projects: [p] });
    await join(watcher, `project:${p}:activity`);
    const got = waitFor(watcher, 'user_activity');
    assert.equal((await emitAck(s, 'task_update', { taskId: t, projectId: p, changes: {} })).success, true);
    const ev = await got;
    assert.equal(ev.userName, uid);
    assert.equal(ev.projectId, String(p));
    assert.deepEqual(ev.changes, {});
    s.close();
    watcher.close();
  });

  test('a projectId the user may not access is skipped silently: ack success, task_updated sent, no user_activity', async () => {
    const t = uniq('t');
    const p = uniq('p');
    const s = await connectAs(server, { userId: uniq('u'), tasks: [t] });
    const watcher = await connectAs(server, { userId: uniq('w'), projects: [p], tasks: [t] });
    await join(watcher, `project:${p}:activity`);
    await join(watcher, `task:${t}`);
    const activity = record(watcher, 'activity');
    const userActivity = record(watcher, 'user_activity');
    const updated = record(watcher, 'task_updated');
    const ack = await emitAck(s, 'task_update', { taskId: t, projectId: p, changes: { x: 1 } });
    assert.equal(ack.success, true, JSON.stringify(ack));
    await flush(server, watcher);
    assert.deepEqual(userActivity.events, []);
    assert.deepEqual(activity.events, []);
    assert.equal(updated.events.length, 1);
    assert.deepEqual(updated.events[0].changes, { x: 1 });
    s.close();
    watcher.close();
  });

  test('no access to the task FORBIDDEN (nothing sent); changes not an object INVALID_PAYLOAD', async () => {
    const t = uniq('t');
    const p = uniq('p');
    const s = await connectAs(server, { userId: uniq('u'), tasks: [uniq('t')], projects: [p] });
    const watcher = await connectAs(server, { userId: uniq('w'), tasks: [t], projects: [p] });
    await join(watcher, `task:${t}`);
    await join(watcher, `project:${p}:activity`);
    const updated = record(watcher, 'task_updated');
    const act = record(watcher, 'user_activity');
    assertErrorAck(await emitAck(s, 'task_update', { taskId: t, projectId: p, changes: { a: 1 } }), 'FORBIDDEN');
    const mine = await connectAs(server, { userId: uniq('u'), tasks: [t] });
    for (const changes of ['done', 5, null, undefined, true, ['a']]) {
      assertErrorAck(await emitAck(mine, 'task_update', { taskId: t, changes }), 'INVALID_PAYLOAD');
    }
    for (const payload of [null, 'x', { changes: {} }, { taskId: 'bad id', changes: {} }, { taskId: '', changes: {} }]) {
      assertErrorAck(await emitAck(mine, 'task_update', payload), 'INVALID_PAYLOAD');
    }
    await flush(server, watcher);
    assert.deepEqual(updated.events, []);
    assert.deepEqual(act.events, []);
    for (const x of [s, watcher, mine]) x.close();
  });
});

describe('time_tracking', () => {
  let server;
  before(async () => {
    server = await start();
  });

  test('start / stop: task:{t}:time (sender included) gets time_tracking_updated {taskId, userId, action, at}', async () => {
    const t = randomNumericId();
    const uid = uniq('u');
    const s = await connectAs(server, { userId: uid, tasks: [t] });
    const watcher = await connectAs(server, { userId: uniq('w'), tasks: [t] });
    await join(s, `task:${t}:time`);
    await join(watcher, `task:${t}:time`);
    for (const action of ['start', 'stop']) {
      const atSender = waitFor(s, 'time_tracking_updated');
      const atWatcher = waitFor(watcher, 'time_tracking_updated');
      const ack = await emitAck(s, 'time_tracking', { taskId: t, action });
      assert.equal(ack.success, true, JSON.stringify(ack));
      for (const ev of [await atSender, await atWatcher]) {
        assert.deepEqual(Object.keys(ev).sort(), ['action', 'at', 'taskId', 'userId']);
        assert.equal(ev.taskId, String(t));
        assert.equal(ev.userId, uid);
        assert.equal(ev.action, action);
        assertRecentIso(ev.at, 'at');
      }
    }
    s.close();
    watcher.close();
  });

  test('`at` as ISO or epoch milliseconds comes back as ISO UTC', async () => {
    const t = uniq('t');
    const s = await connectAs(server, { userId: uniq('u'), tasks: [t] });
    await join(s, `task:${t}:time`);
    const cases = [
      [1_700_000_000_000, 1_700_000_000_000],
      [1_700_000_000_123, 1_700_000_000_123],
      ['2024-03-01T12:34:56.789Z', Date.UTC(2024, 2, 1, 12, 34, 56, 789)],
      ['2024-03-01T13:34:56.789+01:00', Date.UTC(2024, 2, 1, 12, 34, 56, 789)],
      ['2024-03-01T12:34:56Z', Date.UTC(2024, 2, 1, 12, 34, 56)],
    ];
    for (const [at, ms] of cases) {
      const got = waitFor(s, 'time_tracking_updated');
      const ack = await emitAck(s, 'time_tracking', { taskId: t, action: 'start', at });
      assert.equal(ack.success, true, JSON.stringify(ack));
      const ev = await got;
      assert.match(ev.at, ISO_UTC, `at ${JSON.stringify(at)} came back as ${ev.at}`);
      assert.equal(Date.parse(ev.at), ms, `at ${JSON.stringify(at)} came back as ${ev.at}`);
    }
    s.close();
  });

  test('bad action or bad at INVALID_PAYLOAD; no access FORBIDDEN; nothing sent', async () => {
    const t = uniq('t');
    const s = await connectAs(server, { userId: uniq('u'), tasks: [t] });
    const watcher = await connectAs(server, { userId: uniq('w'), tasks: [t] });
    await join(watcher, `task:${t}:time`);
    const rec = record(watcher, 'time_tracking_updated');
    for (const action of ['pause', 'START', '', undefined, null, 1, ['start']]) {
      assertErrorAck(await emitAck(s, 'time_tracking', { taskId: t, action }), 'INVALID_PAYLOAD');
    }
    for (const at of ['yesterday', 'not-a-date', '', {}, true, [1_700_000_000_000]]) {
      assertErrorAck(await emitAck(s, 'time_tracking', { taskId: t, action: 'start', at }), 'INVALID_PAYLOAD');
    }
    for (const payload of [null, 'start', { action: 'start' }, { taskId: 'a b', action: 'start' }]) {
      assertErrorAck(await emitAck(s, 'time_tracking', payload), 'INVALID_PAYLOAD');
    }
    const stranger = await connectAs(server, { userId: uniq('x'), tasks: [uniq('t')] });
    assertErrorAck(await emitAck(stranger, 'time_tracking', { taskId: t, action: 'start' }), 'FORBIDDEN');
    await flush(server, watcher);
    assert.deepEqual(rec.events, []);
    for (const x of [s, watcher, stranger]) x.close();
  });
});
