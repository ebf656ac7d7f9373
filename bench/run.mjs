#!/usr/bin/env node
// Trestle vs the Node reference server, one server at a time, same load, same machine.
// Usage: node run.mjs [--quick] [--conns N] [--clients C] [--duration D] [--receivers M]
//                     [--emits K] [--only trestle|node] [--unique-users] [--keep-logs] [--json FILE]
//                     [--recovery-compare] [--keep-events E] [--repeat R]
// See README.md for what each figure means.
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import jwt from 'jsonwebtoken';
import { io as ioClient } from 'socket.io-client';
import WebSocket from 'ws';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const MAIN = path.resolve(HERE, '..');
const HOST = '127.0.0.1'; // all traffic stays on loopback

// ------------------------------------------------------------------ options

const HELP = `Usage: node run.mjs [options]
  --quick              small run: --conns 500 --clients 20 --duration 5 --receivers 200 --emits 100
  --conns N            idle websocket connections for the memory figure (default 2000)
  --batch B            connections opened at once (default 100)
  --settle S           seconds to wait, idle, before reading RSS (default 2)
  --clients C          socket.io-client clients doing join_room round trips (default 50)
  --duration D         seconds of round trips, after --warmup (default 10)
  --warmup W           seconds of round trips before measuring (default 1)
  --receivers M        raw websocket receivers of the fan-out (default 500)
  --emits K            POST /api/emit requests of the fan-out (default 200)
  --only NAME          run one server only: trestle or node
  --phases LIST        comma-separated subset of idle,rtt,fanout,keep (default idle,rtt,fanout;
                       with --recovery-compare idle,fanout,keep)
  --recovery-compare   connection state recovery on and off: Trestle with RECOVERY_MAX_DISCONNECT_MS
                       120000 and 0, the Node server without and with connectionStateRecovery
  --keep-events E      POSTs of the keep phase (default 20000)
  --repeat R           run every server R times, interleaved, and report medians (default 1)
  --node-gc            before each RSS reading, have the Node server run a full garbage collection
  --unique-users       a distinct userId per connection (default: every connection is the same user; see README)
  --trestle-bin PATH   default <repo>/target/release/trestle
  --ref-src DIR        reference server source (default /work/shared/reference-node)
  --ref-dir DIR        where it is copied and installed (default /tmp/refnode)
  --keep-logs          keep the servers' logs (their directory is printed)
  --json FILE          also write the results as JSON
`;

const PHASES = ['idle', 'rtt', 'fanout', 'keep'];

