// Real backing services for cluster tests (no tests in this file): a redis-server of the
// test's own on a free port, and Trestle instances that share it.
import { execFileSync, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, startServer } from './helpers.mjs';

const delay = (ms) => new Promise((r) => setTimeout(r, ms));
const pgScript = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../scripts/pg.sh');

let adminUrl = process.env.TEST_DATABASE_URL || null;

/**
 * The admin URL of a PostgreSQL for tests: TEST_DATABASE_URL (set by scripts/test.sh), or
 * a throwaway cluster started here for this test process and stopped when it exits.
 */
function postgresAdminUrl() {
  if (adminUrl) return adminUrl;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trestle-pg-'));
  adminUrl = execFileSync(pgScript, ['start', dir], { encoding: 'utf8' }).trim();
  process.once('exit', () => {
    execFileSync(pgScript, ['stop', dir]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return adminUrl;
}

/** Creates an empty database for one test and returns its URL. */
export function createDatabase() {
  const admin = postgresAdminUrl();
  const name = `t_${crypto.randomBytes(6).toString('hex')}`;
  execFileSync('psql', [admin, '-qtAc', `CREATE DATABASE ${name}`]);
  const url = new URL(admin);
  url.pathname = `/${name}`;
  return url.toString();
}

/** Sends PING (after AUTH when a password is given) on a fresh connection; true on +PONG. */
function ping(port, password) {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    const done = (ok) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(500, () => done(false));
    sock.on('error', () => done(false));
    sock.on('connect', () => sock.write(password ? `AUTH ${password}\r\nPING\r\n` : 'PING\r\n'));
    sock.on('data', (d) => done(d.toString().includes('+PONG')));
  });
}

/**
 * Starts redis-server on a free port (nothing saved to disk), requiring `password` when
 * given. `stop()` ends it and `start()` brings it back on the same port, for outage tests.
 */
export async function startRedis({ password } = {}) {
  const port = await freePort();
  const auth = password ? ['--requirepass', password] : [];
  const redis = redisProcess(port, password, () => ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...auth]);
  redis.url = password ? `redis://:${password}@127.0.0.1:${port}` : `redis://127.0.0.1:${port}`;
  await redis.start();
  return redis;
}

/**
 * A redis-server on `port`, started with `args()`: `start()` waits until it answers PING
 * (with `password`), `stop()` kills it (SIGKILL: nothing saved), `pid` is its process id
 * (to stop it with SIGSTOP: a hung Redis).
 */
function redisProcess(port, password, args) {
  let proc = null;
  return {
    port,
    get pid() {
      return proc?.pid;
    },
    async start() {
      proc = spawn('redis-server', args(), { stdio: 'ignore' });
      const failed = new Promise((_, reject) => proc.once('error', reject));
      failed.catch(() => {});
      for (let i = 0; i < 200; i++) {
        if (await Promise.race([ping(port, password), failed])) return;
        await delay(25); // readiness poll of a process with no other way to say it listens
      }
      throw new Error(`redis-server did not answer on port ${port}`);
    },
    async stop() {
      if (!proc || proc.exitCode !== null) return;
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGKILL');
      await exited;
      proc = null;
    },
  };
}

/**
 * Starts `n` Trestle instances sharing one Redis (started here unless given) and one
 * PostgreSQL database (created here), as a cluster is deployed.
 */
export async function startCluster(n, overrides = {}, redis = null) {
  const ownRedis = redis === null;
  redis ??= await startRedis();
  const database = createDatabase();
  const instances = [];
  for (let i = 0; i < n; i++) {
    instances.push(await startServer({ REDIS_URL: redis.url, DATABASE_URL: database, ...overrides }));
  }
  return {
    redis,
    database,
    instances,
    async stop() {
      await Promise.all(instances.map((s) => s.stop()));
      if (ownRedis) await redis.stop();
    },
  };
}

/** `redis-cli -p port args…` on 127.0.0.1, its output (throws when redis-cli fails). */
const redisCli = (port, ...args) =>
  execFileSync('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { encoding: 'utf8', timeout: 5000 });

/** Whether the node on `port` answers and says `cluster_state:ok`. */
function clusterOk(port) {
  try {
    return redisCli(port, 'CLUSTER', 'INFO').includes('cluster_state:ok');
  } catch {
    return false;
  }
}

/**
 * Starts a Redis Cluster of `masters` masters and no replicas (`redis-cli --cluster create`),
 * each node a redis-server on free ports (client and cluster bus) with its own nodes.conf
 * in a temporary directory and no data saved. Resolves once every node says
 * `cluster_state:ok`, with `url` in Trestle's `REDIS_URL` form for a cluster
 * (`redis-cluster://first?node=second&node=third`), `nodes` (each with `port`, `stop()`,
 * `start()`, and `restart()`: a stop and a start; the node keeps its slots, from its
 * nodes.conf, and loses its keys), `ready()` (waits for `cluster_state:ok` on every node)
 * and `stop()`.
 */
export async function startRedisCluster({ masters = 3 } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trestle-redis-cluster-'));
  const nodes = [];
  const cluster = {
    nodes,
    url: '',
    /** Waits until every node answers and says `cluster_state:ok`. */
    async ready(timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      while (!nodes.every((n) => clusterOk(n.port))) {
        if (Date.now() > deadline) throw new Error('the Redis Cluster did not reach cluster_state:ok');
        await delay(100); // the cluster bus gives no other signal
      }
    },
    async stop() {
      await Promise.all(nodes.map((n) => n.stop()));
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  for (let i = 0; i < masters; i++) {
    const port = await freePort();
    const busPort = await freePort();
    // The same nodes.conf on the same ports: a restarted master takes its slots back.
    const node = redisProcess(port, undefined, () => [
      ...['--port', String(port), '--cluster-port', String(busPort), '--bind', '127.0.0.1'],
      ...['--cluster-enabled', 'yes', '--cluster-config-file', path.join(dir, `nodes-${port}.conf`)],
      ...['--dir', dir, '--save', '', '--appendonly', 'no'],
    ]);
    node.restart = async () => {
      await node.stop();
      await node.start();
    };
    nodes.push(node);
  }
  try {
    await Promise.all(nodes.map((n) => n.start()));
    const addresses = nodes.map((n) => `127.0.0.1:${n.port}`);
    execFileSync('redis-cli', ['--cluster', 'create', ...addresses, '--cluster-replicas', '0', '--cluster-yes'], {
      stdio: 'ignore',
      timeout: 30_000,
    });
    await cluster.ready();
    cluster.url = `redis-cluster://${addresses[0]}?${addresses
      .slice(1)
      .map((a) => `node=${a}`)
      .join('&')}`;
  } catch (e) {
    await cluster.stop();
    throw e;
  }
  return cluster;
}

/** The port of the master of `cluster` that serves the hash slot of `key` (a key or a shard channel). */
export function clusterNodeOf(cluster, key) {
  const port = cluster.nodes[0].port;
  const slot = Number(redisCli(port, 'CLUSTER', 'KEYSLOT', key).trim());
  for (const line of redisCli(port, 'CLUSTER', 'NODES').split('\n')) {
    const [, address, flags, , , , , , ...ranges] = line.split(' ');
    if (!flags?.includes('master')) continue;
    for (const r of ranges) {
      const [lo, hi = lo] = r.split('-').map(Number);
      if (slot >= lo && slot <= hi) return cluster.nodes.find((n) => address.startsWith(`127.0.0.1:${n.port}@`));
    }
  }
  throw new Error(`no master serves the slot of ${key}`);
}
