// The access hook of contract sections 2 and 10: rooms the claims do not grant are asked
// of the main backend (POST { userId, room } → { allowed }), answers are cached, and a hook
// that is down, slow or broken denies without being cached.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, describe, test } from 'node:test';
import { assertErrorAck, connect, connectAs, emitAck, freePort, startServer, uniq } from './helpers.mjs';

const HOOK_TOKEN = 'hook-secret-token';
const delay = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A stand-in for the main backend's access hook. `allow` holds `${userId} ${room}` pairs;
 * `mode` is `ok`, `slow` (answers after 5 s), `error` (500) or `garbage` (200, not JSON).
 */
async function startHook() {
  const hook = { allow: new Set(), mode: 'ok', calls: [] };
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', async () => {
      hook.calls.push({ method: req.method, auth: req.headers.authorization, type: req.headers['content-type'], body: JSON.parse(body || 'null') });
      if (hook.mode === 'slow') await delay(5000);
      if (hook.mode === 'error') return res.writeHead(500).end('{"allowed":true}');
      if (hook.mode === 'garbage') return res.writeHead(200, { 'content-type': 'text/plain' }).end('yes');
      const { userId, room } = JSON.parse(body);
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ allowed: hook.allow.has(`${userId} ${room}`) }));
    });
  });
  const port = await freePort();
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  hook.url = `http://127.0.0.1:${port}/access`;
  hook.close = () => new Promise((r) => server.close(r));
  hook.asked = (room) => hook.calls.filter((c) => c.body?.room === room).length;
  return hook;
}

const cleanups = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function setup(env = {}) {
  const hook = await startHook();
  const server = await startServer({ ACCESS_HOOK_URL: hook.url, ACCESS_HOOK_TOKEN: HOOK_TOKEN, ...env });
  cleanups.push(() => hook.close(), () => server.stop());
  return { hook, server };
}

