// The protocol fixture (src/bin/conformance.rs, Trestle's engine settings and HTTP loop)
// against the expectations of socket.io's public protocol test suite: Engine.IO handshake,
// heartbeat, close and upgrade; Socket.IO connect, namespaces, disconnect, messages, acks
// and binary attachments, with raw frames over websockets and HTTP.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { IS_REFERENCE, freePort } from './helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.env.CONFORMANCE_BIN ?? path.resolve(here, '../../target/release/conformance');
const PING_INTERVAL = 300;
const PING_TIMEOUT = 200;
const delay = (ms) => new Promise((r) => setTimeout(r, ms));

let proc;
let base;
before(async () => {
  const port = await freePort();
  proc = spawn(BIN, ['--port', String(port)], { stdio: ['ignore', 'ignore', 'pipe'] });
  base = `127.0.0.1:${port}`;
  for (let i = 0; i < 200; i++) {
    try {
      await fetch(`http://${base}/socket.io/?EIO=4&transport=polling`);
      return;
    } catch {
      await delay(25); // readiness poll of a process with no other way to say it listens
    }
  }
  throw new Error('the conformance fixture did not start');
});
after(() => proc?.kill());

const poll = (query, init) => fetch(`http://${base}/socket.io/?${query}`, init);

async function pollingSession() {
  const text = await (await poll('EIO=4&transport=polling')).text();
  return JSON.parse(text.slice(1)).sid;
}

/** A raw websocket with a queue of received frames. */
function open(query = 'EIO=4&transport=websocket') {
  const ws = new WebSocket(`ws://${base}/socket.io/?${query}`);
  ws.binaryType = 'nodebuffer';
  const frames = [];
  const waiters = [];
  ws.keepPings = false;
  ws.on('message', (data, isBinary) => {
    const frame = isBinary ? Buffer.from(data) : data.toString();
    // Outside the heartbeat tests, pings are answered and not queued.
    if (frame === '2' && !ws.keepPings) {
      ws.send('3');
      return;
    }
    const w = waiters.shift();
    if (w) w(frame);
    else frames.push(frame);
  });
  ws.on('error', () => {});
  ws.next = (ms = 2000) =>
    frames.length
      ? Promise.resolve(frames.shift())
      : new Promise((resolve, reject) => {
          const t = setTimeout(() => reject(new Error('no frame')), ms);
          waiters.push((f) => {
            clearTimeout(t);
            resolve(f);
          });
        });
  ws.closed = new Promise((r) => ws.once('close', r));
  ws.opened = new Promise((r) => ws.once('open', r));
  return ws;
}

/** A websocket connected to `/`, past the Socket.IO handshake and the auth packet. */
async function connected() {
  const ws = open();
  await ws.next(); // Engine.IO open
  ws.send('40');
  await ws.next(); // CONNECT answer
  await ws.next(); // auth
  return ws;
}

/**
 * The next 'message' of `ws`, read the way socket.io's public protocol suite reads frames: a
 * one-shot listener added only when the previous frame has been awaited. `ws` emits all the
 * frames of one TCP read synchronously, so a frame that came in the same read as the one
 * awaited before is lost to this reader, as it is to the suite.
 */
function nextMessage(ws, ms = 2000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no frame')), ms);
    ws.addEventListener(
      'message',
      ({ data }) => {
        clearTimeout(timer);
        resolve(typeof data === 'string' ? data : Buffer.from(data).toString());
      },
      { once: true },
    );
  });
}

