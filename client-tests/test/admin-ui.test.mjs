// The admin dashboard (README, Admin dashboard): the `/admin` namespace speaks
// @socket.io/admin-ui 0.5's server protocol for the sockets of every instance, behind its
// bcrypt login; off, `/admin` does not exist. First at the protocol level with
// socket.io-client on two instances behind a real Redis, then end to end: the npm
// package's own dashboard, served by Trestle, in headless Chromium (playwright-core).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import {
  IS_REFERENCE,
  JWT_SECRET,
  connect,
  connectAs,
  connectError,
  emitAck,
  join,
  openSocket,
  record,
  serverPool,
  signToken,
  uniq,
  waitFor,
  waitForDisconnect,
  waitUntil,
  whenConnected,
} from './helpers.mjs';
import { startCluster } from './services.mjs';

// bcryptjs is what admin-ui's own server hashes with (its dependency).
const bcrypt = createRequire(import.meta.url)('bcryptjs');
const USER = 'ops';
const PASSWORD = 'correct horse battery';
const HASH = bcrypt.hashSync(PASSWORD, 8);
const ADMIN = { ADMIN_UI_USERNAME: USER, ADMIN_UI_PASSWORD_HASH: HASH };
const UI_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../node_modules/@socket.io/admin-ui/ui/dist');
const CHROMIUM = '/usr/bin/chromium';
const skip = IS_REFERENCE && 'Trestle admin dashboard';

/** A dashboard connection to `server`'s `/admin`, recording what admin-ui's UI listens to. */
function dashboard(server, auth = { username: USER, password: PASSWORD }) {
  const s = openSocket(`${server.url}/admin`, { auth });
  if (server.track) server.track(s);
  const events = ['config', 'all_sockets', 'server_stats', 'socket_connected', 'socket_disconnected', 'room_joined', 'room_left'];
  const recs = {};
  for (const e of events) {
    recs[e] = [];
    s.on(e, (...args) => recs[e].push(args));
  }
  return { s, recs, connected: whenConnected(s) };
}

/** Resolves with the arguments of the first recorded `event` matching `pred`, waiting for it. */
async function seen(recs, event, pred = () => true, ms = 10_000) {
  let found;
  await waitUntil(() => (found = recs[event].find((args) => pred(...args))), ms);
  return found;
}

describe('admin dashboard off', { skip }, () => {
  const pool = serverPool(after);

  test('without a login /admin is no namespace, as before', async () => {
    const server = await pool.start();
    assert.equal(await connectError(`${server.url}/admin`, { auth: { username: USER, password: PASSWORD } }), 'Invalid namespace');
  });

  test('half a login, or a hash that is not bcrypt, refuses to start', () => {
    const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
    const bin = process.env.TRESTLE_BIN ? path.resolve(root, 'client-tests', process.env.TRESTLE_BIN) : path.join(root, 'target/release/trestle');
    for (const env of [{ ADMIN_UI_USERNAME: USER }, { ADMIN_UI_PASSWORD_HASH: HASH }, { ...ADMIN, ADMIN_UI_PASSWORD_HASH: 'plain-text' }, { ADMIN_UI_STATIC_DIR: UI_DIR }]) {
      const run = spawnSync(bin, [], { env: { PATH: process.env.PATH, JWT_SECRET, PORT: '0', HOST: '127.0.0.1', DATA_DIR: fs.mkdtempSync('/tmp/trestle-admin-'), ...env }, encoding: 'utf8', timeout: 20_000 });
      assert.notEqual(run.status, 0, `started with ${JSON.stringify(env)}`);
      assert.match(run.stderr + run.stdout, /ADMIN_UI_/, JSON.stringify(env));
    }
  });
});