function parseArgs(argv) {
  const o = {
    conns: 2000, batch: 100, settle: 2, clients: 50, duration: 10, warmup: 1, receivers: 500, emits: 200,
    only: null, phases: ['idle', 'rtt', 'fanout'], uniqueUsers: false, keepLogs: false, json: null, quick: false,
    recoveryCompare: false, keepEvents: 20000, repeat: 1, nodeGc: false,
    trestleBin: path.join(MAIN, 'target/release/trestle'),
    refSrc: '/work/shared/reference-node', refDir: '/tmp/refnode',
  };
  const num = (name, v) => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} needs a positive number, got ${v}`);
    return n;
  };
  const explicit = new Set();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    switch (a) {
      case '-h': case '--help': process.stdout.write(HELP); process.exit(0); break;
      case '--quick': o.quick = true; break;
      case '--conns': o.conns = Math.floor(num(a, next())); explicit.add('conns'); break;
      case '--batch': o.batch = Math.floor(num(a, next())); break;
      case '--settle': o.settle = num(a, next()); break;
      case '--clients': o.clients = Math.floor(num(a, next())); explicit.add('clients'); break;
      case '--duration': o.duration = num(a, next()); explicit.add('duration'); break;
      case '--warmup': o.warmup = Number(next()); break;
      case '--receivers': o.receivers = Math.floor(num(a, next())); explicit.add('receivers'); break;
      case '--emits': o.emits = Math.floor(num(a, next())); explicit.add('emits'); break;
      case '--only': o.only = next(); break;
      case '--phases': o.phases = next().split(',').map((x) => x.trim()).filter(Boolean); explicit.add('phases'); break;
      case '--recovery-compare': o.recoveryCompare = true; break;
      case '--keep-events': o.keepEvents = Math.floor(num(a, next())); break;
      case '--repeat': o.repeat = Math.floor(num(a, next())); break;
      case '--node-gc': o.nodeGc = true; break;
      case '--unique-users': o.uniqueUsers = true; break;
      case '--trestle-bin': o.trestleBin = path.resolve(next()); break;
      case '--ref-src': o.refSrc = path.resolve(next()); break;
      case '--ref-dir': o.refDir = path.resolve(next()); break;
      case '--keep-logs': o.keepLogs = true; break;
      case '--json': o.json = path.resolve(next()); break;
      default: throw new Error(`unknown option ${a} (try --help)`);
    }
  }
  if (o.quick) {
    const q = { conns: 500, clients: 20, duration: 5, receivers: 200, emits: 100 };
    for (const [k, v] of Object.entries(q)) if (!explicit.has(k)) o[k] = v;
  }
  // Recovery changes broadcasts and sockets, not request round trips: rtt is left out unless asked for.
  if (o.recoveryCompare && !explicit.has('phases')) o.phases = ['idle', 'fanout', 'keep'];
  if (o.only && !['trestle', 'node'].includes(o.only)) throw new Error('--only takes trestle or node');
  if (!o.phases.length || o.phases.some((p) => !PHASES.includes(p))) throw new Error(`--phases takes ${PHASES.join(', ')}`);
  if (!(o.warmup >= 0)) throw new Error('--warmup must be >= 0');
  return o;
}

// ------------------------------------------------------------------ small helpers

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Resolves with the promise's value, or with onTimeout after ms; the timer never outlives it.
function within(promise, ms, onTimeout) {
  let timer;
  const t = new Promise((r) => (timer = setTimeout(() => r(onTimeout), ms)));
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}
const now = () => performance.now();
const log = (...a) => console.error('[bench]', ...a); // progress on stderr, results on stdout

let CLK_TCK = 100;
try {
  CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
} catch {
  /* 100 Hz is the Linux default */
}

// The server's RSS. With --node-gc, the Node server first runs a full garbage collection,
// and srv.heapKb is its live JS heap after it (NaN otherwise).
async function readRss(srv) {
  srv.heapKb = NaN;
  if (srv.gcOnSignal && !srv.exited) {
    const asked = Date.now();
    process.kill(srv.pid, 'SIGUSR2');
    for (let i = 0; i < 40; i++) {
      await sleep(50);
      try {
        const m = JSON.parse(fs.readFileSync(srv.heapFile, 'utf8'));
        if (m.at >= asked) {
          srv.heapKb = (m.heapUsed + m.external) / 1024;
          break;
        }
      } catch {
        /* not written yet */
      }
    }
    await sleep(200); // let the collector's unmapping show in RSS
  }
  return rssKb(srv.pid);
}

function rssKb(pid) {
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

// utime + stime of the whole process (all threads), in seconds.
function cpuSec(pid) {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // f[0] is field 3 (state)
  return (Number(f[11]) + Number(f[12])) / CLK_TCK; // fields 14 and 15
}

// Busy CPU seconds of the whole machine (all cores), from /proc/stat.
function machineCpuSec() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal: everything but idle and iowait
  return (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] || 0)) / CLK_TCK;
}

// CPU seconds of this load-generator process.
function selfCpuSec() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on('error', reject);
    s.listen(0, HOST, () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

function sha256File(file) {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

// ------------------------------------------------------------------ servers

const SECRET = crypto.randomBytes(24).toString('hex');
const API_KEY = crypto.randomBytes(24).toString('hex');

function tokenFor(userId) {
  return jwt.sign({ userId, projects: [1] }, SECRET, { algorithm: 'HS256', expiresIn: '2h' }); // adds exp
}

const SHARED_TOKEN = tokenFor('bench-user');
let userSeq = 0;
function nextToken(opts) {
  return opts.uniqueUsers ? tokenFor(`bench-${++userSeq}`) : SHARED_TOKEN;
}

// Copies the reference server out of the read-only share and installs it (once per lockfile).
function prepareReference(opts) {
  if (!fs.existsSync(path.join(opts.refSrc, 'server.mjs'))) throw new Error(`no reference server in ${opts.refSrc}`);
  fs.mkdirSync(opts.refDir, { recursive: true });
  fs.cpSync(opts.refSrc, opts.refDir, {
    recursive: true,
    force: true,
    filter: (src) => !src.split(path.sep).includes('node_modules'),
  });
  const lockSha = sha256File(path.join(opts.refDir, 'package-lock.json'));
  const stamp = path.join(opts.refDir, '.bench-installed');
  const installed = fs.existsSync(path.join(opts.refDir, 'node_modules/socket.io')) && fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === lockSha;
  if (!installed) {
    log(`npm ci in ${opts.refDir}`);
    execFileSync('npm', ['ci', '--no-audit', '--no-fund', '--loglevel=error'], { cwd: opts.refDir, stdio: ['ignore', 'ignore', 'inherit'] });
    fs.writeFileSync(stamp, lockSha);
  }
}

function prepareTrestle(opts) {
  if (fs.existsSync(opts.trestleBin)) return;
  log('release binary missing: cargo build --release');
  execFileSync('cargo', ['build', '--release'], { cwd: MAIN, stdio: ['ignore', 'inherit', 'inherit'] });
  if (!fs.existsSync(opts.trestleBin)) throw new Error(`still no ${opts.trestleBin}`);
}

const children = new Set(); // every server process we started, for clean-up
let serverSeq = 0; // numbers the log files when a server runs more than once

function killAll() {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
}
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    log(`${sig}: stopping`);
    killAll();
    process.exit(130);
  });
}

// The servers to run. A variant is one server with one configuration: `kind` says which
// binary, `env` is added to its environment, `nodeRecoveryMs` turns on the Node server's
// connectionStateRecovery (through a preload, since the reference server has no setting
// for it), and `recovery` is what the run expects to see on the wire.
function variantsFor(opts) {
  const all = opts.recoveryCompare
    ? [
        { key: 'trestle', kind: 'trestle', label: 'trestle rec on', env: { RECOVERY_MAX_DISCONNECT_MS: '120000' }, recovery: true },
        { key: 'trestle-off', kind: 'trestle', label: 'trestle rec off', env: { RECOVERY_MAX_DISCONNECT_MS: '0' }, recovery: false },
        { key: 'node', kind: 'node', label: 'node rec off', env: {}, recovery: false },
        { key: 'node-rec', kind: 'node', label: 'node rec on', env: {}, nodeRecoveryMs: 120_000, recovery: true },
      ]
    : [
        // Trestle with its defaults: recovery on. The reference server as it is: recovery off.
        { key: 'trestle', kind: 'trestle', label: 'trestle', env: {}, recovery: true },
        { key: 'node', kind: 'node', label: 'node', env: {}, recovery: false },
      ];
  return all.filter((v) => !opts.only || v.kind === opts.only);
}

// Loaded into the reference server with --require, since it has no setting for either.
// socket.io's ESM entry (wrapper.mjs) reads `Server` off the CommonJS module when it is
// first imported, so replacing it there before server.mjs runs gives the reference server
// a Server that always has connectionStateRecovery. With --node-gc, SIGUSR2 runs a full
// garbage collection and writes the live JS heap (heapUsed + external) to a file: RSS
// hardly shrinks after a collection (V8 keeps its pages), the live heap does.
const NODE_PRELOAD = `'use strict';
if (process.env.BENCH_NODE_RECOVERY_MS) {
  const path = require('node:path');
  const { createRequire } = require('node:module');
  const sio = createRequire(path.join(process.cwd(), 'server.mjs'))('socket.io');
  const Base = sio.Server;
  const maxDisconnectionDuration = Number(process.env.BENCH_NODE_RECOVERY_MS);
  class Server extends Base {
    constructor(srv, opts = {}) {
      super(srv, { ...opts, connectionStateRecovery: { maxDisconnectionDuration, skipMiddlewares: true } });
    }
  }
  sio.Server = Server;
}
if (process.env.BENCH_NODE_GC && typeof global.gc === 'function') {
  const fs = require('node:fs');
  process.on('SIGUSR2', () => {
    global.gc();
    const m = process.memoryUsage();
    fs.writeFileSync(process.env.BENCH_NODE_GC, JSON.stringify({ at: Date.now(), heapUsed: m.heapUsed, external: m.external }));
  });
}
`;

async function startServer(variant, opts, logDir) {
  const name = variant.key;
  const port = await freePort();
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (/^(REDIS_|JWT_|ACCESS_HOOK_|AUTH_REQUIRED|TRUST_PROXY|RECOVERY_|BENCH_)/.test(k)) delete env[k];
  Object.assign(env, {
    PORT: String(port),
    HOST,
    JWT_SECRET: SECRET,
    API_KEY,
    LOG_FORMAT: 'json',
    RUST_LOG: 'warn',
    MAX_CONNECTIONS: '100000',
    MAX_CONNECTIONS_PER_IP: '100000',
    RATE_LIMIT_PER_MINUTE: '0',
    MAX_ROOM_SIZE: '0',
    ...variant.env,
  });
  const logFile = path.join(logDir, `${name}-${++serverSeq}.log`);
  const fd = fs.openSync(logFile, 'w');
  let nodeArgs = ['server.mjs'];
  if (variant.kind === 'node' && (variant.nodeRecoveryMs || opts.nodeGc)) {
    const preload = path.join(logDir, 'node-preload.cjs');
    fs.writeFileSync(preload, NODE_PRELOAD);
    if (variant.nodeRecoveryMs) env.BENCH_NODE_RECOVERY_MS = String(variant.nodeRecoveryMs);
    if (opts.nodeGc) env.BENCH_NODE_GC = path.join(logDir, `${name}-${serverSeq}.heap.json`);
    nodeArgs = [...(opts.nodeGc ? ['--expose-gc'] : []), '--require', preload, 'server.mjs'];
  }
  const [cmd, args, cwd] = variant.kind === 'trestle' ? [opts.trestleBin, [], MAIN] : [process.execPath, nodeArgs, opts.refDir];
  const child = spawn(cmd, args, { cwd, env, stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  children.add(child);
  const gcOnSignal = variant.kind === 'node' && opts.nodeGc;
  const srv = { name, port, child, pid: child.pid, logFile, exited: null, base: `http://${HOST}:${port}`, gcOnSignal, heapFile: env.BENCH_NODE_GC, heapKb: NaN };
  child.on('exit', (code, signal) => {
    srv.exited = { code, signal };
    children.delete(child);
  });
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (srv.exited) throw new Error(`${name} exited during start (${JSON.stringify(srv.exited)}); log: ${logFile}`);
    try {
      const res = await fetch(`${srv.base}/health`, { signal: AbortSignal.timeout(1000) });
      if (res.status === 200) return srv;
    } catch {
      /* not listening yet */
    }
    await sleep(100);
  }
  child.kill('SIGKILL');
  throw new Error(`${name} did not answer /health within 20 s; log: ${logFile}`);
}

