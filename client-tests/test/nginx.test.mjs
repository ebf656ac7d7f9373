// docker/nginx.conf in front of a two-instance cluster: the load balancer of the compose
// deployment, run here with its upstream servers, listen address and file paths rewritten
// (see renderConfig). Every socket and HTTP request below goes through nginx.
//
// Needs nginx (scripts/test.sh installs it through apt): /usr/sbin/nginx, or nginx on PATH.
//
// Which instance a socket reached, and which client address Trestle saw, come from the
// instances' own debug log line "connecting" (sid, ip): RUST_LOG enables it below.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import {
  API_KEY,
  apiEmit,
  apiEmitAccepted,
  emitAck,
  flush,
  freePort,
  openSocket,
  rawRequest,
  record,
  signToken,
  uniq,
  waitFor,
  waitForDisconnect,
  whenConnected,
} from './helpers.mjs';
import { startCluster } from './services.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
// NGINX_CONF: another config to test the same way (default: the one compose.yaml mounts).
const CONF_TEMPLATE = path.resolve(process.env.NGINX_CONF || path.join(here, '../../docker/nginx.conf'));

// ------------------------------------------------------------------ nginx process

function findNginx() {
  const candidates = ['/usr/sbin/nginx', ...(process.env.PATH || '').split(path.delimiter).filter(Boolean).map((d) => path.join(d, 'nginx'))];
  for (const c of candidates) {
    try {
      fs.accessSync(c, fs.constants.X_OK);
      return c;
    } catch {
      // next candidate
    }
  }
  throw new Error('nginx is not installed (looked for /usr/sbin/nginx and nginx on PATH): apt-get install nginx, or run scripts/test.sh, which installs it');
}

/**
 * docker/nginx.conf with the upstream servers replaced by `upstreams`, the listen port by
 * `listen`, and every file nginx writes moved into `dir`. Throws when a directive it has to
 * rewrite is missing, so that a reshaped nginx.conf fails here rather than running as
 * something else.
 */
