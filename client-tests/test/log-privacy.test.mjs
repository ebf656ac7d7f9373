// Tokens and query strings never appear in the server's logs, even at trace level.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { connect, connectError, emitAck, signToken, startServer } from './helpers.mjs';

test('no token or query string in the logs at RUST_LOG=trace', async () => {
  const server = await startServer({ RUST_LOG: 'trace', LOG_FORMAT: 'json' });
  const tokens = {
    auth: signToken({ userId: 'log-auth' }),
    header: signToken({ userId: 'log-header' }),
    query: signToken({ userId: 'log-query' }),
    bad: signToken({ userId: 'log-bad' }, { secret: 'not-the-secret' }),
    expired: signToken({ userId: 'log-expired', exp: Math.floor(Date.now() / 1000) - 3600 }),
  };
  const sockets = [
    await connect(server, { auth: { token: tokens.auth }, transports: ['polling', 'websocket'] }),
    await connect(server, { extraHeaders: { authorization: `Bearer ${tokens.header}` }, transports: ['polling'] }),
    await connect(server, { query: { token: tokens.query, marker: 'query-marker-value' }, transports: ['polling'] }),
  ];
  for (const s of sockets) assert.equal((await emitAck(s, 'join_room', 'bad room')).code, 'INVALID_ROOM');
  // The engine.io session id is what a polling request or an upgrade presents as `sid`:
  // whoever reads it in a log could speak for that connection.
  const sessionIds = sockets.map((s) => s.io.engine.id);
  for (const id of sessionIds) assert.ok(id && !sockets.some((s) => s.id === id));
  assert.equal(await connectError(server, { auth: { token: tokens.bad } }), 'Authentication failed');
  assert.equal(await connectError(server, { query: { token: tokens.expired } }), 'Token expired');
  for (const s of sockets) s.close();
  await server.stop();

  const out = server.output;
  assert.ok(out.length > 1000, 'trace logging produced output');
  for (const [source, token] of Object.entries(tokens)) {
    // The signature is the secret-bearing part; the whole token must not appear either.
    assert.ok(!out.includes(token.split('.')[2]), `${source} token found in the logs`);
  }
  assert.ok(!out.includes('query-marker-value'), 'a query string value found in the logs');
  assert.ok(!out.includes('token='), 'a token query parameter found in the logs');
  for (const id of sessionIds) assert.ok(!out.includes(id), `engine.io session id ${id} found in the logs`);
});
