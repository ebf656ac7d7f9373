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
  let proc = null;
  const redis = {
    port,
    url: password ? `redis://:${password}@127.0.0.1:${port}` : `redis://127.0.0.1:${port}`,
    /** The redis-server process id (to stop it with SIGSTOP: a hung Redis). */
    get pid() {
      return proc?.pid;
    },
    async start() {
      const auth = password ? ['--requirepass', password] : [];
      proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...auth], {
        stdio: 'ignore',
      });
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
  await redis.start();
  return redis;
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