describe('admin dashboard protocol on two instances behind Redis', { skip }, () => {
  let cluster, a, b;
  before(async () => {
    cluster = await startCluster(2, { ...ADMIN, ADMIN_UI_MODE: 'development' });
    a = cluster.instances[0];
    b = cluster.instances[1];
  });
  after(() => cluster?.stop());

  test('a wrong password or user name is refused with admin-ui\'s connect_error', async () => {
    for (const auth of [{ username: USER, password: 'wrong' }, { username: 'root', password: PASSWORD }, { username: USER }, {}]) {
      assert.equal(await connectError(`${a.url}/admin`, { auth }), 'invalid credentials', JSON.stringify(auth));
    }
  });

  test('the /admin namespace does not take the main namespace\'s token, nor does a token open it', async () => {
    assert.equal(await connectError(`${a.url}/admin`, { auth: { token: signToken({ userId: 'admin-u', admin: true }) } }), 'invalid credentials');
    // No token at all: the main namespace would answer "Authentication required".
    const d = dashboard(a);
    await d.connected;
    d.s.close();
  });

  test('config, all_sockets of both instances, server_stats of both, and live socket and room events', async () => {
    // A project room is joined at connect (the claims); a task room with join_room.
    const project = `project:${uniq('p')}`;
    const task = `task:${uniq('t')}`;
    const here = await connectAs(a, { userId: uniq('ua'), projects: [project.slice(8)] });
    // The token in the query and a cookie: credentials the dashboard must not show.
    const token = signToken({ userId: uniq('ub'), projects: [project.slice(8)] });
    const there = await connect(b, { query: { token }, extraHeaders: { cookie: 'session=secret' }, transports: ['polling'] });
    await join(there, project);

    const d = dashboard(a);
    await d.connected;
    const [config] = await seen(d.recs, 'config');
    for (const f of ['EMIT', 'JOIN', 'LEAVE', 'DISCONNECT', 'MJOIN', 'MLEAVE', 'MDISCONNECT', 'AGGREGATED_EVENTS', 'ALL_EVENTS']) {
      assert.ok(config.supportedFeatures.includes(f), `${f} missing: ${JSON.stringify(config)}`);
    }
    const [all] = await seen(d.recs, 'all_sockets');
    const byId = new Map(all.map((s) => [s.id, s]));
    assert.ok(byId.has(here.id) && byId.has(there.id), `all_sockets: ${JSON.stringify(all.map((s) => s.id))}`);
    const mine = byId.get(here.id);
    assert.equal(mine.nsp, '/');
    assert.ok(['polling', 'websocket'].includes(mine.transport), mine.transport);
    assert.ok(mine.rooms.includes(here.id), JSON.stringify(mine.rooms));
    assert.equal(typeof mine.handshake.address, 'string');
    // The other instance's socket, with the room it joined there.
    assert.ok(byId.get(there.id).rooms.includes(project), JSON.stringify(byId.get(there.id)));

    // server_stats from each instance (each its own serverId), counting its own sockets.
    await waitUntil(() => new Set(d.recs.server_stats.map(([s]) => s.serverId)).size === 2, 15_000);
    const latest = new Map(d.recs.server_stats.map(([s]) => [s.serverId, s]));
    const main = [...latest.values()].map((s) => s.namespaces.find((n) => n.name === '/')?.socketsCount ?? 0);
    assert.equal(main.reduce((x, y) => x + y, 0), 2, JSON.stringify([...latest.values()]));
    for (const s of latest.values()) {
      assert.equal(typeof s.uptime, 'number');
      assert.ok(Array.isArray(s.aggregatedEvents));
    }

    // Live events from the other instance: connect, join, leave, disconnect.
    const later = await connectAs(b, { userId: uniq('uc'), tasks: [task.slice(5)] });
    const [shown] = await seen(d.recs, 'socket_connected', (s) => s.id === later.id);
    assert.equal(shown.nsp, '/');
    assert.ok(shown.rooms.includes(later.id));
    // The socket seen on its own instance: its handshake, without credentials.
    const [viaB] = await seen(d.recs, 'socket_connected', (s) => s.id === later.id);
    assert.equal(viaB.handshake.headers.authorization, undefined);
    await join(later, task);
    await seen(d.recs, 'room_joined', (nsp, room, id) => nsp === '/' && room === task && id === later.id);
    assert.equal((await emitAck(later, 'leave_room', task)).success, true);
    await seen(d.recs, 'room_left', (nsp, room, id) => nsp === '/' && room === task && id === later.id);
    // socket.io-client forgets its id once disconnected.
    const laterId = later.id;
    later.close();
    const [, , reason] = await seen(d.recs, 'socket_disconnected', (nsp, id) => nsp === '/' && id === laterId);
    assert.equal(typeof reason, 'string');

    // A second dashboard, on the other instance, sees this instance's socket whole, and no
    // credentials in it.
    const d2 = dashboard(b);
    await d2.connected;
    const [all2] = await seen(d2.recs, 'all_sockets');
    const pollingOne = all2.find((s) => s.id === there.id);
    assert.equal(pollingOne.transport, 'polling');
    assert.equal(pollingOne.handshake.headers.cookie, undefined, JSON.stringify(pollingOne.handshake));
    assert.equal(pollingOne.handshake.query.token, undefined, JSON.stringify(pollingOne.handshake));
    assert.equal(pollingOne.data.userId !== undefined, true);
    d.s.close();
    d2.s.close();
    here.close();
    there.close();
  });

  test('emit, join, leave and _disconnect reach sockets on the other instance', async () => {
    const target = await connectAs(b, { userId: uniq('ut') });
    const bystander = await connectAs(a, { userId: uniq('uy') });
    const d = dashboard(a);
    await d.connected;
    await seen(d.recs, 'all_sockets');

    const got = waitFor(target, 'admin_notice', 10_000);
    d.s.emit('emit', '/', target.id, 'admin_notice', { text: 'hello' }, 2);
    assert.deepEqual(await got, { text: 'hello' });

    const room = uniq('ops-room');
    d.s.emit('join', '/', room, target.id);
    await seen(d.recs, 'room_joined', (nsp, r, id) => nsp === '/' && r === room && id === target.id);
    // The room now holds the target only: an emit to it reaches the target, not the bystander.
    const toRoom = record(bystander, 'room_notice');
    const reached = waitFor(target, 'room_notice', 10_000);
    d.s.emit('emit', '/', room, 'room_notice', 'x');
    assert.equal(await reached, 'x');
    d.s.emit('leave', '/', room, target.id);
    await seen(d.recs, 'room_left', (nsp, r, id) => nsp === '/' && r === room && id === target.id);
    assert.deepEqual(toRoom.events, []);

    // Arguments of the wrong kind, or an unknown namespace, are ignored.
    d.s.emit('_disconnect', '/nope', false, target.id);
    d.s.emit('_disconnect', '/', false, { room: target.id });
    d.s.emit('join', '/', 42, target.id);

    const targetId = target.id;
    d.s.emit('_disconnect', '/', false, targetId);
    assert.equal(await waitForDisconnect(target, 10_000), 'io server disconnect');
    await seen(d.recs, 'socket_disconnected', (nsp, id) => nsp === '/' && id === targetId);
    assert.equal(bystander.connected, true);
    d.s.close();
    bystander.close();
  });
});

