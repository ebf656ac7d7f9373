// Section 8 / 10: /health, /ready, /metrics, unknown paths, POST /api/emit.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { apiEmit, connectAs, connectError, emitAck, flush, httpGet, rawRequest, record, signToken, startServer, waitFor } from './helpers.mjs';

const servers = [];
after(() => Promise.all(servers.map((s) => s.stop())));

const METRIC_NAMES = [
  'trestle_connected_sockets',
  'trestle_connections_total',
  'trestle_disconnects_total',
  'trestle_events_received_total',
  'trestle_auth_failures_total',
  'trestle_rate_limited_total',
];

// Sum of the samples of `name` whose labels contain every `labels` pair.
function metricValue(text, name, labels = {}) {
  let found = false;
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || !line.trim()) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
    if (!Object.entries(labels).every(([k, v]) => got[k] === v)) continue;
    found = true;
    sum += Number(m[4]);
  }
  return found ? sum : undefined;
}

describe('health, readiness, metrics, 404', () => {
  let server;
  before(async () => {
    server = await startServer();
    servers.push(server);
  });

  test('GET /health is 200', async () => {
    assert.equal((await httpGet(server, '/health')).status, 200);
  });

  test('GET /ready is 200', async () => {
    assert.equal((await httpGet(server, '/ready')).status, 200);
  });

  test('unknown paths are 404', async () => {
    for (const p of ['/nope', '/api/nope', '/health/x', '/metricsx']) {
      assert.equal((await httpGet(server, p)).status, 404, p);
    }
  });

  test('GET /metrics is text/plain', async () => {
    const res = await httpGet(server, '/metrics');
    assert.equal(res.status, 200);
    assert.match(res.headers['content-type'] ?? '', /^text\/plain\b/);
  });

  test('GET /metrics names the Trestle metrics', async () => {
    // a connection, an event and an auth failure have happened; no disconnect and no
    // rate-limited event yet: those two counters are expected to be there from the start
    const s = await connectAs(server, { userId: 'metrics-names' });
    assert.equal((await emitAck(s, 'join_room', 'presence:metrics-names')).success, true);
    await connectError(server, { auth: { token: 'garbage' } });
    const { text } = await httpGet(server, '/metrics');
    for (const name of METRIC_NAMES) assert.match(text, new RegExp(`^(# (HELP|TYPE) )?${name}\\b`, 'm'), `${name} missing`);
    assert.equal(metricValue(text, 'trestle_connected_sockets'), 1, 'trestle_connected_sockets counts the one connected socket');
    s.close();
  });

  test('a refused token counts in trestle_auth_failures_total', async () => {
    assert.equal(await connectError(server, { auth: { token: signToken({ userId: 'x' }, { secret: 'wrong' }) } }), 'Authentication failed');
    const { text } = await httpGet(server, '/metrics');
    const value = metricValue(text, 'trestle_auth_failures_total');
    assert.ok(value >= 1, `trestle_auth_failures_total = ${value}`);
  });

  test('a join_room counts in trestle_events_received_total{event="join_room"}', async () => {
    const s = await connectAs(server, { userId: 'metrics-events' });
    assert.equal((await emitAck(s, 'join_room', 'presence:metrics-events')).success, true);
    const { text } = await httpGet(server, '/metrics');
    const value = metricValue(text, 'trestle_events_received_total', { event: 'join_room' });
    assert.ok(value >= 1, `trestle_events_received_total{event="join_room"} = ${value}`);
    s.close();
  });
});

