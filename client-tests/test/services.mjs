// Real backing services for cluster tests (no tests in this file): a redis-server of the
// test's own on a free port, and Trestle instances that share it.
import { spawn } from 'node:child_process';
import net from 'node:net';
import { freePort, startServer } from './helpers.mjs';

const delay = (ms) => new Promise((r) => setTimeout(r, ms));

/** Sends PING on a fresh connection; resolves true on +PONG. */
function ping(port) {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    const done = (ok) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(500, () => done(false));
    sock.on('error', () => done(false));
    sock.on('connect', () => sock.write('PING\r\n'));
    sock.on('data', (d) => done(d.toString().startsWith('+PONG')));
  });
}

/**
 * Starts redis-server on a free port (nothing saved to disk). `stop()` ends it and
 * `start()` brings it back on the same port, for outage tests.
 */
export async function startRedis() {
  const port = await freePort();
  let proc = null;
  const redis = {
    port,
    url: `redis://127.0.0.1:${port}`,
    async start() {
      proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
        stdio: 'ignore',
      });
      const failed = new Promise((_, reject) => proc.once('error', reject));
      failed.catch(() => {});
      for (let i = 0; i < 200; i++) {
        if (await Promise.race([ping(port), failed])) return;
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

/** Starts `n` Trestle instances sharing one Redis (started here unless given). */
export async function startCluster(n, overrides = {}, redis = null) {
  const ownRedis = redis === null;
  redis ??= await startRedis();
  const instances = [];
  for (let i = 0; i < n; i++) instances.push(await startServer({ REDIS_URL: redis.url, ...overrides }));
  return {
    redis,
    instances,
    async stop() {
      await Promise.all(instances.map((s) => s.stop()));
      if (ownRedis) await redis.stop();
    },
  };
}