async function stopServer(srv) {
  if (srv.exited) return srv.exited;
  const gone = new Promise((r) => srv.child.once('exit', (code, signal) => r({ code, signal })));
  srv.child.kill('SIGTERM');
  const result = await within(gone, 20_000, null);
  if (result) return result;
  srv.child.kill('SIGKILL');
  return { ...(await gone), forced: true };
}

// ------------------------------------------------------------------ raw websocket client

// A Socket.IO v4 client on a bare `ws` socket: open, CONNECT with {token}, answer pings.
// Counts the events it receives through onEvent(text) (text is the whole `42[...]` packet).
function rawConnect(srv, token, stats, onEvent = null) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://${HOST}:${srv.port}/socket.io/?EIO=4&transport=websocket`, { perMessageDeflate: false, skipUTF8Validation: true });
    let connected = false;
    const timer = setTimeout(() => fail(new Error('connect timeout (15 s)')), 15_000);
    function fail(err) {
      clearTimeout(timer);
      if (connected) return;
      connected = true; // settle once
      ws.terminate();
      reject(err);
    }
    ws.on('message', (data) => {
      const text = data.toString();
      const type = text[0];
      if (type === '2') {
        ws.send('3');
        stats.pings++;
      } else if (type === '0') {
        ws.send(`40${JSON.stringify({ token })}`);
      } else if (text.startsWith('40')) {
        // A server with connection state recovery gives every socket a private session id.
        if (text.includes('"pid"')) stats.withPid++;
        if (!connected) {
          connected = true;
          clearTimeout(timer);
          resolve(ws);
        }
      } else if (text.startsWith('44')) {
        fail(new Error(`connect_error ${text.slice(2)}`));
      } else if (text.startsWith('42')) {
        if (onEvent) onEvent(text);
      } else if (text.startsWith('41')) {
        stats.serverDisconnects++;
      } else if (type === '1') {
        stats.engineCloses++;
      }
    });
    ws.on('error', (err) => fail(err));
    ws.on('close', () => {
      if (connected && !ws.benchClosing) stats.unexpectedCloses++;
      fail(new Error('closed before CONNECT ack'));
    });
  });
}

function newRawStats() {
  return { pings: 0, serverDisconnects: 0, engineCloses: 0, unexpectedCloses: 0, connectErrors: 0, withPid: 0, errorSamples: [] };
}

// Opens n raw clients, batch at a time; returns the open sockets.
async function openRaw(srv, n, opts, stats, onEventFor = () => null) {
  const sockets = [];
  for (let i = 0; i < n; i += opts.batch) {
    const size = Math.min(opts.batch, n - i);
    const settled = await Promise.allSettled(
      Array.from({ length: size }, (_, j) => rawConnect(srv, nextToken(opts), stats, onEventFor(i + j))),
    );
    for (const s of settled) {
      if (s.status === 'fulfilled') sockets.push(s.value);
      else {
        stats.connectErrors++;
        if (stats.errorSamples.length < 3) stats.errorSamples.push(s.reason?.message ?? String(s.reason));
      }
    }
    if (srv.exited) throw new Error(`${srv.name} exited while connecting (${JSON.stringify(srv.exited)})`);
  }
  return sockets;
}

async function closeRaw(sockets) {
  await Promise.all(
    sockets.map(
      (ws) =>
        new Promise((resolve) => {
          if (ws.readyState === WebSocket.CLOSED) return resolve();
          ws.benchClosing = true;
          const t = setTimeout(() => {
            ws.terminate();
            resolve();
          }, 5000);
          ws.once('close', () => {
            clearTimeout(t);
            resolve();
          });
          ws.close();
        }),
    ),
  );
}

// ------------------------------------------------------------------ phases

