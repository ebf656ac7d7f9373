// Section 1 / 10: every authentication connect_error message, pinned algorithms (HS256,
// RS256, ES256, alg confusion), issuer / audience, and AUTH_REQUIRED=false.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import {
  apiEmit,
  assertErrorAck,
  connect,
  connectAs,
  connectError,
  emitAck,
  JWT_SECRET,
  signToken,
  startServer,
  unsignedToken,
  waitFor,
} from './helpers.mjs';

const now = () => Math.floor(Date.now() / 1000);
const servers = [];
after(() => Promise.all(servers.map((s) => s.stop())));
async function start(env) {
  const s = await startServer(env);
  servers.push(s);
  return s;
}

const withToken = (token, opts = {}) => ({ auth: { token }, ...opts });

describe('HS256 with JWT_SECRET (default)', () => {
  let server;
  before(async () => {
    server = await start({});
  });

  test('a valid token connects', async () => {
    const socket = await connect(server, withToken(signToken({ userId: 'ok-user' })));
    assert.equal(socket.connected, true);
    socket.close();
  });

  test('`sub` is used when there is no userId', async () => {
    const socket = await connect(server, withToken(signToken({ sub: 'sub-user' })));
    const got = waitFor(socket, 'probe');
    const res = await apiEmit(server.url, { rooms: ['notifications:sub-user'], event: 'probe', data: 1 }, server.apiKey);
    assert.equal(res.status, 202);
    assert.equal(await got, 1);
    socket.close();
  });

  test('no token: Authentication required', async () => {
    assert.equal(await connectError(server, {}), 'Authentication required');
    assert.equal(await connectError(server, { transports: ['polling'] }), 'Authentication required');
  });

  test('bad signature: Authentication failed', async () => {
    const token = signToken({ userId: 'u1' }, { secret: `${JWT_SECRET}-wrong` });
    assert.equal(await connectError(server, withToken(token)), 'Authentication failed');
  });

  test('tampered payload: Authentication failed', async () => {
    const [h, , s] = signToken({ userId: 'u1' }).split('.');
    const payload = Buffer.from(JSON.stringify({ userId: 'admin', permissions: ['admin'], exp: now() + 3600 })).toString('base64url');
    assert.equal(await connectError(server, withToken(`${h}.${payload}.${s}`)), 'Authentication failed');
  });

  for (const [name, token] of [
    ['garbage', 'not-a-jwt'],
    ['three garbage parts', 'aaa.bbb.ccc'],
    ['two parts', signToken({ userId: 'u1' }).split('.').slice(0, 2).join('.')],
  ]) {
    test(`malformed token (${name}): Authentication failed`, async () => {
      assert.equal(await connectError(server, withToken(token)), 'Authentication failed');
    });
  }

  test('alg none: Authentication failed', async () => {
    assert.equal(await connectError(server, withToken(unsignedToken({ userId: 'u1' }))), 'Authentication failed');
  });

  test('HS384 with the right secret is refused (only HS256 is pinned)', async () => {
    const token = signToken({ userId: 'u1' }, { algorithm: 'HS384' });
    assert.equal(await connectError(server, withToken(token)), 'Authentication failed');
  });

  test('HS512 with the right secret is refused', async () => {
    const token = signToken({ userId: 'u1' }, { algorithm: 'HS512' });
    assert.equal(await connectError(server, withToken(token)), 'Authentication failed');
  });

  test('nbf in the future: Authentication failed', async () => {
    const token = signToken({ userId: 'u1', nbf: now() + 3600 });
    assert.equal(await connectError(server, withToken(token)), 'Authentication failed');
  });

  test('nbf in the past is accepted', async () => {
    const socket = await connect(server, withToken(signToken({ userId: 'u1', nbf: now() - 3600 })));
    socket.close();
  });

  test('no exp: Authentication failed', async () => {
    const token = signToken({ userId: 'u1' }, { noExp: true });
    assert.equal(await connectError(server, withToken(token)), 'Authentication failed');
  });

  test('no user id: Authentication failed', async () => {
    assert.equal(await connectError(server, withToken(signToken({ name: 'Nobody', permissions: ['admin'] }))), 'Authentication failed');
  });

  test('unusable user id: Authentication failed', async () => {
    assert.equal(await connectError(server, withToken(signToken({ userId: 'has space' }))), 'Authentication failed');
    assert.equal(await connectError(server, withToken(signToken({ userId: '' }))), 'Authentication failed');
    assert.equal(await connectError(server, withToken(signToken({ userId: 'x'.repeat(129) }))), 'Authentication failed');
  });

  test('expired: Token expired', async () => {
    const token = signToken({ userId: 'u1', exp: now() - 3600 });
    assert.equal(await connectError(server, withToken(token)), 'Token expired');
    assert.equal(await connectError(server, { transports: ['polling'], ...withToken(token) }), 'Token expired');
  });

  test('a token signed with RS256 is refused when only HS256 is pinned', async () => {
    const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const token = signToken({ userId: 'u1' }, { key: privateKey.export({ type: 'pkcs8', format: 'pem' }), algorithm: 'RS256' });
    assert.equal(await connectError(server, withToken(token)), 'Authentication failed');
  });
});

