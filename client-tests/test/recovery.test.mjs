// Connection state recovery (README, Connection state recovery; docs/events.md, Connecting)
// with the real socket.io-client: a client whose connection is lost gets its socket id, its
// rooms and the events it missed back, in order and once, and nobody sees it leave; outside
// the window it connects afresh; its session is for its own user only; RECOVERY_MAX_DISCONNECT_MS=0
// turns it off. Each on one instance, and across two instances behind one Redis, where the
// client drops on A and comes back through B.
//
// The client reaches the server through a TCP proxy of the test's own: cutting its
// connections is the network drop (the server sees its transport close, a recoverable
// reason), and pointing it at another instance is the load balancer sending the client
// elsewhere when it comes back.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import {
  API_KEY,
  IS_REFERENCE,
  apiEmitAccepted,
  connectAs,
  emitAck,
  flush,
  join,
  metrics,
  openSocket,
  record,
  signToken,
  startServer,
  uniq,
  waitFor,
  waitForDisconnect,
  waitUntil,
  whenConnected,
} from './helpers.mjs';
import { startCluster } from './services.mjs';

// The presence tests' grace period: an offline would be announced a second after the drop.
const GRACE = 1000;
const OFFSET = /^\d+-\d+$/;

/** A TCP proxy to 127.0.0.1:`port`: `cut()` destroys its connections, `point(port)` sends new ones elsewhere. */
async function startProxy(port) {
  let target = port;
  const conns = new Set();
  const srv = net.createServer((down) => {
    const up = net.connect(target, '127.0.0.1');
    const pair = [down, up];
    for (const c of pair) {
      conns.add(c);
      c.on('error', () => {});
      c.on('close', () => {
        conns.delete(c);
        for (const o of pair) o.destroy();
      });
    }
    down.pipe(up);
    up.pipe(down);
  });
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${srv.address().port}`,
    point(p) {
      target = p;
    },
    cut() {
      for (const c of conns) c.destroy();
    },
    close() {
      this.cut();
      srv.close();
    },
  };
}

/** The sum of trestle_disconnects_total over its reasons. */
async function disconnects(server) {
  const m = await metrics(server);
  return Object.entries(m)
    .filter(([k]) => k.startsWith('trestle_disconnects_total'))
    .reduce((sum, [, v]) => sum + v, 0);
}

/** Whether Redis holds the recovery session of `pid` (src/cluster/recovery.rs keys). */
function redisHasSession(redis, pid) {
  const out = execFileSync('redis-cli', ['-h', '127.0.0.1', '-p', String(redis.port), '--scan', '--pattern', `*recovery:session:${pid}`], {
    encoding: 'utf8',
    timeout: 5000,
  });
  return out.trim() !== '';
}

/** An offset as a pair of numbers, for comparing. */
const offsetOf = (s) => s.split('-').map(BigInt);
const isAfter = (a, b) => {
  const [x, y] = [offsetOf(a), offsetOf(b)];
  return x[0] > y[0] || (x[0] === y[0] && x[1] > y[1]);
};

/** Records every event `socket` receives with all its arguments, flush markers left out. */
function recordAll(socket) {
  const events = [];
  socket.onAny((event, ...args) => {
    if (event !== 'flush_marker') events.push([event, ...args]);
  });
  return events;
}

/** Flushes through every instance of `env`: what any of them sent before has arrived. */
const flushEvery = (env, ...sockets) => Promise.all(env.all.map((s) => flush(s, ...sockets)));

const aboutUser = (rec, userId) => rec.events.filter((e) => e?.userId === userId);
const waitStatus = (socket, userId, status, timeoutMs = 3000) =>
  waitFor(socket, 'status_change', timeoutMs, (e) => e?.userId === userId && e?.status === status);

async function directMessage(from, to, message) {
  const ack = await emitAck(from, 'direct_message', { to, message });
  assert.equal(ack.success, true, `direct_message: ${JSON.stringify(ack)}`);
}

async function broadcast(from, room, event, data) {
  assert.deepEqual(await emitAck(from, 'broadcast_room', room, event, data), { success: true });
}

async function emitTo(server, rooms, event, data) {
  const res = await apiEmitAccepted(server.url, { rooms, event, data }, API_KEY);
  assert.equal(res.status, 202, JSON.stringify(res.body));
}

// Each deployment: `entry`, where the client first connects, and `reentry`, where it comes back.
const deployments = [
  {
    name: 'one instance',
    async start(env) {
      // no REDIS_URL: the sessions and events are kept in memory
      const A = await startServer(env);
      return { cluster: { stop: () => A.stop() }, entry: A, reentry: A, all: [A] };
    },
  },
  {
    name: 'two instances behind one Redis, dropped on A, back through B',
    async start(env) {
      const cluster = await startCluster(2, env);
      const [A, B] = cluster.instances;
      return { cluster, entry: A, reentry: B, all: [A, B], redis: cluster.redis };
    },
  },
];

for (const d of deployments)
  describe(`connection state recovery, ${d.name}`, { skip: IS_REFERENCE && 'Trestle only' }, () => {
    let env;
    const proxies = [];
    before(async () => {
      env = await d.start({ PRESENCE_GRACE_MS: GRACE, RECOVERY_MAX_DISCONNECT_MS: 120_000 });
    });
    after(async () => {
      for (const p of proxies) p.close();
      await env?.cluster.stop();
    });

    /** A proxy to `entry`, closed after the file. */
    async function proxy() {
      const p = await startProxy(env.entry.port);
      proxies.push(p);
      return p;
    }

    const flushAll = (...sockets) => flushEvery(env, ...sockets);

    /**
     * Connects `claims` through `p`, joins `rooms` and waits for a first event (the client
     * presents its session only once it has an offset). Resolves with the socket and the
     * events it receives from then on.
     */
    async function victimThrough(p, claims, rooms) {
      const s = openSocket(p.url, { auth: { token: signToken(claims) } });
      env.entry.track(s);
      await whenConnected(s);
      assert.equal(typeof s._pid, 'string', 'the CONNECT answer has no pid');
      for (const r of rooms) await join(s, r);
      await flush(env.entry, s);
      assert.match(s._lastOffset, OFFSET);
      return { s, log: recordAll(s) };
    }

    /** Cuts `p` under `s` and waits until the server has noticed, and saved the session. */
    async function drop(p, s) {
      const pid = s._pid;
      const before = await disconnects(env.entry);
      const lost = waitForDisconnect(s);
      p.cut();
      assert.equal(await lost, 'transport close');
      await waitUntil(async () => (await disconnects(env.entry)) > before, 5000);
      if (env.redis) await waitUntil(() => redisHasSession(env.redis, pid), 5000);
    }

    /** Points `p` at the reentry instance and connects `s` again. */
    async function comeBack(p, s) {
      p.point(env.reentry.port);
      s.connect();
      await whenConnected(s);
    }

    test('missed events to a joined room, the user and the socket id come back in order, once; the socket id and rooms too', async () => {
      const p = await proxy();
      const [proj, X, W] = [uniq('p'), uniq('x'), uniq('w')];
      const room = `project:${proj}:activity`;
      const watcher = await connectAs(env.reentry, { userId: W, projects: [proj], permissions: ['room_broadcast'] });
      await join(watcher, room);
      const { s, log } = await victimThrough(p, { userId: X, projects: [proj] }, [room]);
      const id = s.id;
      const pid = s._pid;
      const offsetBefore = s._lastOffset;

      await drop(p, s);
      // while it is away: to the room it joined, to its user, to its socket id
      await broadcast(watcher, room, 'drawing_moved', { n: 1 });
      await directMessage(watcher, X, 'while away');
      await emitTo(env.entry, [id], 'resource_updated', { n: 3 });

      const lastMissed = waitFor(s, 'resource_updated', 5000, (e) => e?.n === 3);
      await comeBack(p, s);
      assert.equal(s.recovered, true);
      assert.equal(s.id, id);
      await lastMissed;
      await flush(env.reentry, s);
      assert.deepEqual(
        log.map(([event, data]) => [event, event === 'direct_message' ? data.message : data]),
        [
          ['drawing_moved', { n: 1 }],
          ['direct_message', 'while away'],
          ['resource_updated', { n: 3 }],
        ],
      );
      // each with its offset as the last argument, after the one the client had
      let last = offsetBefore;
      for (const ev of log) {
        assert.equal(ev.length, 3, JSON.stringify(ev));
        assert.match(ev[2], OFFSET);
        assert.ok(isAfter(ev[2], last), `${ev[2]} is not after ${last}`);
        last = ev[2];
      }
      assert.equal(log[1][1].from.id, W);
      assert.equal(s._pid, pid); // socket.io gives the session its pid again

      // the rooms came back: the joined room and the user's own get what comes next, once
      log.length = 0;
      const live = waitFor(s, 'drawing_moved', 3000, (e) => e?.n === 4);
      await broadcast(watcher, room, 'drawing_moved', { n: 4 });
      await live;
      await directMessage(watcher, X, 'after');
      await flushAll(s);
      assert.deepEqual(
        log.map(([event, data]) => [event, event === 'direct_message' ? data.message : data]),
        [
          ['drawing_moved', { n: 4 }],
          ['direct_message', 'after'],
        ],
      );
      watcher.close();
      s.close();
    });

    test('others see no user_left, user_joined or status_change for a recovered drop', async () => {
      const p = await proxy();
      const [proj, X, Y, W] = [uniq('p'), uniq('x'), uniq('y'), uniq('w')];
      const room = `project:${proj}:activity`;
      const watcher = await connectAs(env.reentry, { userId: W, projects: [proj], permissions: ['room_broadcast'] });
      await join(watcher, room);
      const { s } = await victimThrough(p, { userId: X, projects: [proj] }, [room]);
      // a control user in the same rooms on the same instance, who leaves for good
      const control = await connectAs(env.entry, { userId: Y, projects: [proj] });
      await join(control, room);
      await flushAll(watcher);
      const status = record(watcher, 'status_change');
      const left = record(watcher, 'user_left');
      const joined = record(watcher, 'user_joined');

      await drop(p, s);
      // The control's user_left and offline come as X's would have: X dropped first, so
      // once the control's have arrived, X's would have too.
      const controlLeft = waitFor(watcher, 'user_left', 3000, (e) => e?.userId === Y && e?.roomId === room);
      const controlOffline = waitStatus(watcher, Y, 'offline', GRACE + 5000);
      control.disconnect();
      await controlLeft;
      await controlOffline;
      await broadcast(watcher, room, 'drawing_moved', { n: 1 });

      const missed = waitFor(s, 'drawing_moved', 5000);
      await comeBack(p, s);
      assert.equal(s.recovered, true);
      await missed;
      await flushAll(watcher);
      assert.deepEqual(aboutUser(status, X), [], 'status_change about the recovered user');
      assert.deepEqual(aboutUser(left, X), [], 'user_left for the recovered socket');
      assert.deepEqual(aboutUser(joined, X), [], 'user_joined for the recovered socket');
      const presence = await emitAck(watcher, 'get_presence', { userIds: [X] });
      assert.equal(presence.presence?.[X]?.status, 'online', JSON.stringify(presence));
      watcher.close();
      s.close();
    });

    test("another user's token, or none, with the victim's pid and offset recovers nothing; the victim still can", async () => {
      const p = await proxy();
      const [proj, X] = [uniq('p'), uniq('x')];
      const room = `project:${proj}:activity`;
      const { s, log } = await victimThrough(p, { userId: X, projects: [proj] }, [room]);
      const id = s.id;
      const stolen = { pid: s._pid, offset: s._lastOffset };
      await drop(p, s);
      await emitTo(env.entry, [id], 'resource_updated', { secret: 1 });
      await emitTo(env.entry, [`notifications:${X}`], 'notification', { secret: 2 });

      for (const [what, auth] of [
        // a wrong offset must not use the session up either (it is checked before the token)
        ['no token, an offset never given', { pid: stolen.pid, offset: '1-0' }],
        ['another user', { token: signToken({ userId: uniq('attacker'), projects: [proj] }), ...stolen }],
        ['no token', { ...stolen }],
      ]) {
        const attacker = openSocket(env.reentry, { auth });
        const seen = recordAll(attacker);
        const outcome = await whenConnected(attacker).then(
          () => null,
          (err) => err.message,
        );
        if (outcome === null) {
          assert.equal(attacker.recovered, false, `${what}: recovered the victim's session`);
          assert.notEqual(attacker.id, id, `${what}: got the victim's socket id`);
          await flushAll(attacker);
          assert.deepEqual(seen, [], `${what}: got the victim's events`);
          attacker.close();
        } else {
          assert.ok(['Authentication failed', 'Authentication required'].includes(outcome), `${what}: ${outcome}`);
          assert.deepEqual(seen, [], `${what}: got the victim's events`);
        }
      }

      const missed = waitFor(s, 'notification', 5000);
      await comeBack(p, s);
      assert.equal(s.recovered, true);
      assert.equal(s.id, id);
      await missed;
      await flush(env.reentry, s);
      assert.deepEqual(
        log.map(([event, data]) => [event, data]),
        [
          ['resource_updated', { secret: 1 }],
          ['notification', { secret: 2 }],
        ],
      );
      s.close();
    });

    test('a room the new token no longer grants is left on recovery, and the others there are told', async () => {
      const p = await proxy();
      const [kept, revoked, X, W] = [uniq('p'), uniq('p'), uniq('x'), uniq('w')];
      const [stays, goes] = [`project:${kept}:activity`, `project:${revoked}:activity`];
      const watcher = await connectAs(env.reentry, { userId: W, projects: [kept, revoked], permissions: ['room_broadcast'] });
      await join(watcher, stays);
      await join(watcher, goes);
      const { s, log } = await victimThrough(p, { userId: X, projects: [kept, revoked] }, [stays, goes]);
      await drop(p, s);
      // the main backend took project `revoked` away: the client's next token lacks it
      s.auth = { token: signToken({ userId: X, projects: [kept] }) };
      const left = waitFor(watcher, 'user_left', 5000, (e) => e?.userId === X && e?.roomId === goes);
      await comeBack(p, s);
      assert.equal(s.recovered, true);
      await left;
      log.length = 0;
      await broadcast(watcher, goes, 'drawing_moved', { room: 'revoked' });
      await broadcast(watcher, stays, 'drawing_moved', { room: 'kept' });
      await flushAll(s);
      assert.deepEqual(
        log.filter(([event]) => event === 'drawing_moved').map(([, data]) => data),
        [{ room: 'kept' }],
        'only the room still granted reaches the recovered socket',
      );
      watcher.close();
      s.close();
    });

    test('an expired token at recovery time is refused with Token expired; the session stays for its owner', async () => {
      const p = await proxy();
      const [proj, X] = [uniq('p'), uniq('x')];
      const { s, log } = await victimThrough(p, { userId: X, projects: [proj] }, []);
      const id = s.id;
      await drop(p, s);
      await emitTo(env.entry, [id], 'resource_updated', { n: 1 });

      s.auth = { token: signToken({ userId: X, projects: [proj], exp: Math.floor(Date.now() / 1000) - 60 }) };
      p.point(env.reentry.port);
      s.connect();
      await assert.rejects(whenConnected(s), { message: 'Token expired' });
      assert.equal(s.recovered, false);
      assert.deepEqual(log, []);

      // whenConnected closed the client on the refusal; with a valid token it comes back
      s.auth = { token: signToken({ userId: X, projects: [proj] }) };
      const missed = waitFor(s, 'resource_updated', 5000);
      await comeBack(p, s);
      assert.equal(s.recovered, true);
      assert.equal(s.id, id);
      await missed;
      s.close();
    });
  });

