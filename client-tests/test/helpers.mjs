// Test harness for the black-box client tests (no tests in this file).
//
// Which server runs:
//   default            TRESTLE_BIN, or ../target/release/trestle relative to client-tests/
//   SERVER=reference   node $REFERENCE_DIR/server.mjs (REFERENCE_DIR defaults to /tmp/refnode)
// SERVER_LOGS=1 copies the servers' output to stderr.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import jwt from 'jsonwebtoken';
import { io } from 'socket.io-client';

const here = path.dirname(fileURLToPath(import.meta.url));
const clientTestsDir = path.resolve(here, '..');

export const IS_REFERENCE = process.env.SERVER === 'reference';
export const JWT_SECRET = 'client-tests-jwt-secret';
export const API_KEY = 'client-tests-api-key';

// ------------------------------------------------------------------ server process

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function serverCommand() {
  if (IS_REFERENCE) {
    const dir = path.resolve(process.env.REFERENCE_DIR || '/tmp/refnode');
    return { cmd: process.execPath, args: [path.join(dir, 'server.mjs')], cwd: dir };
  }
  const bin = process.env.TRESTLE_BIN
    ? path.resolve(clientTestsDir, process.env.TRESTLE_BIN)
    : path.resolve(clientTestsDir, '../target/release/trestle');
  return { cmd: bin, args: [], cwd: clientTestsDir };
}

const delay = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Starts a server on a free port with the harness env plus `overrides`
 * (a value of undefined or null removes that variable). Resolves once
 * GET /health answers 200. The caller registers `server.stop()` (closes the sockets
 * opened through this server object, SIGTERM, awaits the exit) in an `after` hook.
 */
export async function startServer(overrides = {}, { readyTimeoutMs = 15_000 } = {}) {
  const port = await freePort();
  const env = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    TMPDIR: process.env.TMPDIR,
    LANG: process.env.LANG,
    PORT: String(port),
    HOST: '127.0.0.1',
    JWT_SECRET,
    API_KEY,
    LOG_FORMAT: 'json',
    RUST_LOG: 'warn',
    // Connection state recovery is on by default (README); these tests pin what a lost
    // connection does without it (its user leaves its rooms at once). recovery.test.mjs
    // turns it on, and the README test runs the defaults.
    RECOVERY_MAX_DISCONNECT_MS: '0',
    // Each server keeps its SQLite file (the default store) in a directory of its own.
    DATA_DIR: fs.mkdtempSync(path.join(os.tmpdir(), 'trestle-data-')),
  };
  for (const [k, v] of Object.entries(overrides)) {
    if (v === undefined || v === null) delete env[k];
    else env[k] = String(v);
  }
  for (const k of Object.keys(env)) if (env[k] === undefined) delete env[k];

  const { cmd, args, cwd } = serverCommand();
  const proc = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const keep = (chunk) => {
    output += chunk.toString();
    if (output.length > 200_000) output = output.slice(-100_000);
  };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  if (process.env.SERVER_LOGS) {
    proc.stdout.pipe(process.stderr, { end: false });
    proc.stderr.pipe(process.stderr, { end: false });
  }

  let exitInfo = null;
  const exited = new Promise((resolve) => {
    proc.once('exit', (code, signal) => {
      if (env.DATA_DIR) fs.rmSync(env.DATA_DIR, { recursive: true, force: true });
      exitInfo = { code, signal };
      resolve(exitInfo);
    });
  });
  const spawnError = new Promise((_, reject) => proc.once('error', reject));
  spawnError.catch(() => {});

  const url = `http://127.0.0.1:${port}`;
  const sockets = new Set();
  const server = {
    url,
    port,
    env,
    proc,
    apiKey: env.API_KEY,
    exited,
    get exitInfo() {
      return exitInfo;
    },
    get output() {
      return output;
    },
    track(socket) {
      sockets.add(socket);
      return socket;
    },
    closeSockets() {
      for (const s of sockets) s.close();
      sockets.clear();
    },
    signalled: false,
    /** Sends SIGTERM (a test that checks the shutdown itself uses this). */
    terminate() {
      server.signalled = true;
      proc.kill('SIGTERM');
    },
    /**
     * Closes this server's sockets, SIGTERM, waits for the exit (SIGKILL after `timeoutMs`).
     * Throws if the process had already exited without being asked to (a crash).
     */
    async stop(timeoutMs = 10_000) {
      server.closeSockets();
      if (exitInfo) {
        if (!server.signalled) throw new Error(`server exited unexpectedly (${JSON.stringify(exitInfo)}):\n${output.slice(-5000)}`);
        return exitInfo;
      }
      server.terminate();
      const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
      const info = await exited;
      clearTimeout(timer);
      return info;
    },
  };

  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    if (exitInfo) throw new Error(`server exited early (${JSON.stringify(exitInfo)}):\n${output}`);
    try {
      const res = await Promise.race([fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) }), spawnError]);
      await res.arrayBuffer();
      if (res.status === 200) break;
    } catch (err) {
      if (err?.code === 'ENOENT' || err?.code === 'EACCES') throw new Error(`cannot start ${cmd}: ${err.message}`);
    }
    if (Date.now() > deadline) {
      await server.stop().catch(() => {});
      throw new Error(`server did not answer GET /health within ${readyTimeoutMs} ms:\n${output}`);
    }
    await delay(50); // readiness poll of a process that has no other way to say it is listening
  }
  return server;
}

