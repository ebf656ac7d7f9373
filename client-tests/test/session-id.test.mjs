// The socket id is a name, not a credential: each namespace socket gets its own random id,
// distinct from the engine.io session id (socket.io v3+; socket.io-client's suite checks
// `socket.id !== socket.io.engine.id`). Socket ids are public in Trestle (socket-id rooms of
// POST /api/emit, `anon:<socket id>` user ids, logs); the engine session id is what a
// long-polling request or a websocket upgrade presents as `sid`. If they were the same,
// whoever learned a socket id could post packets as that connection, take its packets, or
// upgrade its session (vendor/README.md, the socket id fix).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { apiEmit, connectAs, flush, rawRequest, record, serverPool, uniq, waitFor, withTimeout } from './helpers.mjs';

const { start } = serverPool(after);

/**
 * Resolves with the outcome of a websocket upgrade that sends the engine.io probe `2probe`:
 * 'probe answered' (the session accepted the websocket: a takeover), 'closed' (the server
 * dropped the websocket without answering), or the HTTP status of a refused upgrade.
 */
function upgradeOutcome(url) {
  const ws = new WebSocket(url);
  return withTimeout(
    new Promise((resolve) => {
      ws.once('open', () => ws.send('2probe'));
      ws.on('message', (data) => {
        if (data.toString() === '3probe') {
          ws.terminate();
          resolve('probe answered');
        }
      });
      ws.once('close', () => resolve('closed'));
      ws.once('unexpected-response', (_req, res) => {
        res.resume();
        ws.terminate();
        resolve(res.statusCode);
      });
      ws.once('error', (err) => resolve(`error: ${err.message}`));
    }),
    5000,
    'websocket upgrade outcome',
  );
}

describe('socket id and engine.io session id', () => {
  let server;
  before(async () => {
    server = await start();
  });

  for (const transports of [['websocket'], ['polling']]) {
    test(`socket.id is not socket.io.engine.id, and is the id the server uses (${transports})`, async () => {
      const a = server.track(await connectAs(server, { userId: uniq('sid') }, { transports }));
      const b = server.track(await connectAs(server, { userId: uniq('sid') }, { transports }));
      for (const s of [a, b]) {
        assert.equal(typeof s.id, 'string');
        assert.ok(s.id.length > 0);
        assert.notEqual(s.id, s.io.engine.id, 'the socket id must not be the engine session id');
      }
      assert.notEqual(a.id, b.id);

      // The server's id for the socket is the one its CONNECT answer gave: its own room.
      const got = waitFor(a, 'sid_probe', 3000);
      const res = await apiEmit(server.url, { rooms: [a.id], event: 'sid_probe', data: { n: 1 } }, server.apiKey);
      assert.equal(res.status, 202, JSON.stringify(res.body));
      assert.deepEqual(await got, { n: 1 });

      // The engine session id is not a socket room.
      const recs = [a, b].map((s) => record(s, 'sid_probe'));
      const res2 = await apiEmit(server.url, { rooms: [a.io.engine.id], event: 'sid_probe', data: { n: 2 } }, server.apiKey);
      assert.ok([202, 400].includes(res2.status), `${res2.status} ${JSON.stringify(res2.body)}`);
      await flush(server, a, b);
      assert.deepEqual(recs.map((r) => r.events), [[], []], 'nothing is sent to the engine id as a room');
    });
  }

  /** A victim connected over long-polling, and a recipient recording direct messages. */
  async function victimAndRecipient() {
    const recipientId = uniq('recipient');
    const victim = server.track(await connectAs(server, { userId: uniq('victim') }, { transports: ['polling'] }));
    const recipient = server.track(await connectAs(server, { userId: recipientId }));
    const base = `${server.url}/socket.io/?EIO=4&transport=polling&sid=${encodeURIComponent(victim.id)}`;
    return { victim, recipient, recipientId, base, dms: record(recipient, 'direct_message') };
  }

  /** The victim is still connected over long-polling, and still receives. */
  async function assertVictimUntouched(victim) {
    assert.equal(victim.connected, true, `victim disconnected: ${victim.disconnectReason}`);
    assert.equal(victim.io.engine.transport.name, 'polling');
    const got = waitFor(victim, 'still_here', 3000);
    const res = await apiEmit(server.url, { rooms: [victim.id], event: 'still_here', data: 1 }, server.apiKey);
    assert.equal(res.status, 202);
    assert.equal(await got, 1);
    assert.equal(victim.connected, true, `victim disconnected: ${victim.disconnectReason}`);
  }

  test("posting packets with a long-polling victim's socket id as sid: 400, nothing sent in its name", async () => {
    const { victim, recipient, recipientId, base, dms } = await victimAndRecipient();
    const post = await rawRequest(base, {
      method: 'POST',
      headers: { 'content-type': 'text/plain;charset=UTF-8' },
      body: `42["direct_message",{"to":"${recipientId}","message":"hi"}]`,
    });
    assert.equal(post.status, 400, `POST with the socket id: ${post.status} ${post.text}`);
    assert.match(post.text, /Session ID unknown/);
    await flush(server, recipient, victim);
    assert.deepEqual(dms.events, [], 'no direct_message reached the recipient');
    await assertVictimUntouched(victim);
  });

  test("a websocket upgrade with a long-polling victim's socket id as sid is refused", async () => {
    const { victim, base } = await victimAndRecipient();
    const url = base.replace(/^http/, 'ws').replace('transport=polling', 'transport=websocket');
    const outcome = await upgradeOutcome(url);
    // engine.io's answer to an unknown session, before any 101 (vendor/README.md, fix 12).
    assert.equal(outcome, 400, `websocket upgrade with the socket id: ${outcome}`);
    await assertVictimUntouched(victim);
  });

  test("polling with a long-polling victim's socket id as sid: 400, the victim keeps its session", async () => {
    const { victim, base } = await victimAndRecipient();
    const get = await rawRequest(base);
    assert.equal(get.status, 400, `GET with the socket id: ${get.status} ${get.text}`);
    assert.match(get.text, /Session ID unknown/);
    await assertVictimUntouched(victim);
  });
});