function renderConfig(template, { upstreams, listen, dir }) {
  let conf = template;
  const servers = /^([ \t]*)server\s+trestle1:3001\b[^;]*;[ \t]*\n(?:[ \t]*server\s+trestle\d+:3001\b[^;]*;[ \t]*\n)*/m;
  assert.match(conf, servers, 'nginx.conf: no "server trestle1:3001;" lines in the upstream');
  conf = conf.replace(servers, (_, indent) => upstreams.map((u) => `${indent}server ${u};\n`).join(''));
  assert.doesNotMatch(conf, /server\s+trestle\d+:/, 'nginx.conf: upstream servers left after the rewrite');

  const listenRe = /^([ \t]*)listen\s+8080\s*;/m;
  assert.match(conf, listenRe, 'nginx.conf: no "listen 8080;"');
  conf = conf.replace(listenRe, `$1listen ${listen};`);

  const files = {
    pid: 'nginx.pid',
    error_log: 'error.log',
    access_log: 'access.log',
    client_body_temp_path: 'client_temp',
    proxy_temp_path: 'proxy_temp',
    fastcgi_temp_path: 'fastcgi_temp',
    uwsgi_temp_path: 'uwsgi_temp',
    scgi_temp_path: 'scgi_temp',
  };
  for (const [directive, file] of Object.entries(files)) {
    const re = new RegExp(`^([ \\t]*${directive}[ \\t]+)\\S+?([ \\t][^;]*)?;`, 'gm');
    assert.match(conf, re, `nginx.conf: no ${directive} directive to point into the temp dir`);
    conf = conf.replace(re, (_, head, rest = '') => `${head}${path.join(dir, file)}${rest};`);
  }
  // Any other absolute path would be one this rewrite does not know about.
  const leftover = conf
    .split('\n')
    .filter((l) => !l.trim().startsWith('#'))
    .find((l) => / \/(?:var|etc|run|usr|tmp)\//.test(l) && !l.includes(dir));
  assert.equal(leftover, undefined, `nginx.conf: a path the test does not rewrite: ${leftover}`);
  return conf;
}

/** Starts nginx on `conf` (a rendered config) in `dir`; resolves once GET /health answers 200 through it. */
async function startNginx(bin, conf, dir, url) {
  const confPath = path.join(dir, 'nginx.conf');
  fs.writeFileSync(confPath, conf);
  // -e: the error log used before the config is read (some builds default to /var/log).
  const proc = spawn(bin, ['-c', confPath, '-p', `${dir}/`, '-e', path.join(dir, 'error.log'), '-g', 'daemon off;'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  proc.stdout.on('data', (c) => (output += c));
  proc.stderr.on('data', (c) => (output += c));
  let exitInfo = null;
  const exited = new Promise((resolve) =>
    proc.once('exit', (code, signal) => {
      exitInfo = { code, signal };
      resolve(exitInfo);
    }),
  );
  const spawnError = new Promise((_, reject) => proc.once('error', reject));
  spawnError.catch(() => {});
  const errorLog = () => {
    try {
      return fs.readFileSync(path.join(dir, 'error.log'), 'utf8');
    } catch {
      return '';
    }
  };
  const nginx = {
    proc,
    get output() {
      return `${output}${errorLog()}`;
    },
    async stop() {
      if (exitInfo) return exitInfo;
      proc.kill('SIGQUIT'); // graceful: finish the requests in flight
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
      const info = await exited;
      clearTimeout(timer);
      return info;
    },
  };
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (exitInfo) throw new Error(`nginx exited (${JSON.stringify(exitInfo)}):\n${nginx.output}`);
    try {
      const res = await Promise.race([rawRequest(`${url}/health`, { timeoutMs: 1000 }), spawnError]);
      if (res.status === 200) break;
    } catch (err) {
      if (err?.code === 'ENOENT' || err?.code === 'EACCES') throw new Error(`cannot start ${bin}: ${err.message}`);
    }
    if (Date.now() > deadline) {
      await nginx.stop();
      throw new Error(`GET /health through nginx did not answer 200 within 10 s:\n${nginx.output}`);
    }
    await new Promise((r) => setTimeout(r, 50)); // readiness poll: nginx has no other way to say it listens
  }
  return nginx;
}

// ------------------------------------------------------------------ reading nginx.conf

/**
 * The value of `name` that applies inside `location <path>` of the (only) server: the
 * innermost of location, server and http level, or undefined when none sets it.
 */
function effectiveDirective(conf, locationPath, name) {
  const found = new Map(); // block path joined by ' > ' -> value
  const stack = [];
  for (const raw of conf.split('\n')) {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) continue;
    const open = line.match(/^(.*?)\s*\{$/);
    if (open) {
      stack.push(open[1].replace(/\s+/g, ' '));
      continue;
    }
    if (line === '}') {
      stack.pop();
      continue;
    }
    const m = line.match(/^(\S+)\s+(.*?);$/);
    if (m && m[1] === name) found.set(stack.join(' > '), m[2]);
  }
  for (const scope of [`http > server > location ${locationPath}`, 'http > server', 'http']) {
    if (found.has(scope)) return found.get(scope);
  }
  return undefined;
}

/** nginx time ("100s", "2m", "1m30s", "90") in milliseconds. */
function nginxMs(value) {
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
  const parts = [...value.matchAll(/(\d+)(ms|s|m|h|d)?/g)];
  assert.ok(parts.length > 0 && parts.map((p) => p[0]).join('') === value, `not an nginx time: ${value}`);
  return parts.reduce((sum, [, n, u]) => sum + Number(n) * unit[u ?? 's'], 0);
}

/** nginx size ("2m", "512k", "1000000") in bytes. */
function nginxBytes(value) {
  const m = value.match(/^(\d+)([kKmMgG])?$/);
  assert.ok(m, `not an nginx size: ${value}`);
  const unit = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };
  return Number(m[1]) * unit[(m[2] ?? '').toLowerCase()];
}

// ------------------------------------------------------------------ instance logs

function logLines(instance) {
  const lines = [];
  for (const line of instance.output.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      lines.push(JSON.parse(line));
    } catch {
      // a line cut by the harness's output cap
    }
  }
  return lines;
}