// ------------------------------------------------------------------ tokens

/**
 * Signs a JWT. HS256 with the harness secret and exp = now + 1h unless overridden.
 * opts: { secret, key, algorithm, expiresIn, noExp, header, ...jsonwebtoken sign options }
 * Claims that carry their own `exp` are signed as they are.
 */
export function signToken(claims = {}, opts = {}) {
  const { secret, key, noExp, expiresIn, ...rest } = opts;
  const signOpts = { algorithm: 'HS256', ...rest };
  if (!noExp && claims.exp === undefined) signOpts.expiresIn = expiresIn ?? '1h';
  return jwt.sign(claims, key ?? secret ?? JWT_SECRET, signOpts);
}

const b64url = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');

/** An unsigned token: header {alg: 'none'}, empty signature. */
export function unsignedToken(claims) {
  const now = Math.floor(Date.now() / 1000);
  return `${b64url({ alg: 'none', typ: 'JWT' })}.${b64url({ iat: now, exp: now + 3600, ...claims })}.`;
}

// ------------------------------------------------------------------ sockets

const DEFAULT_SOCKET_OPTS = {
  forceNew: true, // one engine connection per socket: never multiplex two test sockets
  reconnection: false,
  transports: ['websocket'],
  timeout: 5000,
};

/** Creates a socket without waiting for it to connect. `url` may be a server object. */
export function openSocket(target, opts = {}) {
  const url = typeof target === 'string' ? target : target.url;
  const socket = io(url, { ...DEFAULT_SOCKET_OPTS, ...opts });
  socket.on('disconnect', (reason) => {
    socket.disconnectReason = reason;
  });
  if (typeof target === 'object' && target.track) target.track(socket);
  return socket;
}

/** Resolves when `socket` connects; rejects with the connect_error (its message is the server's text). */
export function whenConnected(socket) {
  if (socket.connected) return Promise.resolve(socket);
  return new Promise((resolve, reject) => {
    const onConnect = () => {
      socket.off('connect_error', onError);
      resolve(socket);
    };
    const onError = (err) => {
      socket.off('connect', onConnect);
      socket.close();
      reject(err);
    };
    socket.once('connect', onConnect);
    socket.once('connect_error', onError);
  });
}

/** A connected socket, or a rejection with the connect_error message. */
export function connect(target, opts = {}) {
  return whenConnected(openSocket(target, opts));
}

/** Connects with `auth.token` signed from `claims`. */
export function connectAs(target, claims, opts = {}) {
  return connect(target, { auth: { token: signToken(claims) }, ...opts });
}

/** Expects the connection to be refused; resolves with the connect_error message. */
export async function connectError(target, opts = {}) {
  try {
    const socket = await connect(target, opts);
    socket.close();
  } catch (err) {
    return err.message;
  }
  assert.fail('expected connect_error, but the socket connected');
}

/** Emits with an acknowledgement; rejects when no ack arrives within 3 s. */
export function emitAck(socket, event, ...args) {
  return socket.timeout(3000).emitWithAck(event, ...args);
}