for (const d of deployments)
  describe(`connection state recovery, ${d.name}, RECOVERY_MAX_DISCONNECT_MS=1500`, { skip: IS_REFERENCE && 'Trestle only' }, () => {
    const WINDOW = 1500;
    let env;
    let p;
    before(async () => {
      env = await d.start({ PRESENCE_GRACE_MS: GRACE, RECOVERY_MAX_DISCONNECT_MS: WINDOW });
      p = await startProxy(env.entry.port);
    });
    after(async () => {
      p?.close();
      await env?.cluster.stop();
    });

    test('after the window: a new socket id, recovered false, and the usual user_left, offline and online', async () => {
      const [proj, X, W] = [uniq('p'), uniq('x'), uniq('w')];
      const room = `project:${proj}:activity`;
      const watcher = await connectAs(env.reentry, { userId: W, projects: [proj], permissions: ['room_broadcast'] });
      await join(watcher, room);
      const s = openSocket(p.url, { auth: { token: signToken({ userId: X, projects: [proj] }) } });
      env.entry.track(s);
      await whenConnected(s);
      await join(s, room);
      await flush(env.entry, s);
      assert.match(s._lastOffset, OFFSET);
      const id = s.id;
      const log = recordAll(s);

      const left = waitFor(watcher, 'user_left', WINDOW + 5000, (e) => e?.userId === X && e?.roomId === room);
      const offline = waitStatus(watcher, X, 'offline', WINDOW + GRACE + 5000);
      const lost = waitForDisconnect(s);
      p.cut();
      await lost;
      await broadcast(watcher, room, 'drawing_moved', { n: 1 });
      await left; // the window has passed: the session is given up
      await offline;

      const online = waitStatus(watcher, X, 'online', 5000);
      p.point(env.reentry.port);
      s.connect();
      await whenConnected(s);
      assert.equal(s.recovered, false);
      assert.notEqual(s.id, id);
      await online;
      await flush(env.reentry, s);
      assert.deepEqual(log, [], 'a socket connected afresh got events of the lost session');
      watcher.close();
      s.close();
    });
  });