describe('conformance fixture', { skip: IS_REFERENCE && 'Trestle binary only' }, () => {
  describe('Engine.IO', () => {
    test('polling handshake: sid, upgrades, ping settings, maxPayload', async () => {
      const res = await poll('EIO=4&transport=polling');
      assert.equal(res.status, 200);
      const text = await res.text();
      assert.equal(text[0], '0');
      const open = JSON.parse(text.slice(1));
      assert.deepEqual(Object.keys(open).sort(), ['maxPayload', 'pingInterval', 'pingTimeout', 'sid', 'upgrades']);
      assert.deepEqual(open.upgrades, ['websocket']);
      assert.deepEqual([open.pingInterval, open.pingTimeout, open.maxPayload], [PING_INTERVAL, PING_TIMEOUT, 1_000_000]);
    });

    test('websocket handshake: no further upgrades', async () => {
      const ws = open();
      const frame = await ws.next();
      assert.equal(frame[0], '0');
      assert.deepEqual(JSON.parse(frame.slice(1)).upgrades, []);
      ws.close();
    });

    test('a missing or bad EIO, transport or method is 400', async () => {
      for (const q of ['transport=polling', 'EIO=abc&transport=polling', 'EIO=4', 'EIO=4&transport=abc']) {
        assert.equal((await poll(q)).status, 400, q);
      }
      assert.equal((await poll('EIO=4&transport=polling', { method: 'PUT' })).status, 400);
    });

    test('heartbeat over polling and websocket; a silent client is dropped after pingInterval + pingTimeout', async () => {
      // the first ping comes one pingInterval after the handshake, not at once (the
      // crates.io engine sent it at once; vendor/README.md, fix 8)
      const t0 = Date.now();
      const first = open();
      first.keepPings = true;
      await first.next(); // Engine.IO open
      assert.equal(await first.next(), '2');
      const firstPingAfter = Date.now() - t0;
      assert.ok(firstPingAfter >= PING_INTERVAL - 20, `first ping after ${firstPingAfter} ms`);
      first.close();

      const sid = await pollingSession();
      for (let i = 0; i < 2; i++) {
        assert.equal(await (await poll(`EIO=4&transport=polling&sid=${sid}`)).text(), '2');
        assert.equal((await poll(`EIO=4&transport=polling&sid=${sid}`, { method: 'POST', body: '3' })).status, 200);
      }
      const ws = open();
      ws.keepPings = true;
      await ws.next();
      for (let i = 0; i < 2; i++) {
        assert.equal(await ws.next(), '2');
        ws.send('3');
      }
      ws.close();
      const silent = await pollingSession();
      await delay(PING_INTERVAL + PING_TIMEOUT + 100);
      assert.equal((await poll(`EIO=4&transport=polling&sid=${silent}`)).status, 400);
      const quiet = open();
      await quiet.closed; // never answers the ping
    });

    test('close packets end the session', async () => {
      const sid = await pollingSession();
      const [pending] = await Promise.all([
        poll(`EIO=4&transport=polling&sid=${sid}`),
        poll(`EIO=4&transport=polling&sid=${sid}`, { method: 'POST', body: '1' }),
      ]);
      assert.equal(await pending.text(), '6');
      assert.equal((await poll(`EIO=4&transport=polling&sid=${sid}`)).status, 400);
      const ws = open();
      await ws.next();
      ws.send('1');
      await ws.closed;
    });

    test('upgrade from polling; the polling sid is then refused, and a second websocket too', async () => {
      const sid = await pollingSession();
      const ws = open(`EIO=4&transport=websocket&sid=${sid}`);
      await ws.opened;
      ws.send('2probe');
      assert.equal(await ws.next(), '3probe');
      ws.send('5');
      await delay(50);
      assert.equal((await poll(`EIO=4&transport=polling&sid=${sid}`)).status, 400);
      const second = open(`EIO=4&transport=websocket&sid=${sid}`);
      await second.closed;
      ws.close();
    });
  });

  describe('Socket.IO', () => {
    test('connect to / and /custom, with and without a payload; auth echoed', async () => {
      for (const [send, prefix, auth] of [
        ['40', '40', '{}'],
        ['40{"token":"123"}', '40', '{"token":"123"}'],
        ['40/custom,', '40/custom,', '{}'],
        ['40/custom,{"token":"abc"}', '40/custom,', '{"token":"abc"}'],
      ]) {
        const ws = open();
        await ws.next();
        ws.send(send);
        const answer = await ws.next();
        assert.equal(answer.slice(0, prefix.length), prefix, answer);
        assert.deepEqual(Object.keys(JSON.parse(answer.slice(prefix.length))), ['sid']);
        const nsp = prefix === '40' ? '' : '/custom,';
        assert.equal(await ws.next(), `42${nsp}["auth",${auth}]`);
        ws.close();
      }
    });

    test('an unknown namespace is refused; a malformed packet closes the connection', async () => {
      const ws = open();
      await ws.next();
      ws.send('40/random');
      assert.equal(await ws.next(), '44/random,{"message":"Invalid namespace"}');
      ws.close();
      const bad = open();
      await bad.next();
      bad.send('4abc');
      await bad.closed;
    });

    test('disconnecting from / keeps the engine connection (the next frame is a ping)', async () => {
      const ws = await connected();
      ws.keepPings = true;
      ws.send('41');
      assert.equal(await ws.next(), '2');
      ws.close();
    });

    test('messages and acks, plain and binary', async () => {
      const ws = await connected();
      ws.send('42["message",1,"2",{"3":[true]}]');
      assert.equal(await ws.next(), '42["message-back",1,"2",{"3":[true]}]');
      ws.send('421["message-with-ack",1,"2",{"3":[true]}]');
      assert.equal(await ws.next(), '431[1,"2",{"3":[true]}]');

      const DATA = '{"_placeholder":true,"num":0},{"_placeholder":true,"num":1},"test"';
      ws.send(`452-["message",${DATA}]`);
      ws.send(Buffer.from([1, 2, 3]));
      ws.send(Buffer.from([4, 5, 6]));
      assert.equal(await ws.next(), `452-["message-back",${DATA}]`);
      assert.deepEqual(await ws.next(), Buffer.from([1, 2, 3]));
      assert.deepEqual(await ws.next(), Buffer.from([4, 5, 6]));

      ws.send('42["emit-with-ack",1,"2",{"3":[true]}]');
      assert.equal(await ws.next(), '421["emit-with-ack",1,"2",{"3":[true]}]');
      ws.send('431[1,"2",{"3":[true]}]');
      assert.equal(await ws.next(), '42["emit-with-ack",1,"2",{"3":[true]}]');

      ws.send(`452-["emit-with-ack",${DATA}]`);
      ws.send(Buffer.from([1, 2, 3]));
      ws.send(Buffer.from([4, 5, 6]));
      assert.equal(await ws.next(), `452-2["emit-with-ack",${DATA}]`);
      assert.deepEqual(await ws.next(), Buffer.from([1, 2, 3]));
      assert.deepEqual(await ws.next(), Buffer.from([4, 5, 6]));
      ws.send(`462-2[${DATA}]`);
      ws.send(Buffer.from([1, 2, 3]));
      ws.send(Buffer.from([4, 5, 6]));
      assert.equal(await ws.next(), `452-["emit-with-ack",${DATA}]`);
      assert.deepEqual(await ws.next(), Buffer.from([1, 2, 3]));
      assert.deepEqual(await ws.next(), Buffer.from([4, 5, 6]));
      ws.close();
    });
  });
  // The public suite reads one frame per await (nextMessage): frames that reach it in one
  // TCP read are lost but the first. An `auth` emitted together with the CONNECT answer
  // was lost more often than not, hence the fixture's delay before it (AUTH_DELAY in
  // src/bin/conformance/protocol.rs). Each case is repeated: one connection may pass by chance.
  describe("socket.io-protocol suite's frame-by-frame reads", () => {
    test('connect with a payload to / and /custom: the auth event follows the CONNECT answer', async () => {
      for (const [send, prefix, auth] of [
        ['40{"token":"123"}', '40', '42["auth",{"token":"123"}]'],
        ['40/custom,{"token":"abc"}', '40/custom,', '42/custom,["auth",{"token":"abc"}]'],
      ]) {
        for (let i = 0; i < 20; i++) {
          const ws = new WebSocket(`ws://${base}/socket.io/?EIO=4&transport=websocket`);
          await nextMessage(ws); // Engine.IO open
          ws.send(send);
          const answer = await nextMessage(ws);
          assert.equal(answer.slice(0, prefix.length), prefix, answer);
          assert.equal(await nextMessage(ws), auth, `${send}, connection ${i + 1}`);
          ws.close();
        }
      }
    });

    test('connect then disconnect from a custom namespace; the main namespace still answers', async () => {
      for (let i = 0; i < 5; i++) {
        const ws = new WebSocket(`ws://${base}/socket.io/?EIO=4&transport=websocket`);
        await nextMessage(ws); // Engine.IO open
        ws.send('40');
        await nextMessage(ws); // CONNECT answer
        assert.equal(await nextMessage(ws), '42["auth",{}]', `connection ${i + 1}`);
        // never answered: what follows must be done within pingTimeout
        assert.equal(await nextMessage(ws), '2');
        ws.send('40/custom');
        assert.match(await nextMessage(ws), /^40\/custom,/);
        assert.equal(await nextMessage(ws), '42/custom,["auth",{}]');
        ws.send('41/custom');
        ws.send('42["message","message to main namespace"]');
        assert.equal(await nextMessage(ws), '42["message-back","message to main namespace"]');
        ws.close();
      }
    });
  });
});