async function idleMemory(srv, opts) {
  const stats = newRawStats();
  // Warm-up: one batch connected and closed, so both servers have run their connect path
  // (Node's JIT, allocator pools) before the baseline is read.
  await closeRaw(await openRaw(srv, Math.min(opts.batch, opts.conns), opts, newRawStats()));
  await sleep(1000);
  const before = await readRss(srv);
  const heapBefore = srv.heapKb;
  const cpu0 = cpuSec(srv.pid);
  const self0 = selfCpuSec();
  const t0 = now();
  const sockets = await openRaw(srv, opts.conns, opts, stats);
  const connectMs = now() - t0;
  await sleep(opts.settle * 1000);
  const cpu = cpuSec(srv.pid) - cpu0;
  const selfCpu = selfCpuSec() - self0;
  const after = await readRss(srv);
  const heapAfter = srv.heapKb;
  const open = sockets.filter((ws) => ws.readyState === WebSocket.OPEN).length;
  await closeRaw(sockets);
  await sleep(opts.settle * 1000); // let the server clean up before the next phase
  // With connection state recovery, a closed socket's session is kept for the recovery
  // window, in case its client comes back.
  const closed = await readRss(srv);
  const heapClosed = srv.heapKb;
  const n = sockets.length;
  return {
    heapPerConnKb: (heapAfter - heapBefore) / n,
    heapPerClosedKb: (heapClosed - heapBefore) / n,
    connected: sockets.length,
    stillOpen: open,
    rssBeforeKb: before,
    rssAfterKb: after,
    rssClosedKb: closed,
    kbPerClosed: sockets.length ? (closed - before) / sockets.length : NaN,
    kbPerConn: sockets.length ? (after - before) / sockets.length : NaN,
    connectPerSec: sockets.length / (connectMs / 1000),
    connectMs,
    serverCpuSec: cpu,
    clientCpuSec: selfCpu,
    ...stats,
  };
}

async function roundTrips(srv, opts) {
  const clients = [];
  const problems = { connectErrors: 0, disconnects: 0, timeouts: 0, failures: 0, samples: [] };
  await Promise.all(
    Array.from({ length: opts.clients }, async () => {
      const s = ioClient(srv.base, {
        transports: ['websocket'],
        auth: { token: nextToken(opts) },
        reconnection: false,
        forceNew: true,
        timeout: 10_000,
      });
      try {
        await new Promise((resolve, reject) => {
          s.once('connect', resolve);
          s.once('connect_error', reject);
        });
        s.on('disconnect', (reason) => {
          if (!s.benchClosing) {
            problems.disconnects++;
            if (problems.samples.length < 3) problems.samples.push(`disconnect: ${reason}`);
          }
        });
        clients.push(s);
      } catch (err) {
        problems.connectErrors++;
        if (problems.samples.length < 3) problems.samples.push(`connect_error: ${err.message}`);
        s.close();
      }
    }),
  );
  const lat = [];
  let acks = 0;
  let measuring = false;
  let cpu0 = 0;
  let self0 = 0;
  const start = now();
  const measureFrom = start + opts.warmup * 1000;
  const end = measureFrom + opts.duration * 1000;
  const timer = setTimeout(() => {
    measuring = true;
    cpu0 = cpuSec(srv.pid);
    self0 = selfCpuSec();
  }, opts.warmup * 1000);
  await Promise.all(
    clients.map(async (s) => {
      while (now() < end && s.connected) {
        const t = now();
        try {
          const res = await s.timeout(5000).emitWithAck('join_room', 'project:1');
          const done = now();
          if (res?.success !== true) {
            problems.failures++;
            if (problems.samples.length < 3) problems.samples.push(`ack: ${JSON.stringify(res)}`);
          } else if (measuring && t >= measureFrom && done <= end) {
            lat.push(done - t);
            acks++;
          }
        } catch (err) {
          problems.timeouts++;
          if (problems.samples.length < 3) problems.samples.push(`ack: ${err.message}`);
        }
      }
    }),
  );
  clearTimeout(timer);
  const cpu = measuring ? cpuSec(srv.pid) - cpu0 : NaN;
  const selfCpu = measuring ? selfCpuSec() - self0 : NaN;
  for (const s of clients) {
    s.benchClosing = true;
    s.close();
  }
  await sleep(1000);
  lat.sort((a, b) => a - b);
  return {
    clients: clients.length,
    acks,
    acksPerSec: acks / opts.duration,
    p50: percentile(lat, 50),
    p99: percentile(lat, 99),
    max: lat.length ? lat[lat.length - 1] : NaN,
    serverCpuSec: cpu,
    cpuMsPer1kAcks: acks ? (cpu * 1e6) / acks : NaN,
    clientCpuSec: selfCpu,
    duration: opts.duration,
    ...problems,
  };
}

const TICK_PREFIX = '42["tick",{"i":';
const WARM_PREFIX = '42["warmup"';

// One POST /api/emit; returns the HTTP status (or the error's name).
async function postEmit(srv, event, data) {
  try {
    const res = await fetch(`${srv.base}/api/emit`, {
      method: 'POST',
      headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
      body: JSON.stringify({ rooms: ['project:1'], event, data }),
      signal: AbortSignal.timeout(10_000),
    });
    await res.arrayBuffer();
    return res.status;
  } catch (err) {
    return err.name;
  }
}

