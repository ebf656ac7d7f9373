// Section 1 / 9 / 10: a message over MAX_MESSAGE_BYTES is never processed and the sender's
// connection is closed; other clients are unaffected.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { connectAs, emitAck, startServer, waitForDisconnect } from './helpers.mjs';

let server;
before(async () => {
  server = await startServer({ MAX_MESSAGE_BYTES: 10_000 });
});
after(() => server?.stop());

for (const transport of ['websocket', 'polling']) {
  test(`a 20,000-byte message over ${transport} disconnects its sender; a bystander still gets acks`, async () => {
    const bystander = await connectAs(server, { userId: `by-${transport}` }, { transports: [transport] });
    const sender = await connectAs(server, { userId: `big-${transport}`, projects: [1] }, { transports: [transport] });
    assert.equal(sender.io.engine.transport.name, transport);

    // under the limit: processed normally
    const ack5k = await emitAck(sender, 'join_room', `project:${'y'.repeat(5_000)}`);
    assert.equal(ack5k.code, 'INVALID_ROOM', JSON.stringify(ack5k));

    const acks = [];
    const big = 'x'.repeat(20_000);
    sender.emit('join_room', big, (ack) => acks.push(ack));
    const reason = await waitForDisconnect(sender, 5000);
    assert.equal(sender.connected, false);
    assert.notEqual(reason, 'io client disconnect', 'the server closed the connection');
    assert.deepEqual(acks, [], 'the oversized message was not processed');

    const ack = await emitAck(bystander, 'join_room', `presence:by-${transport}`);
    assert.deepEqual(ack, { success: true, room: `presence:by-${transport}`, size: 1 });
    bystander.close();
  });
}
