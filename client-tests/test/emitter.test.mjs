// The main backend publishes with the real npm @socket.io/redis-emitter, as it would to a
// Node cluster (issue 15): two instances deliver each emit to their own clients, once.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Emitter } from '@socket.io/redis-emitter';
import { createClient } from 'redis';
import { API_KEY, IS_REFERENCE, apiEmit, connectAs, httpGet, metrics, startServer, uniq, waitUntil } from './helpers.mjs';
import { startCluster, startRedis, startRedisCluster } from './services.mjs';

/** Every `event` a socket receives, with all its arguments. */
function recorder(socket) {
  const got = [];
  socket.onAny((event, ...args) => got.push({ event, args }));
  return {
    of: (event) => got.filter((g) => g.event === event).map((g) => g.args),
    count: (event) => got.filter((g) => g.event === event).length,
  };
}

// On one Redis, and on a Redis Cluster, where a PUBLISH to any node reaches every node.
const backends = [
  { name: 'one Redis', start: () => startRedis() },
  { name: 'a Redis Cluster of three masters', start: () => startRedisCluster(), skip: IS_REFERENCE && 'Trestle only' },
];

for (const backend of backends) describe(`@socket.io/redis-emitter against two instances, ${backend.name}`, { skip: backend.skip }, () => {
  let redis;
  let cluster;
  let A;
  let B;
  let pub;
  let emitter;
  let notepack;
  const p = { one: uniq('p'), two: uniq('p'), three: uniq('p') };
  const room = (k) => `project:${p[k]}`;
  let clients; // { a1, a2, b1, b2 }: socket and recorder
  let sentinel = 0;

  before(async () => {
    redis = await backend.start();
    cluster = await startCluster(2, {}, redis);
    [A, B] = cluster.instances;
    // The emitter publishes with a plain client; on a cluster, to the last node.
    pub = createClient({ url: redis.nodes ? `redis://127.0.0.1:${redis.nodes.at(-1).port}` : redis.url });
    await pub.connect();
    emitter = new Emitter(pub);
    // The emitter's own msgpack encoder (notepack), for messages it would refuse to build.
    notepack = emitter.opts.parser;
    const open = async (server, projects) => {
      const socket = await connectAs(server, { userId: uniq('u'), projects: projects.map((k) => p[k]) });
      return { socket, rec: recorder(socket) };
    };
    clients = {
      a1: await open(A, ['one']),
      a2: await open(A, ['two']),
      b1: await open(B, ['one', 'two']),
      b2: await open(B, ['three']),
    };
  });
  after(async () => {
    for (const c of Object.values(clients ?? {})) c.socket.close();
    await pub?.quit();
    await cluster?.stop();
    await redis?.stop();
  });

  /**
   * Emits a sentinel to everyone and waits until every client has it: each instance
   * delivers the emitter's messages in order, so whatever was published before has arrived
   * by then, a second copy included.
   */
  async function settle() {
    const n = ++sentinel;
    emitter.emit('sentinel', n);
    await waitUntil(() => Object.values(clients).every((c) => c.rec.of('sentinel').some(([v]) => v === n)), 10_000);
  }

  /** Asserts that exactly `who` received `event` (once each), with `args`. */
  function receivedOnce(event, who, args) {
    for (const [name, c] of Object.entries(clients)) {
      const got = c.rec.of(event);
      if (who.includes(name)) {
        assert.equal(got.length, 1, `${name} got "${event}" ${got.length} times`);
        if (args) assert.deepEqual(got[0], args, `${name}'s arguments`);
      } else {
        assert.equal(got.length, 0, `${name} got "${event}", not being a target`);
      }
    }
  }

  test('to one room: its members on both instances, once each', async () => {
    emitter.to(room('one')).emit('resource_updated', { id: 1, changes: { name: 'x' } });
    await settle();
    receivedOnce('resource_updated', ['a1', 'b1'], [{ id: 1, changes: { name: 'x' } }]);
  });

  test('to several rooms: a member of two of them gets it once', async () => {
    emitter.to([room('one'), room('two')]).emit('e_many', 'hello', 2);
    await settle();
    receivedOnce('e_many', ['a1', 'a2', 'b1'], ['hello', 2]);
  });

  test('to a socket id on the other instance', async () => {
    emitter.to(clients.b2.socket.id).emit('e_sid', { only: 'b2' });
    emitter.to(clients.a1.socket.id).emit('e_sid_a', 1);
    await settle();
    receivedOnce('e_sid', ['b2'], [{ only: 'b2' }]);
    receivedOnce('e_sid_a', ['a1'], [1]);
  });

  test('to a room except another room', async () => {
    emitter.to(room('two')).except(room('one')).emit('e_except', 4);
    await settle();
    receivedOnce('e_except', ['a2'], [4]);
  });

  test('to everyone, and to everyone except a room', async () => {
    emitter.emit('e_all', null, true, 1.5);
    emitter.except(room('three')).emit('e_all_but', 'x');
    await settle();
    receivedOnce('e_all', ['a1', 'a2', 'b1', 'b2'], [null, true, 1.5]);
    receivedOnce('e_all_but', ['a1', 'a2', 'b1']);
  });

  test('binary arguments arrive as binary, at any depth; a Date as its ISO string', async () => {
    const when = new Date('2026-01-02T03:04:05.678Z');
    emitter.to(room('three')).emit('e_bin', Buffer.from([1, 2, 3]), { nested: [Buffer.from([0, 255])], when }, 'text');
    await settle();
    receivedOnce('e_bin', ['b2']);
    const [bin, obj, text] = clients.b2.rec.of('e_bin')[0];
    assert.ok(bin instanceof ArrayBuffer || Buffer.isBuffer(bin), `not binary: ${typeof bin}`);
    assert.deepEqual([...Buffer.from(bin)], [1, 2, 3]);
    assert.ok(Buffer.isBuffer(obj.nested[0]) || obj.nested[0] instanceof ArrayBuffer);
    assert.deepEqual([...Buffer.from(obj.nested[0])], [0, 255]);
    assert.equal(obj.when, '2026-01-02T03:04:05.678Z');
    assert.equal(text, 'text');
  });

  test('volatile emits are delivered to clients ready for them', async () => {
    emitter.volatile.to(room('one')).emit('e_volatile', 1);
    await settle();
    receivedOnce('e_volatile', ['a1', 'b1'], [1]);
  });

  test('messages for another namespace are not delivered to /', async () => {
    const other = notepack.encode(['emitter', { type: 2, data: ['e_other_nsp', 1], nsp: '/admin' }, { rooms: [], except: [], flags: {} }]);
    await pub.publish('socket.io#/#', other);
    emitter.of('/admin').emit('e_other_nsp', 2);
    await settle();
    receivedOnce('e_other_nsp', []);
  });

  // The Node adapter delivers these: a forged `connect` fires the client's connect listeners.
  test("Socket.IO's reserved names reach nobody, as with POST /api/emit", { skip: IS_REFERENCE && 'Trestle refuses them' }, async () => {
    const raw = (event) => notepack.encode(['emitter', { type: 2, data: [event, 'forged'], nsp: '/' }, { rooms: [], except: [], flags: {} }]);
    const reserved = ['connect', 'disconnect', 'connect_error'];
    const forged = Object.fromEntries(Object.keys(clients).map((k) => [k, 0]));
    for (const [name, c] of Object.entries(clients)) {
      for (const ev of reserved) c.socket.on(ev, () => forged[name]++);
    }
    const before = await Promise.all([A, B].map(metrics));
    for (const ev of reserved) await pub.publish('socket.io#/#', raw(ev));
    await settle();
    assert.deepEqual(forged, { a1: 0, a2: 0, b1: 0, b2: 0 });
    for (const c of Object.values(clients)) assert.ok(c.socket.connected);
    const now = await Promise.all([A, B].map(metrics));
    const refused = 'trestle_emitter_messages_total{outcome="refused"}';
    for (const i of [0, 1]) assert.equal(now[i][refused] - before[i][refused], reserved.length, `refused on instance ${i}`);
  });

  // The Node adapter throws on most of these, and would deliver the oversized one.
  test('hostile messages are dropped; the instances stay up and deliver the next emit', { skip: IS_REFERENCE && "Trestle's defences" }, async () => {
    const ch = 'socket.io#/#';
    const shaped = (packet, opts = { rooms: [], except: [], flags: {} }) => notepack.encode(['emitter', packet, opts]);
    const before = await Promise.all([A, B].map(metrics));
    // Not msgpack; an array claiming 4 billion entries; nesting 100,000 deep; not the shape.
    await pub.publish(ch, 'garbage');
    await pub.publish(ch, Buffer.from([0xdd, 0xff, 0xff, 0xff, 0xff]));
    await pub.publish(ch, Buffer.alloc(100_000, 0x91));
    await pub.publish(ch, notepack.encode({ a: 1 }));
    await pub.publish(ch, notepack.encode(['emitter']));
    // A rooms entry that is not a string: leaving it out would make it an emit to everyone.
    await pub.publish(ch, shaped({ type: 2, data: ['e_bad_room', 1], nsp: '/' }, { rooms: [5], except: [] }));
    // A DISCONNECT packet: delivered, it would disconnect everyone.
    await pub.publish(ch, shaped({ type: 1, nsp: '/' }));
    // Over the size bound (1,000,000 bytes), though well formed.
    emitter.emit('e_huge', 'x'.repeat(1_100_000));
    // The emitter's other operations are not supported; they do nothing.
    emitter.disconnectSockets(true);
    emitter.socketsJoin(room('three'));
    emitter.serverSideEmit('ping');
    await settle();
    receivedOnce('e_bad_room', []);
    receivedOnce('e_huge', []);
    for (const c of Object.values(clients)) assert.ok(c.socket.connected, 'a client was disconnected');
    emitter.to(room('three')).emit('e_after', 'ok');
    await settle();
    receivedOnce('e_after', ['b2'], ['ok']);
    for (const s of [A, B]) assert.equal((await httpGet(s, '/health')).status, 200);
    const now = await Promise.all([A, B].map(metrics));
    const delta = (i, outcome) => {
      const key = `trestle_emitter_messages_total{outcome="${outcome}"}`;
      return now[i][key] - before[i][key];
    };
    for (const i of [0, 1]) {
      assert.equal(delta(i, 'malformed'), 7, `malformed on instance ${i}`);
      assert.equal(delta(i, 'too_large'), 1, `too_large on instance ${i}`);
      assert.equal(delta(i, 'ignored'), 3, `ignored on instance ${i}`);
    }
  });

  describe('settings', { skip: IS_REFERENCE && 'Trestle settings' }, () => {
    let custom;
    let off;
    before(async () => {
      const env = { REDIS_URL: redis.url, DATABASE_URL: cluster.database };
      custom = await startServer({ ...env, REDIS_EMITTER_PREFIX: 'backend.io' });
      off = await startServer({ ...env, REDIS_EMITTER: 'false' });
    });
    after(async () => {
      await custom?.stop();
      await off?.stop();
    });

    test('REDIS_EMITTER_PREFIX is the emitter key listened to; REDIS_EMITTER=false listens to none', async () => {
      const p4 = uniq('p');
      const onCustom = await connectAs(custom, { userId: uniq('u'), projects: [p4] });
      const onOff = await connectAs(off, { userId: uniq('u'), projects: [p4] });
      const onA = await connectAs(A, { userId: uniq('u'), projects: [p4] });
      const recs = [onCustom, onOff, onA].map(recorder);
      const keyed = new Emitter(pub, { key: 'backend.io' });
      keyed.to(`project:${p4}`).emit('e_keyed', 1);
      emitter.to(`project:${p4}`).emit('e_default', 2);
      // The instance with the emitter off still gets /api/emit; it comes after the emits.
      assert.equal((await apiEmit(A, { rooms: [`project:${p4}`], event: 'e_api', data: 3 }, API_KEY)).status, 202);
      await waitUntil(() => recs.every((r) => r.count('e_api') === 1), 10_000);
      // Each instance's emitter messages were delivered before the sentinel to everyone.
      keyed.emit('sentinel_keyed', 1);
      emitter.emit('sentinel_default', 1);
      await waitUntil(() => recs[0].count('sentinel_keyed') === 1 && recs[2].count('sentinel_default') === 1, 10_000);
      assert.deepEqual(recs.map((r) => [r.count('e_keyed'), r.count('e_default')]), [
        [1, 0],
        [0, 0],
        [0, 1],
      ]);
      assert.equal(recs[1].count('sentinel_default') + recs[1].count('sentinel_keyed'), 0);
      for (const s of [onCustom, onOff, onA]) s.close();
    });
  });
});