async function fanOut(srv, opts) {
  const K = opts.emits;
  const W = Math.max(10, Math.round(K / 10)); // warm-up emits, not measured
  const stats = newRawStats();
  const got = new Int32Array(opts.receivers);
  const warm = new Int32Array(opts.receivers);
  const disorder = { outOfOrder: 0, otherEvents: 0, withOffset: 0 };
  // Delivery latency: from just before tick i's POST until a receiver has it.
  const sentAt = new Float64Array(K);
  const latency = new Float64Array(opts.receivers * K);
  let latencies = 0;
  let remaining = 0; // receivers that still miss ticks (set once all are connected)
  let warmRemaining = 0;
  let doneAt = 0;
  let allDone;
  let allWarm;
  const finished = new Promise((r) => (allDone = r));
  const warmed = new Promise((r) => (allWarm = r));
  const onEventFor = (idx) => (text) => {
    if (!text.startsWith(TICK_PREFIX)) {
      if (text.startsWith(WARM_PREFIX)) {
        if (++warm[idx] === W && --warmRemaining === 0) allWarm();
      } else disorder.otherEvents++;
      return;
    }
    const t = now();
    const n = got[idx];
    // `42["tick",{"i":N}]`, or `42["tick",{"i":N},"OFFSET"]` from a server with connection
    // state recovery: read N without a JSON.parse, to keep the receiving side cheap.
    const i = Number.parseInt(text.slice(TICK_PREFIX.length), 10);
    if (i !== n) disorder.outOfOrder++;
    if (i >= 0 && i < K && latencies < latency.length) latency[latencies++] = t - sentAt[i];
    if (text.endsWith('"]')) disorder.withOffset++;
    got[idx] = n + 1;
    if (n + 1 === K && --remaining === 0) {
      doneAt = now();
      allDone();
    }
  };
  await sleep(500);
  const rssBefore = await readRss(srv);
  const heapBefore = srv.heapKb;
  const sockets = await openRaw(srv, opts.receivers, opts, stats, onEventFor);
  const M = sockets.length;
  remaining = M;
  warmRemaining = M;
  await sleep(500);
  const warmStatus = {};
  for (let i = 0; i < W; i++) {
    const st = await postEmit(srv, 'warmup', { i });
    if (st !== 202) warmStatus[st] = (warmStatus[st] ?? 0) + 1;
  }
  const warmComplete = M === 0 || (await within(warmed.then(() => true), 10_000, false));
  await sleep(1000); // connections settled, nothing else going on
  const cpu0 = cpuSec(srv.pid);
  const self0 = selfCpuSec();
  const postLat = [];
  const badStatus = {};
  const t0 = now();
  for (let i = 0; i < K; i++) {
    const t = now();
    sentAt[i] = t;
    const status = await postEmit(srv, 'tick', { i });
    postLat.push(now() - t);
    if (status !== 202) badStatus[status] = (badStatus[status] ?? 0) + 1;
  }
  const postsDone = now();
  const timeoutMs = 30_000 + K * M * 0.01; // bounded: 30 s plus 10 µs a delivery
  const complete = M === 0 || (await within(finished.then(() => true), timeoutMs, false));
  const end = complete ? (M === 0 ? postsDone : doneAt) : now();
  const cpu = cpuSec(srv.pid) - cpu0;
  const selfCpu = selfCpuSec() - self0;
  let delivered = 0;
  for (let i = 0; i < M; i++) delivered += Math.min(got[i], K);
  const rssWith = await readRss(srv);
  await closeRaw(sockets);
  await sleep(opts.settle * 1000);
  // What the phase left behind once its receivers are gone: with recovery, its kept events
  // and the receivers' saved sessions (a closed websocket is a recoverable disconnect).
  const rssAfter = await readRss(srv);
  const heapHeldKb = srv.heapKb - heapBefore;
  postLat.sort((a, b) => a - b);
  const lat = latency.subarray(0, latencies).sort();
  const ms = end - t0;
  return {
    rssBeforeKb: rssBefore,
    rssWithKb: rssWith,
    rssAfterKb: rssAfter,
    heldKb: rssAfter - rssBefore,
    heapHeldKb,
    latP50: percentile(lat, 50),
    latP99: percentile(lat, 99),
    latMax: lat.length ? lat[lat.length - 1] : NaN,
    cpuMsPer1kDeliveries: delivered ? (cpu * 1e6) / delivered : NaN,
    receivers: M,
    emits: K,
    warmups: W,
    warmComplete,
    warmStatus,
    complete,
    delivered,
    expected: M * K,
    ms,
    perSec: delivered / (ms / 1000),
    postsMs: postsDone - t0,
    lagAfterPostsMs: Math.max(0, end - postsDone),
    postP50: percentile(postLat, 50),
    postP99: percentile(postLat, 99),
    badStatus,
    serverCpuSec: cpu,
    clientCpuSec: selfCpu,
    ...disorder,
    ...stats,
  };
}

// About 120 bytes of text, so that a kept event is the size of a small application event.
const KEEP_TEXT = 'x'.repeat(120);

// keep: E broadcasts to a room without members. With recovery on, each one is kept; the
// RSS it adds is the memory the kept events hold (plus the allocator's and GC's slack,
// which the run without recovery shows on its own).
async function keepEvents(srv, opts) {
  const E = opts.keepEvents;
  const CONCURRENCY = 4;
  await sleep(500);
  const rssBefore = await readRss(srv);
  const heapBefore = srv.heapKb;
  const cpu0 = cpuSec(srv.pid);
  const self0 = selfCpuSec();
  const badStatus = {};
  let next = 0;
  const t0 = now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < E) {
        const i = next++;
        const status = await postEmit(srv, 'kept', { i, text: KEEP_TEXT });
        if (status !== 202) badStatus[status] = (badStatus[status] ?? 0) + 1;
      }
    }),
  );
  const ms = now() - t0;
  const cpu = cpuSec(srv.pid) - cpu0;
  const selfCpu = selfCpuSec() - self0;
  await sleep(opts.settle * 1000);
  const rssAfter = await readRss(srv);
  const heapAfter = srv.heapKb;
  return {
    heapBytesPerEvent: ((heapAfter - heapBefore) * 1024) / E,
    events: E,
    concurrency: CONCURRENCY,
    rssBeforeKb: rssBefore,
    rssAfterKb: rssAfter,
    bytesPerEvent: ((rssAfter - rssBefore) * 1024) / E,
    perSec: E / (ms / 1000),
    serverCpuSec: cpu,
    cpuMsPer1kEmits: (cpu * 1e6) / E,
    clientCpuSec: selfCpu,
    badStatus,
  };
}

// Sockets the server still counts as connected (from /metrics), to spot connections that
// linger from the previous phase.
async function serverSockets(srv) {
  try {
    const text = await (await fetch(`${srv.base}/metrics`, { signal: AbortSignal.timeout(2000) })).text();
    const m = /^(?:trestle_connected_sockets|socketio_connected_clients)(?:\{[^}]*\})?\s+(\d+)/m.exec(text);
    return m ? Number(m[1]) : NaN;
  } catch {
    return NaN;
  }
}

async function benchServer(variant, opts, logDir, run) {
  const name = variant.label;
  log(`starting ${name}${opts.repeat > 1 ? ` (run ${run} of ${opts.repeat})` : ''}`);
  const srv = await startServer(variant, opts, logDir);
  const r = { name: variant.key, label: variant.label, run, recovery: variant.recovery, pid: srv.pid, lingering: {}, otherCpu: {} };
  const phase = async (key, label, fn) => {
    if (!opts.phases.includes(key)) return undefined;
    const left = await serverSockets(srv);
    if (left) r.lingering[key] = left;
    log(`${name}: ${label}`);
    const m0 = machineCpuSec();
    const s0 = cpuSec(srv.pid);
    const c0 = selfCpuSec();
    const t0 = now();
    const res = await fn(srv, opts);
    const wall = (now() - t0) / 1000;
    const other = machineCpuSec() - m0 - (cpuSec(srv.pid) - s0) - (selfCpuSec() - c0);
    r.otherCpu[key] = { seconds: Math.max(0, other), cores: Math.max(0, other) / wall };
    return res;
  };
  try {
    r.idle = await phase('idle', `idle memory, ${opts.conns} connections`, idleMemory);
    r.rtt = await phase('rtt', `round trips, ${opts.clients} clients for ${opts.duration} s`, roundTrips);
    r.fan = await phase('fanout', `fan-out, ${opts.receivers} receivers x ${opts.emits} emits`, fanOut);
    r.keep = await phase('keep', `keep, ${opts.keepEvents} broadcasts to an empty room`, keepEvents);
    r.rssEndKb = rssKb(srv.pid);
  } finally {
    r.aliveAtEnd = !srv.exited;
    r.exit = await stopServer(srv);
    const lines = fs.readFileSync(srv.logFile, 'utf8').split('\n').filter(Boolean);
    // Startup banners are expected; anything else at warn level or above is worth a look.
    r.logLines = lines.filter((l) => !/listening on|^SIGTERM: shutting down$|"level":"(INFO|DEBUG|TRACE)"/.test(l));
  }
  return r;
}

