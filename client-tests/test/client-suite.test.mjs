// The client-suite fixture (`target/release/conformance --suite client`, what socket.io-client's
// own test suite runs against) through socket.io-client: connection over each transport,
// namespaces and middleware errors, acks both ways, binary in both directions and in order,
// UTF-8, dates, the handshake's query and auth, connection timeouts and reconnection, and
// connection state recovery (on, as in the suite's server: every event a handler emits
// without an ack carries an offset as its last argument, which socket.io-client passes on).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Manager, io } from 'socket.io-client';
import { IS_REFERENCE, freePort } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.CONFORMANCE_BIN ?? path.resolve(here, '../../target/release/conformance');
const delay = (ms) => new Promise((r) => setTimeout(r, ms));

let proc;
let url;
before(async () => {
  const port = await freePort();
  proc = spawn(BIN, ['--suite', 'client', '--port', String(port)], { stdio: ['ignore', 'ignore', 'pipe'] });
  url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 200; i++) {
    try {
      await fetch(`${url}/socket.io/?EIO=4&transport=polling`);
      return;
    } catch {
      await delay(25); // readiness poll of a process with no other way to say it listens
    }
  }
  throw new Error('the client-suite fixture did not start');
});
after(() => proc?.kill());

const sockets = [];
/** A new connection (its own Manager); closed after each test file. */
function connect(nsp = '/', opts = {}) {
  const s = io(`${url}${nsp}`, { forceNew: true, reconnection: false, ...opts });
  sockets.push(s);
  return s;
}
after(() => sockets.forEach((s) => s.disconnect()));