describe('access hook', () => {
  test('a room the claims do not grant is asked of the hook with the user and room, and a bearer token; answers are cached', async () => {
    const { hook, server } = await setup();
    const [u, t, denied] = [uniq('u'), uniq('t'), uniq('t')];
    hook.allow.add(`${u} task:${t}`);
    const s = await connectAs(server, { userId: u });

    const ack = await emitAck(s, 'join_room', `task:${t}`);
    assert.equal(ack.success, true, JSON.stringify(ack));
    assert.deepEqual(hook.calls.at(-1), {
      method: 'POST',
      auth: `Bearer ${HOOK_TOKEN}`,
      type: 'application/json',
      body: { userId: u, room: `task:${t}` },
    });
    assertErrorAck(await emitAck(s, 'join_room', `task:${denied}`), 'FORBIDDEN');

    // Within the cache time neither answer is asked again.
    assert.equal((await emitAck(s, 'leave_room', `task:${t}`)).success, true);
    assert.equal((await emitAck(s, 'join_room', `task:${t}`)).success, true);
    assertErrorAck(await emitAck(s, 'join_room', `task:${denied}`), 'FORBIDDEN');
    assert.equal(hook.asked(`task:${t}`), 1);
    assert.equal(hook.asked(`task:${denied}`), 1);
    s.close();
  });

  test('every room check uses it: task_update, time_tracking, comments, typing, user_active, documents', async () => {
    const { hook, server } = await setup();
    const [u, t, p] = [uniq('u'), uniq('t'), uniq('p')];
    for (const room of [`task:${t}`, `task:${t}:time`, `task:${t}:comments`, `project:${p}`]) hook.allow.add(`${u} ${room}`);
    const s = await connectAs(server, { userId: u });
    const ok = async (event, payload) => {
      const ack = await emitAck(s, event, payload);
      assert.equal(ack.success, true, `${event}: ${JSON.stringify(ack)}`);
    };
    await ok('task_update', { taskId: t, changes: { status: 'done' } });
    await ok('time_tracking', { taskId: t, action: 'start' });
    await ok('new_comment', { room: `task:${t}:comments`, content: 'granted by the hook' });
    await ok('typing_comment', { room: `task:${t}:comments` });
    await ok('user_active', { location: `project:${p}`, activity: 'viewing' });
    await ok('list_documents', { projectId: p });
    // The same user, another task: denied everywhere.
    const other = uniq('t');
    assertErrorAck(await emitAck(s, 'task_update', { taskId: other, changes: {} }), 'FORBIDDEN');
    assertErrorAck(await emitAck(s, 'new_comment', { room: `task:${other}:comments`, content: 'x' }), 'FORBIDDEN');
    s.close();
  });

  test('not asked: rooms the claims grant, another user\'s notifications or contacts, anonymous users', async () => {
    const { hook, server } = await setup({ AUTH_REQUIRED: 'false' });
    const [u, p, other] = [uniq('u'), uniq('p'), uniq('o')];
    hook.allow.add(`${u} notifications:${other}`); // even if the hook would say yes
    const s = await connectAs(server, { userId: u, projects: [p] });
    assert.equal((await emitAck(s, 'join_room', `project:${p}:comments`)).success, true);
    assertErrorAck(await emitAck(s, 'join_room', `notifications:${other}`), 'FORBIDDEN');
    assertErrorAck(await emitAck(s, 'join_room', `contacts:${other}`), 'FORBIDDEN');
    const anon = await connect(server);
    assertErrorAck(await emitAck(anon, 'join_room', `task:${uniq('t')}`), 'FORBIDDEN');
    assert.deepEqual(hook.calls, []);
    s.close();
    anon.close();
  });

  test('a hook that is down denies at once, is not cached, and is logged without its URL or token', async () => {
    const hook = await startHook();
    await hook.close(); // nothing listens on its port now
    const server = await startServer({ ACCESS_HOOK_URL: hook.url, ACCESS_HOOK_TOKEN: HOOK_TOKEN, RUST_LOG: 'warn' });
    cleanups.push(() => server.stop());
    const s = await connectAs(server, { userId: uniq('u') });
    const t0 = Date.now();
    assertErrorAck(await emitAck(s, 'join_room', `task:${uniq('t')}`), 'FORBIDDEN');
    assert.ok(Date.now() - t0 < 2500, `took ${Date.now() - t0} ms`);
    await delay(100); // the log line is written by another thread
    assert.match(server.output, /access hook could not be reached/);
    assert.ok(!server.output.includes(HOOK_TOKEN), 'the hook token was logged');
    assert.ok(!server.output.includes(hook.url), 'the hook URL was logged');
    s.close();
  });

  test('a slow hook denies after ACCESS_HOOK_TIMEOUT_MS (2 s), and the answer is not cached', async () => {
    const { hook, server } = await setup();
    const [u, t] = [uniq('u'), uniq('t')];
    hook.allow.add(`${u} task:${t}`);
    hook.mode = 'slow';
    const s = await connectAs(server, { userId: u });
    const t0 = Date.now();
    assertErrorAck(await emitAck(s, 'join_room', `task:${t}`), 'FORBIDDEN');
    const took = Date.now() - t0;
    assert.ok(took >= 1500 && took < 3500, `denied after ${took} ms`);
    // Not cached: once the hook answers again, the same room is asked and allowed.
    hook.mode = 'ok';
    assert.equal((await emitAck(s, 'join_room', `task:${t}`)).success, true);
    assert.equal(hook.asked(`task:${t}`), 2);
    s.close();
  });

  test('an error status or an answer that is not { allowed } denies and is not cached', async () => {
    const { hook, server } = await setup();
    const [u, t] = [uniq('u'), uniq('t')];
    hook.allow.add(`${u} task:${t}`);
    const s = await connectAs(server, { userId: u });
    for (const mode of ['error', 'garbage']) {
      hook.mode = mode;
      assertErrorAck(await emitAck(s, 'join_room', `task:${t}`), 'FORBIDDEN');
    }
    hook.mode = 'ok';
    assert.equal((await emitAck(s, 'join_room', `task:${t}`)).success, true);
    assert.equal(hook.asked(`task:${t}`), 3);
    s.close();
  });

  test('cached answers expire after ACCESS_HOOK_CACHE_MS (300 ms here)', async () => {
    const { hook, server } = await setup({ ACCESS_HOOK_CACHE_MS: 300 });
    const [u, t] = [uniq('u'), uniq('t')];
    hook.allow.add(`${u} task:${t}`);
    const s = await connectAs(server, { userId: u });
    assert.equal((await emitAck(s, 'join_room', `task:${t}`)).success, true);
    assert.equal((await emitAck(s, 'leave_room', `task:${t}`)).success, true);
    hook.allow.clear(); // the backend revokes access
    await delay(400); // past the cache time
    assertErrorAck(await emitAck(s, 'join_room', `task:${t}`), 'FORBIDDEN');
    assert.equal(hook.asked(`task:${t}`), 2);
    s.close();
  });
});