/**
 * Which instance `socket` reached and the client address Trestle saw, from the
 * "connecting" debug line (written before the connection is acknowledged, but through a
 * pipe: this waits for the pipe's data events rather than for time).
 */
function whereIs(instances, socket, timeoutMs = 3000) {
  const sid = socket.id;
  assert.ok(sid, 'the socket is not connected');
  const find = () => {
    for (const [index, instance] of instances.entries()) {
      const line = logLines(instance).find((l) => l.fields?.message === 'connecting' && l.fields?.sid === sid);
      if (line) return { index, ip: line.fields.ip };
    }
    return null;
  };
  const now = find();
  if (now) return Promise.resolve(now);
  return new Promise((resolve, reject) => {
    const streams = instances.flatMap((i) => [i.proc.stdout, i.proc.stderr]);
    const done = (fn, value) => {
      clearTimeout(timer);
      for (const s of streams) s.off('data', onData);
      fn(value);
    };
    const onData = () => {
      const found = find();
      if (found) done(resolve, found);
    };
    const timer = setTimeout(
      () => done(reject, new Error(`no "connecting" log line for sid ${sid} on any instance within ${timeoutMs} ms`)),
      timeoutMs,
    );
    // registered after the harness's own listener, which appends the chunk to `output` first
    for (const s of streams) s.on('data', onData);
  });
}

// ------------------------------------------------------------------ tests