// ------------------------------------------------------------------ report

const f = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : 'n/a');

function median(xs) {
  const v = xs.filter(Number.isFinite).sort((a, b) => a - b);
  if (!v.length) return NaN;
  const m = v.length >> 1;
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

// The rows of a table: [phase, label, getter, decimals, better: 'lower' | 'higher' | null (context only)].
function rowsFor(opts) {
  return [
    ['idle', `idle: RSS before (MB)`, (r) => r.idle.rssBeforeKb / 1024, 1, null],
    ['idle', `idle: RSS with ${opts.conns} conns (MB)`, (r) => r.idle.rssAfterKb / 1024, 1, null],
    ['idle', `idle: memory per connection (KB)`, (r) => r.idle.kbPerConn, 2, 'lower'],
    ['idle', `idle: connect rate (conn/s, batches of ${opts.batch})`, (r) => r.idle.connectPerSec, 0, 'higher'],
    ['idle', `idle: server CPU, connect + ${opts.settle} s idle (s)`, (r) => r.idle.serverCpuSec, 2, 'lower'],
    ['idle', `idle: RSS ${opts.settle} s after they closed (MB)`, (r) => r.idle.rssClosedKb / 1024, 1, null],
    ['idle', `idle: RSS still held per closed connection (KB)`, (r) => r.idle.kbPerClosed, 2, 'lower'],
    ['idle-gc', `idle: Node live JS heap per connection (KB)`, (r) => r.idle.heapPerConnKb, 2, 'lower'],
    ['idle-gc', `idle: Node live JS heap held per closed connection (KB)`, (r) => r.idle.heapPerClosedKb, 2, 'lower'],
    ['rtt', `rtt: join_room acks/s (${opts.clients} clients)`, (r) => r.rtt.acksPerSec, 0, 'higher'],
    ['rtt', `rtt: latency p50 (ms)`, (r) => r.rtt.p50, 2, 'lower'],
    ['rtt', `rtt: latency p99 (ms)`, (r) => r.rtt.p99, 2, 'lower'],
    ['rtt', `rtt: server CPU over ${opts.duration} s (s)`, (r) => r.rtt.serverCpuSec, 2, null],
    ['rtt', `rtt: server CPU per 1000 acks (ms)`, (r) => r.rtt.cpuMsPer1kAcks, 1, 'lower'],
    ['rtt', `rtt: load-generator CPU (s)`, (r) => r.rtt.clientCpuSec, 2, null],
    ['fanout', `fan-out: deliveries/s (${opts.receivers} x ${opts.emits})`, (r) => r.fan.perSec, 0, 'higher'],
    ['fanout', `fan-out: time to deliver all (ms)`, (r) => r.fan.ms, 0, 'lower'],
    ['fanout', `fan-out: lag after last POST answered (ms)`, (r) => r.fan.lagAfterPostsMs, 0, 'lower'],
    ['fanout', `fan-out: delivery latency p50 (ms)`, (r) => r.fan.latP50, 2, 'lower'],
    ['fanout', `fan-out: delivery latency p99 (ms)`, (r) => r.fan.latP99, 2, 'lower'],
    ['fanout', `fan-out: POST /api/emit p50 (ms)`, (r) => r.fan.postP50, 2, 'lower'],
    ['fanout', `fan-out: server CPU (s)`, (r) => r.fan.serverCpuSec, 2, 'lower'],
    ['fanout', `fan-out: server CPU per 1000 deliveries (ms)`, (r) => r.fan.cpuMsPer1kDeliveries, 2, 'lower'],
    ['fanout', `fan-out: load-generator CPU (s)`, (r) => r.fan.clientCpuSec, 2, null],
    ['fanout', `fan-out: RSS before the receivers (MB)`, (r) => r.fan.rssBeforeKb / 1024, 1, null],
    ['fanout', `fan-out: RSS held after, receivers gone (MB)`, (r) => r.fan.heldKb / 1024, 2, 'lower'],
    ['fanout-gc', `fan-out: Node live JS heap held after (MB)`, (r) => r.fan.heapHeldKb / 1024, 2, 'lower'],
    ['keep', `keep: broadcasts/s (${opts.keepEvents}, 4 at a time)`, (r) => r.keep.perSec, 0, 'higher'],
    ['keep', `keep: server CPU per 1000 broadcasts (ms)`, (r) => r.keep.cpuMsPer1kEmits, 1, 'lower'],
    ['keep', `keep: RSS added (MB)`, (r) => (r.keep.rssAfterKb - r.keep.rssBeforeKb) / 1024, 2, 'lower'],
    ['keep', `keep: RSS added per broadcast (bytes)`, (r) => r.keep.bytesPerEvent, 0, 'lower'],
    ['keep-gc', `keep: Node live JS heap added per broadcast (bytes)`, (r) => r.keep.heapBytesPerEvent, 0, 'lower'],
  ].filter(([phase]) => {
    // `-gc` rows exist only with --node-gc (Trestle has no such figure: n/a).
    const [name, gc] = phase.split('-');
    return opts.phases.includes(name) && (!gc || opts.nodeGc);
  });
}

// A row's figure for one variant: the median over its runs that have it.
function valueOf(results, key, fn) {
  return median(
    results
      .filter((r) => r.name === key && !r.error)
      .map((r) => {
        try {
          return fn(r);
        } catch {
          return NaN; // the phase did not run or failed
        }
      }),
  );
}

function render(head, out, leftCols) {
  const widths = head.map((h, i) => Math.max(h.length, ...out.map((r) => r[i].length)));
  const line = (cells) => cells.map((c, i) => (leftCols.has(i) ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ').trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...out.map(line)].join('\n');
}

function table(results, opts) {
  const out = rowsFor(opts).map(([, label, fn, d, better]) => {
    const a = valueOf(results, 'trestle', fn);
    const b = valueOf(results, 'node', fn);
    let ratio = '-';
    let winner = '-';
    if (better && Number.isFinite(a) && Number.isFinite(b) && a > 0 && b > 0) {
      const r = better === 'lower' ? b / a : a / b; // > 1: trestle better
      ratio = `${r.toFixed(2)}x ${better === 'lower' ? 'node/trestle' : 'trestle/node'}`;
      winner = Math.abs(r - 1) < 0.05 ? 'even' : r > 1 ? 'trestle' : 'node';
      winner += ` (${better} is better)`;
    } else if (better) {
      winner = `(${better} is better)`;
    }
    return [label, f(a, d), f(b, d), ratio, winner];
  });
  return render(['metric', 'trestle', 'node', 'ratio (>1 = trestle better)', 'better'], out, new Set([0, 3, 4]));
}

// --recovery-compare: each server with recovery on and off. "on-off" is what recovery adds,
// "on/off" the same as a factor (above 1: recovery costs more, or does more for a rate).
function recoveryTable(results, opts) {
  const pairs = [
    ['trestle', 'trestle-off'],
    ['node-rec', 'node'],
  ];
  const cell = (x, d) => f(x, d);
  const diff = (on, off, d) => (Number.isFinite(on) && Number.isFinite(off) ? `${on - off >= 0 ? '+' : ''}${(on - off).toFixed(d)}` : '-');
  const ratio = (on, off) => (Number.isFinite(on) && Number.isFinite(off) && off > 0 && on >= 0 ? `${(on / off).toFixed(2)}x` : '-');
  const out = rowsFor(opts).map(([, label, fn, d, better]) => {
    const row = [label];
    for (const [onKey, offKey] of pairs) {
      const on = valueOf(results, onKey, fn);
      const off = valueOf(results, offKey, fn);
      row.push(cell(on, d), cell(off, d), better ? diff(on, off, d) : '-', better ? ratio(on, off) : '-');
    }
    const tOn = valueOf(results, 'trestle', fn);
    const nOn = valueOf(results, 'node-rec', fn);
    let vs = '-';
    if (better && Number.isFinite(tOn) && Number.isFinite(nOn) && tOn > 0 && nOn > 0) vs = `${(better === 'lower' ? nOn / tOn : tOn / nOn).toFixed(2)}x`;
    row.push(vs);
    return row;
  });
  const head = [
    'metric',
    'trestle on',
    'trestle off',
    'on-off',
    'on/off',
    'node on',
    'node off',
    'on-off',
    'on/off',
    'trestle vs node, both on (>1 = trestle better)',
  ];
  return render(head, out, new Set([0]));
}

// With --repeat: each run's figure, for the rows that compare.
function perRun(results, opts, keys) {
  const out = [];
  for (const [, label, fn, d, better] of rowsFor(opts)) {
    if (!better) continue;
    const parts = keys.map((k) => {
      const vals = results
        .filter((r) => r.name === k)
        .map((r) => {
          try {
            return f(fn(r), d);
          } catch {
            return 'n/a';
          }
        });
      return `${results.find((r) => r.name === k)?.label ?? k} ${vals.join(' / ')}`;
    });
    out.push(`  ${label}: ${parts.join('; ')}`);
  }
  return out;
}

function notes(r, opts) {
  const out = [];
  const i = r.idle;
  const add = (s) => out.push(`  ${r.label ?? r.name}${opts.repeat > 1 ? ` (run ${r.run})` : ''}: ${s}`);
  // Whether recovery was on is seen on the wire: a pid in the CONNECT answer, an offset after each tick.
  if (i && r.recovery !== undefined && i.connected && (r.recovery ? i.withPid < i.connected : i.withPid > 0)) {
    add(`idle: recovery ${r.recovery ? 'on' : 'off'}, yet ${i.withPid} of ${i.connected} CONNECT answers had a pid`);
  }
  const fo = r.fan;
  if (fo && r.recovery !== undefined && fo.delivered && (r.recovery ? fo.withOffset < fo.delivered : fo.withOffset > 0)) {
    add(`fan-out: recovery ${r.recovery ? 'on' : 'off'}, yet ${fo.withOffset} of ${fo.delivered} ticks had an offset`);
  }
  if (i) {
    if (i.connectErrors) add(`idle: ${i.connectErrors} connections failed (${i.errorSamples.join('; ')})`);
    if (i.stillOpen !== i.connected) add(`idle: only ${i.stillOpen} of ${i.connected} connections still open when RSS was read`);
    if (i.unexpectedCloses || i.serverDisconnects || i.engineCloses) add(`idle: ${i.unexpectedCloses} unexpected closes, ${i.serverDisconnects} server disconnects, ${i.engineCloses} engine closes`);
  }
  const t = r.rtt;
  if (t) {
    if (t.connectErrors || t.disconnects || t.timeouts || t.failures) {
      add(`rtt: ${t.connectErrors} connect errors, ${t.disconnects} disconnects, ${t.timeouts} ack timeouts, ${t.failures} failed acks${t.samples.length ? ` (${t.samples.join('; ')})` : ''}`);
    }
    add(
      `rtt: ${t.acks} acks measured from ${t.clients} clients, max latency ${f(t.max, 1)} ms; ` +
        `server busy ${f((t.serverCpuSec / t.duration) * 100, 0)}% of one core, load generator ${f((t.clientCpuSec / t.duration) * 100, 0)}%`,
    );
  }
  const fa = r.fan;
  if (fa) {
    if (!fa.complete) add(`fan-out: INCOMPLETE, ${fa.delivered} of ${fa.expected} deliveries before the time limit`);
    if (fa.connectErrors) add(`fan-out: ${fa.connectErrors} receivers failed to connect (${fa.errorSamples.join('; ')})`);
    if (!fa.warmComplete) add(`fan-out: not every receiver got the ${fa.warmups} warm-up events within 10 s`);
    if (Object.keys(fa.warmStatus).length) add(`fan-out: warm-up POST answers other than 202: ${JSON.stringify(fa.warmStatus)}`);
    if (Object.keys(fa.badStatus).length) add(`fan-out: POST answers other than 202: ${JSON.stringify(fa.badStatus)}`);
    if (fa.outOfOrder) add(`fan-out: ${fa.outOfOrder} ticks out of order or unparsable`);
    if (fa.otherEvents) add(`fan-out: receivers also got ${fa.otherEvents} other events (e.g. status_change)`);
    if (fa.unexpectedCloses || fa.serverDisconnects) add(`fan-out: ${fa.unexpectedCloses} unexpected closes, ${fa.serverDisconnects} server disconnects`);
    add(
      `fan-out: all ${fa.emits} POSTs answered after ${f(fa.postsMs, 0)} ms, POST p99 ${f(fa.postP99, 2)} ms, ` +
        `delivery latency max ${f(fa.latMax, 1)} ms, RSS with the receivers ${f(fa.rssWithKb / 1024, 1)} MB`,
    );
  }
  const k = r.keep;
  if (k && Object.keys(k.badStatus).length) add(`keep: POST answers other than 202: ${JSON.stringify(k.badStatus)}`);
  for (const [k, v] of Object.entries(r.otherCpu ?? {})) {
    if (v.cores > 0.1) add(`${k}: OTHER processes on the machine used ${f(v.cores * 100, 0)}% of a core on average during this phase; figures are disturbed`);
  }
  for (const [k, v] of Object.entries(r.lingering ?? {})) add(`${k}: the server still counted ${v} connected sockets when the phase began`);
  if (!r.aliveAtEnd) add('the server process had exited before the end of the run');
  if (r.exit && (r.exit.code !== 0 || r.exit.forced)) add(`stop: exit ${JSON.stringify(r.exit)}`);
  if (r.logLines?.length) {
    add(`${r.logLines.length} log line(s) at warn/error level or unrecognised, first ones:`);
    for (const l of r.logLines.slice(0, 5)) out.push(`      ${l.slice(0, 300)}`);
  }
  if (r.error) add(`FAILED: ${r.error}`);
  return out;
}

// ------------------------------------------------------------------ main

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    console.error(err.message);
    process.exit(2);
  }
  const variants = variantsFor(opts);
  const names = [...new Set(variants.map((v) => v.kind))];
  // 15 minutes for the usual two servers, longer for more servers or runs.
  const watchdogMin = Math.round(15 * Math.max(1, (opts.repeat * variants.length) / 2));
  const watchdog = setTimeout(() => {
    log(`watchdog: the run took over ${watchdogMin} minutes, giving up`);
    killAll();
    process.exit(2);
  }, watchdogMin * 60_000);
  watchdog.unref();

  if (names.includes('trestle')) prepareTrestle(opts);
  if (names.includes('node')) prepareReference(opts);
  const logDir = fs.mkdtempSync(path.join(os.tmpdir(), 'trestle-bench-'));
  let binInfo = '';
  if (names.includes('trestle')) {
    // Run a copy, so that a rebuild during the run cannot swap the binary between phases.
    const st = fs.statSync(opts.trestleBin);
    binInfo = `trestle binary ${opts.trestleBin} (built ${st.mtime.toISOString()}, sha256 ${sha256File(opts.trestleBin).slice(0, 12)})`;
    const copy = path.join(logDir, 'trestle');
    fs.copyFileSync(opts.trestleBin, copy);
    fs.chmodSync(copy, 0o755);
    opts.trestleBin = copy;
  }
  // How busy the machine is without us: one second of /proc/stat, less this process.
  const m0 = machineCpuSec();
  const c0 = selfCpuSec();
  await sleep(1000);
  const busyBefore = Math.max(0, machineCpuSec() - m0 - (selfCpuSec() - c0));
  if (busyBefore > 0.1) log(`other processes use ${(busyBefore * 100).toFixed(0)}% of a core: figures will be disturbed`);

  const started = Date.now();
  const results = [];
  // Runs interleave (every server once, then again), so that a slow spell of the machine
  // falls on every server rather than on one.
  for (let run = 1; run <= opts.repeat; run++) {
    for (const v of variants) {
      try {
        results.push(await benchServer(v, opts, logDir, run));
      } catch (err) {
        log(`${v.label} failed: ${err.stack ?? err}`);
        results.push({ name: v.key, label: v.label, run, recovery: v.recovery, error: err.message });
      }
      await sleep(1000);
    }
  }
  const seconds = (Date.now() - started) / 1000;

  const cores = os.cpus().length;
  console.log('');
  console.log(
    `${opts.recoveryCompare ? 'Connection state recovery on and off: ' : ''}Trestle vs Node reference server (socket.io 4.8)  ${new Date().toISOString()}`,
  );
  console.log(
    `machine: ${cores} cores (${os.cpus()[0]?.model ?? '?'}), ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}; ` +
      `servers run one at a time on ${HOST}.`,
  );
  console.log(
    `NOTE: the load generator (this single Node process) shares the same ${cores} cores with the server under test, ` +
      'so throughput figures are a floor set partly by the client; compare the two servers, not absolute numbers.',
  );
  if (binInfo) console.log(binInfo);
  console.log(
    `other processes used ${(busyBefore * 100).toFixed(0)}% of a core in the second before the run` +
      (busyBefore > 0.1 ? ' (NOT an idle machine: figures are disturbed)' : ''),
  );
  console.log(
    `settings: ${opts.quick ? '--quick, ' : ''}conns=${opts.conns} (batches of ${opts.batch}, ${opts.settle} s idle), ` +
      `clients=${opts.clients} for ${opts.duration} s (+${opts.warmup} s warm-up), receivers=${opts.receivers}, emits=${opts.emits}, ` +
      `users: ${opts.uniqueUsers ? 'one per connection' : 'every connection is the same user'}; CPU ticks at ${CLK_TCK} Hz`,
  );
  console.log(
    `phases: ${opts.phases.join(', ')}${opts.phases.includes('keep') ? ` (keep: ${opts.keepEvents} broadcasts)` : ''}; ` +
      `servers: ${variants.map((v) => v.label).join(', ')}` +
      (opts.repeat > 1 ? `; each run ${opts.repeat} times, interleaved: figures are medians` : '') +
      (opts.nodeGc ? '; Node RSS read after a full GC (--node-gc)' : ''),
  );
  if (opts.recoveryCompare) {
    console.log(
      'recovery: Trestle RECOVERY_MAX_DISCONNECT_MS=120000 (on) and 0 (off); the Node server as it is (off) and with ' +
        'connectionStateRecovery {maxDisconnectionDuration: 120000} set by a preload (on).',
    );
  }
  console.log('');
  console.log(opts.recoveryCompare ? recoveryTable(results, opts) : table(results, opts));
  if (opts.repeat > 1) {
    console.log('');
    console.log('per run:');
    for (const l of perRun(results, opts, variants.map((v) => v.key))) console.log(l);
  }
  const allNotes = results.flatMap((r) => notes(r, opts));
  if (allNotes.length) {
    console.log('');
    console.log('notes:');
    for (const l of allNotes) console.log(l);
  }
  console.log('');
  console.log(`total run time ${seconds.toFixed(0)} s${opts.keepLogs ? `; server logs in ${logDir}` : ''}`);

  if (opts.json) fs.writeFileSync(opts.json, JSON.stringify({ opts, results }, null, 2));
  if (!opts.keepLogs) fs.rmSync(logDir, { recursive: true, force: true });
  process.exitCode = results.some((r) => r.error) ? 1 : 0;
}

main().catch((err) => {
  console.error(err.stack ?? err);
  killAll();
  process.exit(1);
});
