// Issue 15, compressed polling: engine.io compresses long-polling responses of at least
// `httpCompression.threshold` bytes (1024) with gzip or deflate when the client accepts
// one; proxies that force long-polling (and mobile clients on metered links) rely on it.
// Trestle does the same (`HTTP_COMPRESSION_THRESHOLD`), checked on raw polling GETs and
// with a real socket.io-client held to long-polling.
import assert from 'node:assert/strict';
import zlib from 'node:zlib';
import { after, before, describe, test } from 'node:test';
import { apiEmit, connectAs, rawRequest, signToken, startServer, uniq, waitFor } from './helpers.mjs';

/** A raw long-polling session CONNECTed to `/` as a new user. */
async function pollingSession(server) {
  const base = `${server.url}/socket.io/?EIO=4&transport=polling`;
  const hs = await rawRequest(base);
  assert.equal(hs.status, 200, hs.text);
  const url = `${base}&sid=${JSON.parse(hs.text.slice(1)).sid}`;
  const post = (body) => rawRequest(url, { method: 'POST', body, headers: { 'content-type': 'text/plain;charset=UTF-8' } });
  assert.equal((await post(`40${JSON.stringify({ token: signToken({ userId: uniq('poller') }) })}`)).status, 200);
  const connected = (await rawRequest(url)).text.split('\x1e').find((p) => p.startsWith('40{'));
  assert.ok(connected, 'CONNECT answer');
  return { url, socketSid: JSON.parse(connected.slice(2)).sid };
}

/** Publishes `notification` with `bytes` characters of text to one socket, then polls once. */
async function pollAfterEmit(server, session, bytes, acceptEncoding) {
  const text = 'x'.repeat(bytes);
  const res = await apiEmit(server, { rooms: [session.socketSid], event: 'notification', data: { text } }, server.apiKey);
  assert.equal(res.status, 202, res.text);
  const headers = acceptEncoding ? { 'accept-encoding': acceptEncoding } : {};
  const poll = await rawRequest(session.url, { headers });
  assert.equal(poll.status, 200);
  return { poll, text };
}

function decode(poll) {
  switch (poll.headers['content-encoding']) {
    case 'gzip':
      return zlib.gunzipSync(poll.raw).toString('utf8');
    case 'deflate':
      return zlib.inflateSync(poll.raw).toString('utf8');
    case undefined:
      return poll.raw.toString('utf8');
    default:
      throw new Error(`unexpected encoding ${poll.headers['content-encoding']}`);
  }
}

describe('polling compression (default threshold, 1024 bytes)', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(() => server?.stop());

  for (const encoding of ['gzip', 'deflate']) {
    test(`a 20 KB payload is sent with ${encoding} when the client accepts it, and decodes to the packet`, async () => {
      const session = await pollingSession(server);
      const { poll, text } = await pollAfterEmit(server, session, 20_000, `${encoding}`);
      assert.equal(poll.headers['content-encoding'], encoding);
      assert.ok(poll.raw.length < 2_000, `compressed to ${poll.raw.length} bytes`);
      assert.equal(decode(poll), `42${JSON.stringify(['notification', { text }])}`);
    });
  }

  test('gzip is chosen from a browser-like Accept-Encoding', async () => {
    const session = await pollingSession(server);
    const { poll, text } = await pollAfterEmit(server, session, 5_000, 'gzip, deflate, br, zstd');
    assert.ok(['gzip', 'deflate'].includes(poll.headers['content-encoding']), String(poll.headers['content-encoding']));
    assert.ok(decode(poll).includes(text));
  });

  test('without Accept-Encoding, or below the threshold, the payload goes out as it is', async () => {
    const session = await pollingSession(server);
    const plain = await pollAfterEmit(server, session, 20_000, undefined);
    assert.equal(plain.poll.headers['content-encoding'], undefined);
    assert.ok(plain.poll.text.includes(plain.text));
    const small = await pollAfterEmit(server, session, 200, 'gzip');
    assert.equal(small.poll.headers['content-encoding'], undefined);
    assert.ok(small.poll.text.includes(small.text));
  });

  test('a socket.io-client held to long-polling receives a 200 KB event (its transport decodes it)', async () => {
    const userId = uniq('polling-only');
    const client = await connectAs(server, { userId }, { transports: ['polling'] });
    assert.equal(client.io.engine.transport.name, 'polling');
    const got = waitFor(client, 'notification', 5000);
    const text = 'y'.repeat(200_000);
    assert.equal((await apiEmit(server, { rooms: [client.id], event: 'notification', data: { text } }, server.apiKey)).status, 202);
    assert.equal((await got).text, text);
    client.close();
  });
});

describe('HTTP_COMPRESSION_THRESHOLD=0', () => {
  let server;
  before(async () => {
    server = await startServer({ HTTP_COMPRESSION_THRESHOLD: 0 });
  });
  after(() => server?.stop());

  test('turns compression off', async () => {
    const session = await pollingSession(server);
    const { poll, text } = await pollAfterEmit(server, session, 20_000, 'gzip, deflate');
    assert.equal(poll.headers['content-encoding'], undefined);
    assert.ok(poll.text.includes(text));
  });
});