for (const d of deployments)
  describe(`connection state recovery, ${d.name}, RECOVERY_MAX_DISCONNECT_MS=0`, { skip: IS_REFERENCE && 'Trestle only' }, () => {
    let env;
    before(async () => {
      env = await d.start({ RECOVERY_MAX_DISCONNECT_MS: 0 });
    });
    after(() => env?.cluster.stop());

    test('off: no pid in the CONNECT answer, no offset argument on events', async () => {
      const [proj, X, W] = [uniq('p'), uniq('x'), uniq('w')];
      const room = `project:${proj}:activity`;
      const s = openSocket(env.entry, { auth: { token: signToken({ userId: X, projects: [proj] }) } });
      const answers = [];
      s.io.engine.on('packet', ({ type, data }) => {
        if (type === 'message' && data.startsWith('0')) answers.push(JSON.parse(data.slice(1)));
      });
      await whenConnected(s);
      assert.deepEqual(answers, [{ sid: s.id }]);
      assert.equal(s._pid, undefined);
      await join(s, room);
      const log = recordAll(s);
      const watcher = await connectAs(env.reentry, { userId: W, projects: [proj], permissions: ['room_broadcast'] });
      await join(watcher, room);
      await broadcast(watcher, room, 'drawing_moved', { n: 1 });
      await directMessage(watcher, X, 'hello');
      await emitTo(env.reentry, [s.id], 'resource_updated', { n: 3 });
      await emitTo(env.entry, [`project:${proj}`], 'resource_updated', { n: 4 });
      await flushEvery(env, s);
      // (the watcher's status_change online and user_joined come too, as they are)
      assert.deepEqual(
        log.map(([event]) => event).filter((e) => e !== 'status_change' && e !== 'user_joined'),
        ['drawing_moved', 'direct_message', 'resource_updated', 'resource_updated'],
      );
      for (const [event, ...args] of log) assert.equal(args.length, 1, `${event}: ${JSON.stringify(args)}`);
      assert.equal(s._lastOffset, undefined);
      s.close();
      watcher.close();
    });
  });