/** Resolves with the first argument of the next `event` (matching `predicate`), rejects after timeoutMs. */
export function waitFor(socket, event, timeoutMs = 3000, predicate = () => true) {
  return new Promise((resolve, reject) => {
    const handler = (...args) => {
      if (!predicate(...args)) return;
      clearTimeout(timer);
      socket.off(event, handler);
      resolve(args[0]);
    };
    const timer = setTimeout(() => {
      socket.off(event, handler);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for "${event}"`));
    }, timeoutMs);
    socket.on(event, handler);
  });
}

/** Waits for the engine's 'upgrade' event (polling -> websocket). */
export function waitForUpgrade(socket, timeoutMs = 5000) {
  const engine = socket.io.engine;
  if (engine.transport?.name === 'websocket') return Promise.resolve();
  return waitFor(engine, 'upgrade', timeoutMs);
}

/**
 * Proves the absence of `event` during a short window. Use only to prove absence
 * (prefer `record` + `flush`, which needs no window at all).
 */
export function expectNoEvent(socket, event, ms = 300) {
  return new Promise((resolve, reject) => {
    const handler = (...args) => {
      clearTimeout(timer);
      socket.off(event, handler);
      reject(new Error(`unexpected "${event}": ${JSON.stringify(args)}`));
    };
    const timer = setTimeout(() => {
      socket.off(event, handler);
      resolve();
    }, ms);
    socket.on(event, handler);
  });
}

/** Records every `event` received by `socket` (first argument of each) until stop(). */
export function record(socket, event) {
  const events = [];
  const handler = (...args) => events.push(args[0]);
  socket.on(event, handler);
  return {
    events,
    stop() {
      socket.off(event, handler);
    },
  };
}

let markerSeq = 0;
/**
 * Sends a marker event to each socket's own room through POST /api/emit and waits for it.
 * Whatever the server sent to those sockets before the marker has then arrived: after a
 * flush, `record(...).events` tells what was received without any sleep.
 */
export async function flush(server, ...sockets) {
  await Promise.all(
    sockets.map(async (socket) => {
      const nonce = `${process.pid}-${++markerSeq}`;
      const arrived = waitFor(socket, 'flush_marker', 15_000, (d) => d?.nonce === nonce);
      const res = await apiEmitAccepted(server.url, { rooms: [socket.id], event: 'flush_marker', data: { nonce } }, server.apiKey);
      assert.equal(res.status, 202, `flush marker refused: ${res.status} ${JSON.stringify(res.body)}`);
      await arrived;
    }),
  );
}

/** Waits for a 'disconnect' and resolves with its reason. */
export function waitForDisconnect(socket, timeoutMs = 5000) {
  if (socket.disconnectReason !== undefined) return Promise.resolve(socket.disconnectReason);
  return waitFor(socket, 'disconnect', timeoutMs);
}

/** Rejects if `promise` has not settled within `ms`. */
export function withTimeout(promise, ms, what = 'operation') {
  let timer;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
    }),
  ]);
}

/**
 * Resolves once `check()` (sync or async) holds, polling every 20 ms; rejects after `ms`.
 * For state the server shows only on request, such as /metrics counters.
 */
export async function waitUntil(check, ms = 3000) {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`condition not met in ${ms} ms: ${check}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

// ------------------------------------------------------------------ HTTP

/**
 * POST /api/emit. `body` is JSON-encoded unless it is a string or Buffer (sent as is).
 * `key` undefined sends no Authorization header. Resolves { status, body, headers }.
 */
export function apiEmit(base, body, key, requestOpts = {}) {
  const url = typeof base === 'string' ? base : base.url;
  const payload = typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
  const headers = { 'content-type': 'application/json' };
  if (key !== undefined) headers.authorization = `Bearer ${key}`;
  return rawRequest(`${url}/api/emit`, { method: 'POST', headers, body: payload, ...requestOpts });
}

/**
 * POST /api/emit as a publisher should: a 503 (`CLUSTER_UNAVAILABLE`: Redis down, or an
 * instance left a moment ago and the cluster has not settled) is retried after its
 * Retry-After, for at most `withinMs`. Resolves with the last answer.
 */
export async function apiEmitAccepted(base, body, key, { withinMs = 10_000, ...requestOpts } = {}) {
  const deadline = Date.now() + withinMs;
  for (;;) {
    const res = await apiEmit(base, body, key, requestOpts);
    if (res.status !== 503 || Date.now() >= deadline) return res;
    const after = Number(res.headers['retry-after']) || 1;
    await new Promise((r) => setTimeout(r, Math.min(after * 1000, Math.max(0, deadline - Date.now()))));
  }
}

/**
 * A plain node:http request that resolves on the response even when the server answers
 * before reading the whole body (as a 413 may). Resolves { status, headers, text, body, raw }
 * (`body`: the text parsed as JSON, if it is; `raw`: the bytes as received).
 */
export function rawRequest(url, { method = 'GET', headers = {}, body, timeoutMs = 5000, expectContinue = false } = {}) {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.isBuffer(body) ? body : Buffer.from(body);
    const req = http.request(url, {
      method,
      headers: {
        ...headers,
        ...(data ? { 'content-length': data.length } : {}),
        ...(expectContinue ? { expect: '100-continue' } : {}),
        connection: 'close',
      },
      agent: false,
    });
    let responded = false;
    const timer = setTimeout(() => {
      req.destroy(new Error(`${method} ${url} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    req.on('response', (res) => {
      responded = true;
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      const done = () => {
        clearTimeout(timer);
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed;
        try {
          parsed = JSON.parse(text);
        } catch {
          parsed = undefined;
        }
        resolve({ status: res.statusCode, headers: res.headers, text, body: parsed, raw: Buffer.concat(chunks) });
      };
      res.on('end', done);
      res.on('error', done); // the server may close right after a short early answer
    });
    req.on('error', (err) => {
      if (responded) return; // e.g. EPIPE while still writing a body the server refused
      clearTimeout(timer);
      reject(err);
    });
    if (expectContinue) {
      // the body is sent only if the server asks for it with 100 Continue
      req.flushHeaders();
      req.on('continue', () => req.end(data));
    } else if (data) req.end(data);
    else req.end();
  });
}

export const httpGet = (server, p) => rawRequest(`${server.url}${p}`);

/** GET /metrics as { 'name{labels}': value }. */
export async function metrics(server) {
  const res = await httpGet(server, '/metrics');
  assert.equal(res.status, 200);
  const out = {};
  for (const line of res.text.split('\n')) {
    const m = /^([A-Za-z_:][\w:]*(?:\{[^}]*\})?)\s+(\S+)$/.exec(line);
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}

// ------------------------------------------------------------------ assertions

export function assertErrorAck(ack, code) {
  assert.equal(typeof ack, 'object', `ack is not an object: ${JSON.stringify(ack)}`);
  assert.deepEqual(Object.keys(ack).sort(), ['code', 'error', 'success'], `ack shape: ${JSON.stringify(ack)}`);
  assert.equal(ack.success, false);
  assert.equal(typeof ack.error, 'string');
  assert.ok(ack.error.length > 0, 'error message is empty');
  assert.equal(ack.code, code, `expected code ${code}, got ${JSON.stringify(ack)}`);
}

export const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$/;

export const uniq = (prefix = 'u') => `${prefix}${crypto.randomBytes(4).toString('hex')}`;

// ------------------------------------------------------------------ shared by event tests

/** Servers for one test file: `start(env)` starts one, all are stopped in the file's `after`. */
export function serverPool(afterHook) {
  const servers = [];
  afterHook(() => Promise.all(servers.map((s) => s.stop())));
  return {
    async start(env = {}) {
      const s = await startServer(env);
      servers.push(s);
      return s;
    },
  };
}

/** `join_room`, asserting success. */
export async function join(socket, room) {
  const ack = await emitAck(socket, 'join_room', room);
  assert.equal(ack.success, true, `join ${room}: ${JSON.stringify(ack)}`);
}

/** An ISO 8601 UTC string close to now. */
export function assertRecentIso(value, what = 'timestamp') {
  assert.equal(typeof value, 'string', `${what} is not a string: ${JSON.stringify(value)}`);
  assert.match(value, ISO_UTC, `${what} is not ISO 8601 UTC: ${value}`);
  assert.ok(Math.abs(Date.parse(value) - Date.now()) < 60_000, `${what} is not close to now: ${value}`);
}

/** Opens a socket that records `events` from before its CONNECT; resolves once queued offline
 * messages have arrived (they precede the ack of the socket's first event, section 10). */
export async function connectRecording(server, claims, events) {
  const s = openSocket(server, { auth: { token: signToken(claims) } });
  const recs = Object.fromEntries(events.map((e) => [e, record(s, e)]));
  await whenConnected(s);
  // Any event serves as the barrier; joining one's own presence room changes nothing.
  const barrier = await emitAck(s, 'join_room', `presence:${claims.userId}`);
  assert.equal(barrier.success, true, JSON.stringify(barrier));
  return { s, recs };
}