describe('Trestle behind docker/nginx.conf (two instances, one Redis)', () => {
  let cluster;
  let nginx;
  let dir;
  let lb; // http://127.0.0.1:<nginx port>
  const sockets = new Set();
  const agents = new Set();

  /** A socket to nginx (not yet connected), closed in `after`. */
  function open(claims, opts = {}) {
    const socket = openSocket(lb, { auth: { token: signToken(claims) }, ...opts });
    sockets.add(socket);
    return socket;
  }

  const connectVia = (claims, opts) => whenConnected(open(claims, opts));

  /** Options that make a client connect from `address` (any 127/8 address is local on Linux). */
  function fromAddress(address) {
    const agent = new http.Agent({ localAddress: address });
    agents.add(agent);
    return { agent, localAddress: address };
  }

  const lbServer = () => ({ url: lb, apiKey: API_KEY }); // for helpers' flush()

  before(async () => {
    const bin = findNginx();
    cluster = await startCluster(2, { TRUST_PROXY: 'true', RUST_LOG: 'warn,trestle::connection=debug' });
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trestle-nginx-'));
    // As root, nginx's workers run as an unprivileged user (the build's default): they
    // must be able to enter the directory to use the temp paths nginx creates for them.
    if (process.getuid?.() === 0) fs.chmodSync(dir, 0o755);
    const port = await freePort();
    lb = `http://127.0.0.1:${port}`;
    const conf = renderConfig(fs.readFileSync(CONF_TEMPLATE, 'utf8'), {
      upstreams: cluster.instances.map((i) => `127.0.0.1:${i.port}`),
      listen: `127.0.0.1:${port}`,
      dir,
    });
    nginx = await startNginx(bin, conf, dir, lb);
  });

  after(async () => {
    for (const s of sockets) s.close();
    for (const a of agents) a.destroy();
    await nginx?.stop();
    await cluster?.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  test('GET /health and /ready through nginx answer 200; other paths 404', async () => {
    const health = await rawRequest(`${lb}/health`);
    assert.equal(health.status, 200);
    assert.deepEqual(health.body, { status: 'ok' });
    assert.equal(health.headers.server, 'nginx', 'the answer came through nginx');
    const ready = await rawRequest(`${lb}/ready`);
    assert.equal(ready.status, 200, ready.text);
    assert.deepEqual(ready.body, { status: 'ready' });
    const metrics = await rawRequest(`${lb}/metrics`);
    assert.equal(metrics.status, 200);
    assert.match(metrics.text, /trestle_connected_sockets/);
    assert.equal((await rawRequest(`${lb}/nope`)).status, 404);
  });

  test('nginx timeouts and body size fit the engine settings Trestle announces', async () => {
    // The engine.io handshake through nginx (no Socket.IO connect, so no token needed).
    const res = await rawRequest(`${lb}/socket.io/?EIO=4&transport=polling`);
    assert.equal(res.status, 200, res.text);
    assert.equal(res.text[0], '0', `not an engine.io open packet: ${res.text.slice(0, 200)}`);
    const { pingInterval, pingTimeout, maxPayload } = JSON.parse(res.text.slice(1));
    const conf = fs.readFileSync(CONF_TEMPLATE, 'utf8');
    // A quiet connection may legitimately go pingInterval + pingTimeout without a byte.
    for (const name of ['proxy_read_timeout', 'proxy_send_timeout']) {
      const value = effectiveDirective(conf, '/socket.io/', name) ?? '60s'; // nginx's default
      assert.ok(nginxMs(value) > pingInterval + pingTimeout, `${name} ${value} is not above ${pingInterval} + ${pingTimeout} ms`);
    }
    const bodyMax = effectiveDirective(conf, '/socket.io/', 'client_max_body_size') ?? '1m';
    assert.ok(nginxBytes(bodyMax) >= maxPayload, `client_max_body_size ${bodyMax} is under maxPayload ${maxPayload}`);
    assert.equal(effectiveDirective(conf, '/socket.io/', 'proxy_buffering'), 'off');
  });

  test('a polling-only client and an upgraded client: room acks, broadcast_room both ways, POST /api/emit', async () => {
    const p = uniq('p');
    const claims = (who) => ({ userId: uniq(who), projects: [p], permissions: ['room_broadcast'] });
    const poller = open(claims('poll'), { transports: ['polling'] });
    const upgrader = open(claims('up'), { transports: ['polling', 'websocket'], upgrade: true });
    assert.equal(upgrader.io.engine.transport.name, 'polling', 'the upgrader starts on polling');
    const upgraded = waitFor(upgrader.io.engine, 'upgrade', 10_000);
    await Promise.all([whenConnected(poller), whenConnected(upgrader)]);
    assert.equal((await upgraded).name, 'websocket');
    assert.equal(upgrader.io.engine.transport.name, 'websocket');

    const room = `project:${p}:comments`;
    assert.deepEqual(await emitAck(poller, 'join_room', room), { success: true, room, size: 1 });
    assert.deepEqual(await emitAck(upgrader, 'join_room', room), { success: true, room, size: 2 });

    // poller -> upgrader
    const ownEcho = record(poller, 'markup_moved');
    let got = waitFor(upgrader, 'markup_moved');
    assert.deepEqual(await emitAck(poller, 'broadcast_room', room, 'markup_moved', { x: 1 }), { success: true });
    assert.deepEqual(await got, { x: 1 });
    // upgrader -> poller
    got = waitFor(poller, 'markup_moved');
    assert.deepEqual(await emitAck(upgrader, 'broadcast_room', { room, event: 'markup_moved', data: { x: 2 } }), { success: true });
    assert.deepEqual(await got, { x: 2 });
    await flush(lbServer(), poller);
    ownEcho.stop();
    assert.deepEqual(ownEcho.events, [{ x: 2 }], 'the sender does not get its own broadcast');

    // POST /api/emit through nginx reaches both
    const both = [waitFor(poller, 'resource_updated'), waitFor(upgrader, 'resource_updated')];
    const res = await apiEmit(lb, { rooms: [`project:${p}`], event: 'resource_updated', data: { id: 7 } }, API_KEY);
    assert.equal(res.status, 202, res.text);
    assert.deepEqual(await Promise.all(both), [{ id: 7 }, { id: 7 }]);

    assert.equal(poller.io.engine.transport.name, 'polling', 'the polling-only client never upgraded');
    assert.ok(poller.connected && upgrader.connected);
    poller.close();
    upgrader.close();
  });

  test('several polling clients at once keep their sessions (every request reaches the same instance)', async () => {
    const p = uniq('p');
    const n = 8;
    const clients = await Promise.all(
      Array.from({ length: n }, (_, i) => connectVia({ userId: uniq(`m${i}`), projects: [p] }, { transports: ['polling'] })),
    );
    // Interleaved round trips: each is a POST and a long-poll GET that must reach the
    // instance holding that session; one request elsewhere would end the session
    // ("Session ID unknown").
    const room = `project:${p}:activity`;
    await Promise.all(
      clients.map(async (c) => {
        for (let round = 0; round < 5; round++) {
          assert.equal((await emitAck(c, 'join_room', room)).success, true);
          assert.deepEqual(await emitAck(c, 'leave_room', room), { success: true, room });
        }
      }),
    );
    const all = clients.map((c) => waitFor(c, 'resource_updated'));
    assert.equal((await apiEmit(lb, { rooms: [`project:${p}`], event: 'resource_updated', data: 'all' }, API_KEY)).status, 202);
    assert.deepEqual(await Promise.all(all), Array(n).fill('all'));
    for (const c of clients) {
      assert.ok(c.connected, `client ${c.id} lost its session (${c.disconnectReason})`);
      assert.equal(c.io.engine.transport.name, 'polling');
    }
    // One client address: the hash sends every one of them to the same instance.
    const where = await Promise.all(clients.map((c) => whereIs(cluster.instances, c)));
    assert.equal(new Set(where.map((w) => w.index)).size, 1, `spread over instances: ${JSON.stringify(where)}`);
    for (const c of clients) c.close();
  });

  test('a websocket-only client', async () => {
    const p = uniq('p');
    const s = await connectVia({ userId: uniq('ws'), projects: [p] }, { transports: ['websocket'] });
    assert.equal(s.io.engine.transport.name, 'websocket');
    assert.deepEqual(await emitAck(s, 'join_room', `project:${p}:comments`), { success: true, room: `project:${p}:comments`, size: 1 });
    const got = waitFor(s, 'resource_updated');
    assert.equal((await apiEmit(lb, { rooms: [`project:${p}`], event: 'resource_updated', data: 1 }, API_KEY)).status, 202);
    assert.equal(await got, 1);
    s.close();
  });

  test('clients from two addresses land on different instances and reach each other through Redis; Trestle sees each address', async () => {
    // Find a client address hashed to each instance.
    const byInstance = new Map(); // instance index -> address
    for (let x = 2; x < 64 && byInstance.size < cluster.instances.length; x++) {
      const address = `127.0.0.${x}`;
      const probe = await connectVia({ userId: uniq('probe') }, { transports: ['websocket'], ...fromAddress(address) });
      const { index, ip } = await whereIs(cluster.instances, probe);
      assert.equal(ip, address, 'with TRUST_PROXY, Trestle takes the client address from the X-Forwarded-For nginx set');
      if (!byInstance.has(index)) byInstance.set(index, address);
      probe.close();
    }
    assert.equal(byInstance.size, 2, `every address from 127.0.0.2 to 127.0.0.63 hashed to one instance: ${JSON.stringify([...byInstance])}`);

    const p = uniq('p');
    const claims = (who) => ({ userId: uniq(who), projects: [p], permissions: ['room_broadcast'] });
    const [a, b] = await Promise.all(
      [0, 1].map((i) => connectVia(claims(`c${i}`), { transports: ['polling'], ...fromAddress(byInstance.get(i)) })),
    );
    // Each polling session stays on the instance its address hashes to.
    assert.deepEqual(await whereIs(cluster.instances, a), { index: 0, ip: byInstance.get(0) });
    assert.deepEqual(await whereIs(cluster.instances, b), { index: 1, ip: byInstance.get(1) });

    const room = `project:${p}:comments`;
    assert.deepEqual(await emitAck(a, 'join_room', room), { success: true, room, size: 1 });
    assert.deepEqual(await emitAck(b, 'join_room', room), { success: true, room, size: 2 }, 'the room size is cluster-wide');
    let got = waitFor(b, 'markup_moved');
    assert.deepEqual(await emitAck(a, 'broadcast_room', room, 'markup_moved', { from: 'a' }), { success: true });
    assert.deepEqual(await got, { from: 'a' });
    got = waitFor(a, 'markup_moved');
    assert.deepEqual(await emitAck(b, 'broadcast_room', room, 'markup_moved', { from: 'b' }), { success: true });
    assert.deepEqual(await got, { from: 'b' });

    const both = [waitFor(a, 'resource_updated'), waitFor(b, 'resource_updated')];
    assert.equal((await apiEmit(lb, { rooms: [`project:${p}`], event: 'resource_updated', data: 'x' }, API_KEY)).status, 202);
    assert.deepEqual(await Promise.all(both), ['x', 'x']);
    assert.ok(a.connected && b.connected);
    a.close();
    b.close();
  });

  test('a client cannot pick its address with its own X-Forwarded-For', async () => {
    const s = await connectVia(
      { userId: uniq('forger') },
      { transports: ['polling'], extraHeaders: { 'x-forwarded-for': '203.0.113.9' } },
    );
    // nginx appends the real peer; Trestle reads the last entry.
    assert.equal((await whereIs(cluster.instances, s)).ip, '127.0.0.1');
    s.close();
  });

  test('a token in the query string does not reach the access log', async () => {
    const token = signToken({ userId: uniq('q') });
    const s = openSocket(lb, { transports: ['polling'], query: { token } });
    sockets.add(s);
    await whenConnected(s);
    assert.equal((await emitAck(s, 'join_room', 'project:none')).success, false); // a round trip or two more
    s.close();
    const log = fs.readFileSync(path.join(dir, 'access.log'), 'utf8');
    assert.match(log, /"GET \/socket\.io\/ HTTP\/1\.1"/, 'the access log records Socket.IO requests');
    assert.ok(!log.includes(token), 'the token is in the access log');
    assert.ok(!log.includes('EIO='), 'the query string is in the access log');
  });

  test('large bodies: 900 kB over polling and 1,000,000 bytes to /api/emit get through; /api/emit over that gets 413', async () => {
    const p = uniq('p');
    const claims = (who) => ({ userId: uniq(who), projects: [p], permissions: ['room_broadcast'] });
    const sender = await connectVia(claims('big'), { transports: ['polling'] });
    const receiver = await connectVia(claims('rcv'), { transports: ['polling'] });
    const big = 'x'.repeat(900_000); // over nginx's in-memory body buffer: goes through client_body_temp_path
    let got = waitFor(receiver, 'markup_moved', 10_000);
    assert.deepEqual(await emitAck(sender, 'broadcast_room', `project:${p}`, 'markup_moved', { big }), { success: true });
    assert.equal((await got).big.length, big.length);

    // /api/emit: a body of exactly Trestle's cap passes nginx ...
    const frame = JSON.stringify({ rooms: [`project:${p}`], event: 'resource_updated', data: '' });
    const emitBody = (size) => frame.replace('"data":""', `"data":"${'y'.repeat(size - frame.length)}"`); // `size` bytes
    got = waitFor(receiver, 'resource_updated', 10_000);
    const ok = await apiEmit(lb, emitBody(1_000_000), API_KEY, { timeoutMs: 10_000 });
    assert.equal(ok.status, 202, `${ok.text}\n${nginx.output.slice(-3000)}`);
    assert.equal((await got).length, 1_000_000 - frame.length);
    // ... and one byte more gets a 413 with Trestle's JSON body, every time: not a 502 from
    // a connection Trestle closed while nginx was still sending the body.
    for (const size of [1_000_001, 1_500_000, 1_999_000, 1_500_000, 1_999_000]) {
      const res = await apiEmit(lb, emitBody(size), API_KEY, { timeoutMs: 10_000 });
      assert.equal(res.status, 413, `${size} bytes: ${res.text}\n${nginx.output.slice(-3000)}`);
      assert.deepEqual(res.body, { error: 'Body too large' });
    }
    assert.ok(sender.connected && receiver.connected);
    sender.close();
    receiver.close();
  });

  test('a polling message over MAX_MESSAGE_BYTES ends its own session only, and leaves its instance in rotation', async () => {
    const p = uniq('p');
    const bystander = await connectVia({ userId: uniq('by'), projects: [p] }, { transports: ['polling'] });
    const sender = await connectVia({ userId: uniq('huge') }, { transports: ['polling'] });
    const home = (await whereIs(cluster.instances, bystander)).index;
    assert.equal((await whereIs(cluster.instances, sender)).index, home, 'one client address, one instance');
    sender.emit('join_room', 'z'.repeat(1_900_000));
    const reason = await waitForDisconnect(sender, 10_000);
    assert.notEqual(reason, 'io client disconnect');
    assert.equal(sender.connected, false);
    // The bystander's session is untouched: each round trip is new connections to nginx,
    // spread over its workers, and each must still reach the bystander's instance.
    for (let i = 0; i < 10; i++) {
      assert.deepEqual(await emitAck(bystander, 'join_room', `project:${p}:comments`), { success: true, room: `project:${p}:comments`, size: 1 });
    }
    assert.ok(bystander.connected, `the bystander lost its session (${bystander.disconnectReason})`);
    assert.doesNotMatch(nginx.output, /temporarily disabled|no live upstreams/, 'nginx took an instance out of rotation');
    bystander.close();
  });

  // Last: it stops one of the two instances.
  test('an instance stops: its clients get server_shutdown and reconnect through nginx to the other one', async () => {
    const p = uniq('p');
    const s = open({ userId: uniq('fo'), projects: [p] }, { transports: ['polling', 'websocket'], reconnection: true });
    const upgraded = waitFor(s.io.engine, 'upgrade', 10_000);
    await whenConnected(s);
    // Not while the upgrade is under way: a SIGTERM then can lose server_shutdown (Trestle's
    // behaviour with or without nginx, not what this test is about).
    await upgraded;
    const first = await whereIs(cluster.instances, s);
    const doomed = cluster.instances[first.index];
    const notice = waitFor(s, 'server_shutdown', 5000);
    const reconnected = waitFor(s, 'connect', 15_000); // the Socket.IO connect, after the manager's reconnect
    doomed.terminate();
    assert.equal((await notice).message, 'Server is shutting down');
    await reconnected.catch((err) => assert.fail(`${err.message}\nnginx:\n${nginx.output.slice(-3000)}`));
    const second = await whereIs(cluster.instances, s);
    assert.notEqual(second.index, first.index, 'the client reconnected to the stopped instance');
    assert.equal(second.ip, '127.0.0.1');
    // and the new session works, polling requests included
    assert.deepEqual(await emitAck(s, 'join_room', `project:${p}:comments`), { success: true, room: `project:${p}:comments`, size: 1 });
    const got = waitFor(s, 'resource_updated');
    // The stopped instance has left the cluster: for a few seconds /api/emit may answer
    // 503 until the others settle, and a publisher retries (docs/events.md).
    assert.equal((await apiEmitAccepted(lb, { rooms: [`project:${p}`], event: 'resource_updated', data: 'after' }, API_KEY)).status, 202);
    assert.equal(await got, 'after');
    assert.equal((await doomed.exited).code, 0);
    s.close();
  });
});