describe('POST /api/emit', () => {
  let server;
  before(async () => {
    server = await startServer();
    servers.push(server);
  });

  const ok = { rooms: ['project:1'], event: 'api_event', data: { a: 1 } };

  test('no key, wrong key, empty key, other scheme: 401', async () => {
    assert.equal((await apiEmit(server, ok)).status, 401);
    assert.equal((await apiEmit(server, ok, 'wrong-key')).status, 401);
    assert.equal((await apiEmit(server, ok, '')).status, 401);
    const basic = await rawRequest(`${server.url}/api/emit`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Basic ${server.apiKey}` },
      body: JSON.stringify(ok),
    });
    assert.equal(basic.status, 401);
    const bare = await rawRequest(`${server.url}/api/emit`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: server.apiKey },
      body: JSON.stringify(ok),
    });
    assert.equal(bare.status, 401);
  });

  test('a wrong key is 401 even with a bad body', async () => {
    assert.equal((await apiEmit(server, '{not json', 'wrong-key')).status, 401);
  });

  test('bad JSON: 400', async () => {
    for (const body of ['{not json', '', '[1,2', 'null']) {
      assert.equal((await apiEmit(server, body, server.apiKey)).status, 400, JSON.stringify(body));
    }
  });

  test('missing, empty or malformed rooms: 400', async () => {
    for (const body of [
      { event: 'e', data: 1 },
      { rooms: [], event: 'e', data: 1 },
      { rooms: 'project:1', event: 'e', data: 1 },
      { rooms: [1], event: 'e', data: 1 },
      { rooms: null, event: 'e', data: 1 },
    ]) {
      const res = await apiEmit(server, body, server.apiKey);
      assert.equal(res.status, 400, JSON.stringify(body));
    }
  });

  test('missing or bad event: 400', async () => {
    for (const body of [
      { rooms: ['project:1'], data: 1 },
      { rooms: ['project:1'], event: '', data: 1 },
      { rooms: ['project:1'], event: 42, data: 1 },
      { rooms: ['project:1'], event: null, data: 1 },
      { rooms: ['project:1'], event: ['e'], data: 1 },
    ]) {
      const res = await apiEmit(server, body, server.apiKey);
      assert.equal(res.status, 400, JSON.stringify(body));
    }
  });

  test('a body over 1 MB: 413', async () => {
    const body = JSON.stringify({ rooms: ['project:1'], event: 'big', data: 'x'.repeat(1_100_000) });
    // sent with Expect: 100-continue, so that a server that answers 413 from the
    // Content-Length alone is not reset while the body is still being written
    const res = await apiEmit(server, body, server.apiKey, { expectContinue: true });
    assert.equal(res.status, 413);
    // and the server still serves
    assert.equal((await apiEmit(server, { rooms: ['project:1'], event: 'small', data: 1 }, server.apiKey)).status, 202);
  });

  test('a body just under 1 MB is accepted', async () => {
    const body = JSON.stringify({ rooms: ['project:1'], event: 'big', data: 'x'.repeat(900_000) });
    assert.equal((await apiEmit(server, body, server.apiKey)).status, 202);
  });

  test('success: 202 { success: true } and the event reaches the room, all of its sockets', async () => {
    const a = await connectAs(server, { userId: 'api-a', projects: [1] });
    const b = await connectAs(server, { userId: 'api-b', projects: [1] }, { transports: ['polling'] });
    const c = await connectAs(server, { userId: 'api-c', projects: [2] });
    const atC = record(c, 'api_event');
    const got = [waitFor(a, 'api_event'), waitFor(b, 'api_event')];
    const res = await apiEmit(server, ok, server.apiKey);
    assert.equal(res.status, 202);
    assert.deepEqual(res.body, { success: true });
    assert.deepEqual(await Promise.all(got), [{ a: 1 }, { a: 1 }]);
    await flush(server, c);
    assert.deepEqual(atC.events, []);

    // several rooms: a socket in two of them gets the event once
    const atA = record(a, 'multi');
    const atB = record(b, 'multi');
    const atC2 = record(c, 'multi');
    const res2 = await apiEmit(server, { rooms: ['project:1', 'notifications:api-a', 'project:2'], event: 'multi', data: 'm' }, server.apiKey);
    assert.equal(res2.status, 202);
    await flush(server, a, b, c);
    assert.deepEqual(atA.events, ['m']);
    assert.deepEqual(atB.events, ['m']);
    assert.deepEqual(atC2.events, ['m']);
    for (const s of [a, b, c]) s.close();
  });

  test('`except` rooms are excluded', async () => {
    const a = await connectAs(server, { userId: 'ex-a', projects: [5] });
    const b = await connectAs(server, { userId: 'ex-b', projects: [5] });
    const c = await connectAs(server, { userId: 'ex-c', projects: [5] });
    const seen = [a, b, c].map((s) => record(s, 'except_event'));
    const res = await apiEmit(server, { rooms: ['project:5'], event: 'except_event', data: { x: 1 }, except: ['notifications:ex-b', c.id] }, server.apiKey);
    assert.equal(res.status, 202);
    assert.deepEqual(res.body, { success: true });
    await flush(server, a, b, c);
    assert.deepEqual(seen.map((r) => r.events), [[{ x: 1 }], [], []]);
    for (const s of [a, b, c]) s.close();
  });
});

describe('POST /api/emit without API_KEY configured', () => {
  test('every request is 401', async () => {
    const server = await startServer({ API_KEY: undefined });
    servers.push(server);
    for (const key of [undefined, 'client-tests-api-key', '', 'anything']) {
      const res = await apiEmit(server, { rooms: ['project:1'], event: 'e', data: 1 }, key);
      assert.equal(res.status, 401, String(key));
    }
  });
});