describe('JWT_ISSUER and JWT_AUDIENCE', () => {
  let server;
  before(async () => {
    server = await start({ JWT_ISSUER: 'https://issuer.test', JWT_AUDIENCE: 'trestle-clients' });
  });

  test('right iss and aud connect', async () => {
    const socket = await connectAs(server, { userId: 'u1', iss: 'https://issuer.test', aud: 'trestle-clients' });
    socket.close();
  });

  test('wrong iss: Authentication failed', async () => {
    const token = signToken({ userId: 'u1', iss: 'https://evil.test', aud: 'trestle-clients' });
    assert.equal(await connectError(server, withToken(token)), 'Authentication failed');
  });

  test('missing iss: Authentication failed', async () => {
    const token = signToken({ userId: 'u1', aud: 'trestle-clients' });
    assert.equal(await connectError(server, withToken(token)), 'Authentication failed');
  });

  test('wrong aud: Authentication failed', async () => {
    const token = signToken({ userId: 'u1', iss: 'https://issuer.test', aud: 'someone-else' });
    assert.equal(await connectError(server, withToken(token)), 'Authentication failed');
  });

  test('missing aud: Authentication failed', async () => {
    const token = signToken({ userId: 'u1', iss: 'https://issuer.test' });
    assert.equal(await connectError(server, withToken(token)), 'Authentication failed');
  });

  test('expired with right iss/aud: Token expired', async () => {
    const token = signToken({ userId: 'u1', iss: 'https://issuer.test', aud: 'trestle-clients', exp: now() - 3600 });
    assert.equal(await connectError(server, withToken(token)), 'Token expired');
  });
});

const pem = (key, type) => key.export({ type, format: 'pem' });

describe('RS256 with JWT_PUBLIC_KEY (JWT_ALGORITHMS=RS256,ES256)', () => {
  let server;
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const otherRsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const publicPem = pem(rsa.publicKey, 'spki');
  before(async () => {
    server = await start({ JWT_PUBLIC_KEY: publicPem, JWT_ALGORITHMS: 'RS256,ES256' });
  });

  test('RS256 token signed with the matching private key connects', async () => {
    const token = signToken({ userId: 'rs-user' }, { key: pem(rsa.privateKey, 'pkcs8'), algorithm: 'RS256' });
    const socket = await connect(server, withToken(token));
    socket.close();
  });

  test('RS256 token signed with another key: Authentication failed', async () => {
    const token = signToken({ userId: 'rs-user' }, { key: pem(otherRsa.privateKey, 'pkcs8'), algorithm: 'RS256' });
    assert.equal(await connectError(server, withToken(token)), 'Authentication failed');
  });

  test('expired RS256 token: Token expired', async () => {
    const token = signToken({ userId: 'rs-user', exp: now() - 3600 }, { key: pem(rsa.privateKey, 'pkcs8'), algorithm: 'RS256' });
    assert.equal(await connectError(server, withToken(token)), 'Token expired');
  });

  test('alg confusion: HS256 signed with the public key text is refused', async () => {
    const token = signToken({ userId: 'rs-user' }, { secret: publicPem, algorithm: 'HS256' });
    assert.equal(await connectError(server, withToken(token)), 'Authentication failed');
  });

  test('HS256 signed with JWT_SECRET is refused (not pinned)', async () => {
    const token = signToken({ userId: 'rs-user' });
    assert.equal(await connectError(server, withToken(token)), 'Authentication failed');
  });

  test('alg none: Authentication failed', async () => {
    assert.equal(await connectError(server, withToken(unsignedToken({ userId: 'rs-user' }))), 'Authentication failed');
  });
});

