// Section 4 / 10: subscribe_metrics / unsubscribe_metrics and metrics_update.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { assertErrorAck, connectAs, emitAck, expectNoEvent, ISO_UTC, startServer, waitFor } from './helpers.mjs';

const servers = [];
after(() => Promise.all(servers.map((s) => s.stop())));
async function start(env) {
  const s = await startServer(env);
  servers.push(s);
  return s;
}

function numeric(m, field) {
  assert.equal(typeof m[field], 'number', `${field} in ${JSON.stringify(m)}`);
  assert.ok(Number.isFinite(m[field]) && m[field] >= 0, `${field} in ${JSON.stringify(m)}`);
}

// connections (exact), uptimeSeconds and an ISO timestamp; `rooms` and `eventsPerSecond`
// are checked by their own test so that the rest is reported separately.
function assertSnapshot(m, connections) {
  assert.equal(typeof m, 'object', JSON.stringify(m));
  assert.equal(m.connections, connections, `connections in ${JSON.stringify(m)}`);
  numeric(m, 'uptimeSeconds');
  assert.equal(typeof m.timestamp, 'string', `timestamp in ${JSON.stringify(m)}`);
  assert.match(m.timestamp, ISO_UTC);
  assert.ok(Math.abs(Date.parse(m.timestamp) - Date.now()) < 60_000, `timestamp ${m.timestamp}`);
}

describe('first update at once (METRICS_INTERVAL_MS=60000)', () => {
  // An interval far longer than the test: only an update sent at subscription can arrive.
  let server;
  test('FORBIDDEN without admin or metrics', async () => {
    server = await start({ METRICS_INTERVAL_MS: 60_000 });
    const s = await connectAs(server, { userId: 'm-none', permissions: ['room_broadcast'], projects: [1] });
    assertErrorAck(await emitAck(s, 'subscribe_metrics'), 'FORBIDDEN');
    await expectNoEvent(s, 'metrics_update', 200);
    s.close();
  });

  for (const permission of ['metrics', 'admin']) {
    test(`with ${permission}: the first metrics_update arrives at once`, async () => {
      const fresh = await start({ METRICS_INTERVAL_MS: 60_000 });
      const other = await connectAs(fresh, { userId: 'm-other', projects: [1] });
      const s = await connectAs(fresh, { userId: `m-${permission}`, permissions: [permission], projects: [1] });
      const first = waitFor(s, 'metrics_update', 1500);
      const ack = await emitAck(s, 'subscribe_metrics');
      assert.equal(ack.success, true, JSON.stringify(ack));
      assertSnapshot(await first, 2);
      other.close();
      s.close();
    });
  }

  test('metrics_update carries numeric rooms and eventsPerSecond', async () => {
    const fresh = await start({ METRICS_INTERVAL_MS: 60_000 });
    const s = await connectAs(fresh, { userId: 'm-fields', permissions: ['metrics'], projects: [1] });
    assert.equal((await emitAck(s, 'join_room', 'project:1:comments')).success, true);
    const first = waitFor(s, 'metrics_update', 1500);
    assert.equal((await emitAck(s, 'subscribe_metrics')).success, true);
    const m = await first;
    assertSnapshot(m, 1);
    numeric(m, 'rooms');
    numeric(m, 'eventsPerSecond');
    s.close();
  });
});

describe('METRICS_INTERVAL_MS=500', () => {
  test('periodic updates, and none after unsubscribe_metrics', async () => {
    const server = await start({ METRICS_INTERVAL_MS: 500 });
    const s = await connectAs(server, { userId: 'm-periodic', permissions: ['metrics'] });
    const bystander = await connectAs(server, { userId: 'm-bystander', permissions: ['metrics'] });
    const first = waitFor(s, 'metrics_update', 1000);
    assert.equal((await emitAck(s, 'subscribe_metrics')).success, true);
    assertSnapshot(await first, 2);
    assertSnapshot(await waitFor(s, 'metrics_update', 2000), 2);

    const ack = await emitAck(s, 'unsubscribe_metrics');
    assert.equal(ack.success, true, JSON.stringify(ack));
    // more than two intervals without an update, for the unsubscriber and for a socket
    // that never subscribed
    await Promise.all([expectNoEvent(s, 'metrics_update', 1300), expectNoEvent(bystander, 'metrics_update', 1300)]);
    s.close();
    bystander.close();
  });
});