describe('admin dashboard read-only, production mode', { skip }, () => {
  const pool = serverPool(after);

  test('statistics only, and the commands do nothing', async () => {
    const server = await pool.start({ ...ADMIN, ADMIN_UI_READONLY: 'true' });
    const client = await connectAs(server, { userId: uniq('ur') });
    const d = dashboard(server);
    await d.connected;
    const [config] = await seen(d.recs, 'config');
    assert.deepEqual(config.supportedFeatures, ['AGGREGATED_EVENTS']);
    const [stats] = await seen(d.recs, 'server_stats', () => true, 10_000);
    assert.equal(stats.namespaces.find((n) => n.name === '/').socketsCount, 1);
    d.s.emit('_disconnect', '/', false, client.id);
    // The stats that follow the command (it would have run before them) still count it.
    const n = d.recs.server_stats.length;
    await waitUntil(() => d.recs.server_stats.length > n + 1, 10_000);
    assert.equal(client.connected, true);
    assert.deepEqual(d.recs.all_sockets, [], 'all_sockets in production mode');
    d.s.close();
  });
});

describe('admin-ui\'s own dashboard in headless Chromium', { skip }, () => {
  const pool = serverPool(after);
  let browser;
  after(() => browser?.close());

  test('log in, see the sockets and a room, disconnect a socket', { timeout: 120_000 }, async () => {
    assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} is missing: scripts/test.sh installs Debian's chromium`);
    const server = await pool.start({ ...ADMIN, ADMIN_UI_MODE: 'development', ADMIN_UI_STATIC_DIR: UI_DIR, ADMIN_UI_PATH: '/admin-ui' });
    const task = uniq('tw');
    const one = await connectAs(server, { userId: uniq('u1') });
    const two = await connectAs(server, { userId: uniq('u2'), tasks: [task] });
    await join(two, `task:${task}`);

    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
    const page = await browser.newPage();
    // The page links fonts and icons from CDNs; this machine is offline, and they only style.
    await page.route((url) => url.hostname !== '127.0.0.1', (route) => route.abort());
    await page.goto(`${server.url}/admin-ui`);
    assert.equal(new URL(page.url()).pathname, '/admin-ui/');

    // A wrong password first: the form stays, with admin-ui's message.
    await page.getByLabel('Server URL').fill(server.url);
    await page.getByLabel('Username').fill(USER);
    await page.getByLabel('Password').fill('wrong');
    await page.getByRole('button', { name: 'Connect' }).click();
    await page.getByText('invalid credentials').waitFor({ timeout: 20_000 });
    await page.getByLabel('Password').fill(PASSWORD);
    await page.getByRole('button', { name: 'Connect' }).click();

    // Dashboard: the namespaces card counts the two sockets of `/`.
    const mainRow = page.locator('tr', { has: page.locator('td.key-column code', { hasText: /^\/$/ }) });
    await mainRow.locator('td').nth(1).filter({ hasText: /^2$/ }).waitFor({ timeout: 20_000 });

    // Rooms: the task room the second socket joined, with its one socket.
    await page.goto(`${server.url}/admin-ui/#/rooms/`);
    const roomRow = page.locator('tr', { hasText: `task:${task}` });
    await roomRow.locator('td').nth(2).filter({ hasText: /^\s*1\s*$/ }).waitFor({ timeout: 20_000 });

    // Sockets: both listed; disconnect the second from its row.
    await page.goto(`${server.url}/admin-ui/#/sockets/`);
    await page.locator('tr', { hasText: one.id }).waitFor({ timeout: 20_000 });
    const twoId = two.id;
    const row = page.locator('tr', { hasText: twoId });
    await row.locator('button:has(.mdi-logout)').click();
    assert.equal(await waitForDisconnect(two, 20_000), 'io server disconnect');
    // The dashboard drops it (socket_disconnected) and keeps the other.
    await page.goto(`${server.url}/admin-ui/#/sockets/`);
    await page.locator('tr', { hasText: one.id }).waitFor({ timeout: 20_000 });
    await waitUntil(async () => (await page.locator('tr', { hasText: twoId }).count()) === 0, 20_000);
    assert.equal(one.connected, true);
  });
});