describe('ES256 with JWT_PUBLIC_KEY (JWT_ALGORITHMS=RS256,ES256)', () => {
  let server;
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const otherEc = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const publicPem = pem(ec.publicKey, 'spki');
  before(async () => {
    server = await start({ JWT_PUBLIC_KEY: publicPem, JWT_ALGORITHMS: 'RS256,ES256' });
  });

  test('ES256 token signed with the matching private key connects', async () => {
    const token = signToken({ userId: 'es-user' }, { key: pem(ec.privateKey, 'pkcs8'), algorithm: 'ES256' });
    const socket = await connect(server, withToken(token));
    socket.close();
  });

  test('ES256 token signed with another key: Authentication failed', async () => {
    const token = signToken({ userId: 'es-user' }, { key: pem(otherEc.privateKey, 'pkcs8'), algorithm: 'ES256' });
    assert.equal(await connectError(server, withToken(token)), 'Authentication failed');
  });

  test('alg confusion: HS256 signed with the public key text is refused', async () => {
    const token = signToken({ userId: 'es-user' }, { secret: publicPem, algorithm: 'HS256' });
    assert.equal(await connectError(server, withToken(token)), 'Authentication failed');
  });
});

describe('AUTH_REQUIRED=false', () => {
  let server;
  before(async () => {
    server = await start({ AUTH_REQUIRED: 'false' });
  });

  test('no token connects as an anonymous user with no memberships', async () => {
    const socket = await connect(server, {});
    assertErrorAck(await emitAck(socket, 'join_room', 'presence:x'), 'FORBIDDEN');
    assertErrorAck(await emitAck(socket, 'join_room', 'project:1'), 'FORBIDDEN');
    socket.close();
  });

  test('a bad token still fails', async () => {
    const token = signToken({ userId: 'u1' }, { secret: 'wrong' });
    assert.equal(await connectError(server, withToken(token)), 'Authentication failed');
  });

  test('an expired token still fails', async () => {
    const token = signToken({ userId: 'u1', exp: now() - 3600 });
    assert.equal(await connectError(server, withToken(token)), 'Token expired');
  });

  test('a good token connects as that user', async () => {
    const socket = await connectAs(server, { userId: 'named', projects: [3] });
    assert.deepEqual(await emitAck(socket, 'join_room', 'project:3:comments'), { success: true, room: 'project:3:comments', size: 1 });
    socket.close();
  });
});

describe('boolean settings as the Node backend writes them', () => {
  for (const value of ['0', 'off', 'FALSE', 'No']) {
    test(`AUTH_REQUIRED=${value} starts and admits a client without a token`, async () => {
      const server = await start({ AUTH_REQUIRED: value });
      const socket = await connect(server, {});
      assertErrorAck(await emitAck(socket, 'join_room', 'project:1'), 'FORBIDDEN');
      socket.close();
    });
  }

  test('AUTH_REQUIRED=1 still requires a token; a value that is no boolean stops start-up', async () => {
    const server = await start({ AUTH_REQUIRED: '1' });
    assert.equal(await connectError(server, {}), 'Authentication required');
    await assert.rejects(startServer({ AUTH_REQUIRED: 'maybe' }, { readyTimeoutMs: 5000 }));
  });
});

test('a setting left blank (AUTH_REQUIRED=, REDIS_URL=, MAX_ROOM_SIZE=) takes its default, as with the Node backend', async () => {
  const server = await start({ AUTH_REQUIRED: '', REDIS_URL: '', MAX_ROOM_SIZE: '', PING_INTERVAL_MS: '' });
  assert.equal(await connectError(server, {}), 'Authentication required');
  const socket = await connectAs(server, { userId: 'blank', tasks: ['t1'] });
  assert.deepEqual(await emitAck(socket, 'join_room', 'task:t1'), { success: true, room: 'task:t1', size: 1 });
  socket.close();
});