/** Resolves with the arguments of the next `event` on `emitter`; rejects after `ms`. */
function once(emitter, event, ms = 3000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "${event}" within ${ms} ms`)), ms);
    emitter.once(event, (...args) => {
      clearTimeout(timer);
      resolve(args);
    });
  });
}

const connected = (s) => (s.connected ? Promise.resolve() : once(s, 'connect'));
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const OFFSET = /^\d+-\d+$/;

/** `args` are `expected` followed by an offset. */
function assertWithOffset(args, expected) {
  assert.equal(args.length, expected.length + 1, JSON.stringify(args));
  assert.deepEqual(args.slice(0, -1), expected);
  assert.match(args.at(-1), OFFSET);
}

describe('client-suite fixture', { skip: IS_REFERENCE && 'Trestle binary only' }, () => {
  describe('connection', () => {
    for (const transports of [undefined, ['websocket'], ['polling']]) {
      test(`connects and round-trips over ${transports?.join() ?? 'polling then websocket'}`, async () => {
        const s = connect('/', { transports });
        await connected(s);
        const hi = once(s, 'hi');
        s.emit('hi');
        assertWithOffset(await hi, []);
        // the id the server knows is the client's
        assert.equal(await s.emitWithAck('getId'), s.id);
        s.disconnect();
      });
    }

    test('an upgrade from polling adds no packet: the waiting poll carries the CONNECT answer or the ack', async () => {
      // socket.io-client's "should not emit a packet twice in the 'connect' handler" (vendor/README.md, fix 9)
      for (let i = 0; i < 10; i++) {
        const s = connect('/', { retries: 3 });
        const sent = [];
        const received = [];
        s.io.engine.on('packetCreate', ({ data }) => sent.push(data));
        s.io.engine.on('packet', ({ type, data }) => received.push(type === 'message' ? data : type));
        s.on('connect', () => s.emit('echo', null));
        await once(s.io.engine, 'upgrade');
        while (!received.includes('30[null]')) await once(s.io.engine, 'packet');
        assert.deepEqual(sent, ['0', '20["echo",null]']);
        assert.equal(received.length, 3, `connection ${i + 1}: ${JSON.stringify(received)}`);
        assert.equal(received[1][0], '0');
        assert.deepEqual(JSON.parse(received[1].slice(1)), { sid: s.id, pid: s._pid }, `connection ${i + 1}`);
        assert.equal(received[2], '30[null]', `connection ${i + 1}`);
        s.disconnect();
      }
    });

    test('false is a value like any other', async () => {
      const s = connect();
      const got = once(s, 'false');
      s.emit('false');
      assertWithOffset(await got, [false]);
      s.disconnect();
    });
  });

  describe('namespaces and middleware errors', () => {
    test('several namespaces over one manager; the server knows each socket by its id', async () => {
      const manager = new Manager(url, { reconnection: false });
      const main = manager.socket('/');
      const foo = manager.socket('/foo');
      const asd = manager.socket('/asd');
      sockets.push(main, foo, asd);
      await Promise.all([connected(main), connected(foo), connected(asd)]);
      // (the ids are equal: socketioxide names a socket after its engine connection in
      // every namespace, where socket.io draws one per namespace; README.md)
      assert.equal(await foo.emitWithAck('getId'), foo.id);
      assert.equal(await main.emitWithAck('getId'), main.id);
      // leaving one namespace keeps the others
      foo.disconnect();
      assert.equal(await main.emitWithAck('echo', 'still here'), 'still here');
      manager._close();
    });

    test('an unknown namespace is refused with "Invalid namespace"', async () => {
      const [err] = await once(connect('/doesnotexist'), 'connect_error');
      assert.equal(err.message, 'Invalid namespace');
    });

    test("the main namespace's middleware refuses a handshake whose query has `fail`", async () => {
      const [err] = await once(connect('/', { query: { fail: true } }), 'connect_error');
      assert.equal(err.message, 'Auth failed (main namespace)');
      const ok = connect('/', { query: { other: true } });
      await connected(ok);
      ok.disconnect();
    });

    test("a custom namespace's middleware error leaves the main namespace connected", async () => {
      const manager = new Manager(url, { reconnection: false });
      const main = manager.socket('/');
      const no = manager.socket('/no');
      sockets.push(main, no);
      const [[err]] = await Promise.all([once(no, 'connect_error'), connected(main)]);
      assert.equal(err.message, 'Auth failed (custom namespace)');
      assert.equal(no.connected, false);
      assert.equal(await main.emitWithAck('echo', 1), 1);
      manager._close();
    });
  });

  describe('acks', () => {
    test('the server acknowledges with the first argument', async () => {
      const s = connect();
      assert.deepEqual(await s.emitWithAck('echo', { a: [1, 'b'] }), { a: [1, 'b'] });
      assert.equal(await new Promise((resolve) => s.emit('echo', 'cb', resolve)), 'cb');
      s.disconnect();
    });

    test('the client acknowledges an event of the server, which answers what it got', async () => {
      const s = connect();
      s.once('ack', (cb) => cb(5, { test: true }));
      const gotIt = once(s, 'got it');
      s.emit('ack');
      await gotIt;
      // a wrong answer gets nothing back
      s.once('ack', (cb) => cb(4, { test: true }));
      const nothing = once(s, 'got it', 300).then(
        () => assert.fail('"got it" for a wrong answer'),
        () => {},
      );
      s.emit('ack');
      await nothing;
      s.disconnect();
    });

    test('an event the server never acknowledges times out on the client', async () => {
      const s = connect();
      await connected(s);
      await assert.rejects(s.timeout(100).emitWithAck('hi'), /operation has timed out/);
      s.disconnect();
    });
  });

  describe('binary', () => {
    test('binary from the server arrives as a Buffer', async () => {
      const s = connect();
      const [doge] = await Promise.all([once(s, 'doge'), s.emit('doge')]);
      assert.ok(Buffer.isBuffer(doge[0]));
      assert.equal(doge[0].toString(), 'asdfasdf');
      const [bin] = await Promise.all([once(s, 'takebin'), s.emit('getbin')]);
      assert.equal(bin[0].toString(), 'asdfasdf');
      s.disconnect();
    });

    for (const [kind, make] of [
      ['Buffer', (t) => Buffer.from(t)],
      ['ArrayBuffer', (t) => new TextEncoder().encode(t).buffer],
    ]) {
      test(`a ${kind}, alone or inside an object, reaches the server as binary`, async () => {
        const s = connect();
        const buffack = once(s, 'buffack');
        s.emit('buffa', make('asdfasdf'));
        await buffack;
        const jsonbuffAck = once(s, 'jsonbuff-ack');
        s.emit('jsonbuff', { hello: 'lol', message: make('howdy'), goodbye: 'gotcha' });
        await jsonbuffAck;
        const back = once(s, 'back');
        s.emit('blob', make('hello world'));
        await back;
        const jsonblobAck = once(s, 'jsonblob-ack');
        s.emit('jsonblob', { hello: 'lol', message: make('EEEEEEEEE'), goodbye: 'gotcha' });
        await jsonblobAck;
        s.disconnect();
      });
    }

    test('binary and plain events are handled in the order they were sent', async () => {
      for (const transports of [['websocket'], ['polling']]) {
        const s = connect('/', { transports });
        const abuff2 = once(s, 'abuff2-ack');
        s.emit('abuff1', new TextEncoder().encode('abuff1').buffer);
        s.emit('abuff2', 'please arrive second');
        await abuff2;
        const blob3 = once(s, 'blob3-ack');
        s.emit('blob1', Buffer.from('BLOBBLOB'));
        s.emit('blob2', 'second');
        s.emit('blob3', Buffer.from('BLOBBLOB'));
        await blob3;
        s.disconnect();
      }
    });

    test('binary sent back through an ack keeps its bytes', async () => {
      const s = connect();
      const echoed = await s.emitWithAck('echo', Buffer.from([0, 1, 2, 255]));
      assert.deepEqual([...echoed], [0, 1, 2, 255]);
      s.disconnect();
    });
  });

  describe('UTF-8 and dates', () => {
    test('UTF-8 strings arrive intact and in order, over both transports', async () => {
      for (const transports of [['websocket'], ['polling']]) {
        const s = connect('/', { transports });
        const got = [];
        const all = new Promise((resolve) =>
          s.on('takeUtf8', (t) => {
            got.push(t);
            if (got.length === 5) resolve();
          }),
        );
        s.emit('getUtf8');
        await all;
        assert.deepEqual(got, ['てすと', 'Я Б Г Д Ж Й', 'Ä ä Ü ü ß', 'utf8 — string', 'utf8 — string']);
        assert.equal(await s.emitWithAck('echo', '🎉 ü'), '🎉 ü');
        s.disconnect();
      }
    });

    test('dates come as ISO 8601 strings: in an ack, as an argument, inside an object', async () => {
      const s = connect();
      const ackDate = await s.emitWithAck('getAckDate', { test: true });
      assert.match(ackDate, ISO);
      assert.ok(Math.abs(Date.parse(ackDate) - Date.now()) < 60_000, ackDate);
      const [[date], [obj]] = await Promise.all([once(s, 'takeDate'), once(s, 'takeDateObj'), s.emit('getDate'), s.emit('getDateObj')]);
      assert.match(date, ISO);
      assert.match(obj.date, ISO);
      s.disconnect();
    });
  });

  describe('handshake query and auth', () => {
    test('the query of the URL, or of the `query` option, encoded properly', async () => {
      const fromUrl = connect('/?c=d');
      const first = await fromUrl.emitWithAck('getHandshake');
      assert.equal(first.query.c, 'd');
      assert.equal(first.query.EIO, '4');
      assert.deepEqual(first.auth, {});
      fromUrl.disconnect();
      const fromOption = connect('/', { query: { e: 'f', '&a': '&=?a' } });
      const second = await fromOption.emitWithAck('getHandshake');
      assert.equal(second.query.e, 'f');
      assert.equal(second.query['&a'], '&=?a');
      fromOption.disconnect();
    });

    test('a custom namespace sees the query and the auth payload, each in its place', async () => {
      const s = connect('/abc?b=c&d=e', { auth: { a: 'b', c: 'd' } });
      const [handshake] = await once(s, 'handshake');
      assert.equal(handshake.query.b, 'c');
      assert.equal(handshake.query.d, 'e');
      assert.equal(handshake.query.a, undefined);
      assert.deepEqual(handshake.auth, { a: 'b', c: 'd' });
      assert.equal(typeof handshake.issued, 'number');
      s.disconnect();
    });

    test('an auth function is called on each connection', async () => {
      let calls = 0;
      const s = connect('/abc', { auth: (cb) => cb({ n: ++calls }) });
      const [first] = await once(s, 'handshake');
      assert.deepEqual(first.auth, { n: 1 });
      s.disconnect();
      const pid = s._pid;
      const again = once(s, 'handshake');
      s.connect();
      // socket.io-client adds its session id and last offset to the auth payload of every
      // later CONNECT; a socket disconnected on purpose is not recovered all the same
      const { offset, ...auth } = (await again)[0].auth;
      assert.deepEqual(auth, { n: 2, pid });
      assert.match(offset, OFFSET);
      assert.equal(s.recovered, false);
      s.disconnect();
    });
  });

  describe('timeouts and reconnection', () => {
    test('a connect timeout shorter than the handshake fails with "timeout"', async () => {
      const [err] = await once(connect('/', { timeout: 0 }), 'connect_error');
      assert.equal(err.message, 'timeout');
    });

    test('reconnection gives up after reconnectionAttempts, counting each attempt', async () => {
      const manager = new Manager(url, { timeout: 0, reconnectionAttempts: 2, reconnectionDelay: 10 });
      const s = manager.socket('/timeout_socket');
      sockets.push(s);
      const attempts = [];
      manager.on('reconnect_attempt', (n) => attempts.push(n));
      await once(manager, 'reconnect_failed');
      assert.deepEqual(attempts, [1, 2]);
      assert.equal(s.connected, false);
      manager._close();
    });

    test('a lost connection is reconnected; events emitted meanwhile are sent afterwards', async () => {
      const s = connect('/', { reconnection: true, reconnectionDelay: 10, reconnectionDelayMax: 50 });
      await connected(s);
      const firstId = s.id;
      const reconnected = once(s.io, 'reconnect');
      s.io.engine.close();
      const echoed = s.emitWithAck('echo', 'buffered while offline');
      await reconnected;
      assert.equal(await echoed, 'buffered while offline');
      assert.ok(s.connected);
      // no event had arrived, so the client had no offset to recover from: a new session
      assert.notEqual(s.id, firstId);
      assert.equal(s.recovered, false);
      s.disconnect();
    });
  });

  describe('connection state recovery (test/connection-state-recovery.ts)', () => {
    /** Emits `hi` and resolves with the offset of the answer. */
    async function hi(s) {
      const got = once(s, 'hi');
      s.emit('hi');
      const args = await got;
      assertWithOffset(args, []);
      return args[0];
    }

    for (const transports of [undefined, ['websocket'], ['polling']]) {
      test(`a lost connection gets its socket id back, over ${transports?.join() ?? 'polling then websocket'}`, async () => {
        // the suite's "should have an accessible socket id equal to the server-side socket
        // id (default namespace)"
        const s = connect('/', { transports, reconnection: true, reconnectionDelay: 10 });
        assert.equal(s.recovered, false);
        const offset = await hi(s); // the client recovers only once it has an offset
        const id = s.id;
        const reconnected = once(s, 'connect');
        s.io.engine.close();
        await reconnected;
        assert.equal(s.id, id);
        assert.equal(s.recovered, true);
        // the server knows the socket by that id, and its events still carry offsets, later ones
        assert.equal(await s.emitWithAck('getId'), id);
        const next = await hi(s);
        const [a, b] = [offset, next].map((o) => o.split('-').map(BigInt));
        assert.ok(a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]), `${next} is not after ${offset}`);
        s.disconnect();
      });
    }

    test('a connection lost before any event arrived has no offset: a new session', async () => {
      const s = connect('/', { reconnection: true, reconnectionDelay: 10 });
      await connected(s);
      const id = s.id;
      assert.equal(typeof s._pid, 'string');
      const reconnected = once(s, 'connect');
      s.io.engine.close();
      await reconnected;
      assert.notEqual(s.id, id);
      assert.equal(s.recovered, false);
      s.disconnect();
    });

    test('a socket disconnected on purpose is not recovered', async () => {
      const s = connect();
      await hi(s);
      const id = s.id;
      s.disconnect();
      const again = once(s, 'connect');
      s.connect();
      await again;
      assert.notEqual(s.id, id);
      assert.equal(s.recovered, false);
      s.disconnect();
    });

    test('a session id of a connected socket, or an offset the server never gave, recovers nothing', async () => {
      const victim = connect();
      const offset = await hi(victim);
      for (const auth of [
        { pid: victim._pid, offset },
        { pid: 'x'.repeat(32), offset },
        { pid: victim._pid, offset: '1-0' },
        { pid: victim._pid, offset: 'not an offset' },
        { pid: victim._pid, offset: 17 },
      ]) {
        const other = connect('/', { auth });
        await connected(other);
        assert.equal(other.recovered, false, JSON.stringify(auth));
        assert.notEqual(other.id, victim.id);
        other.disconnect();
      }
      assert.equal(await victim.emitWithAck('getId'), victim.id);
      victim.disconnect();
    });

    test('a wrong offset with the session id of a lost socket leaves the session to its owner', async () => {
      const victim = connect();
      const offset = await hi(victim);
      const id = victim.id;
      const lost = once(victim, 'disconnect');
      victim.io.engine.close();
      await lost;
      for (const wrong of ['1-0', 'not an offset']) {
        const other = connect('/', { auth: { pid: victim._pid, offset: wrong } });
        await connected(other);
        assert.equal(other.recovered, false, wrong);
        assert.notEqual(other.id, id);
        other.disconnect();
      }
      const back = once(victim, 'connect');
      victim.connect();
      await back;
      assert.equal(victim._lastOffset, offset);
      assert.equal(victim.id, id);
      assert.equal(victim.recovered, true);
      victim.disconnect();
    });
  });
});
