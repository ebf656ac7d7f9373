// Operability as the Node backend's operators expect it: the start-up line that states the
// mode (and never a secret), warnings for settings that refuse everything, pretty logs
// without colour codes when not at a terminal, and the standard process_* metrics.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { API_KEY, JWT_SECRET, metrics, startServer, waitUntil } from './helpers.mjs';
import { createDatabase, startRedis } from './services.mjs';

const servers = [];
after(() => Promise.all(servers.map((s) => s.stop())));

async function start(env) {
  const server = await startServer({ RUST_LOG: 'info', ...env });
  servers.push(server);
  return server;
}

function jsonLines(server) {
  return server.output
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l));
}

// The start-up line comes after every start-up warning, so once it is in the output the
// warnings are too, and their absence can be asserted without waiting.
async function startupLine(server) {
  let line;
  await waitUntil(() => (line = jsonLines(server).find((l) => l.fields?.message === 'listening')));
  return line;
}

const warnings = (server) => jsonLines(server).filter((l) => l.level === 'WARN').map((l) => l.fields.message);

function assertNoSecret(server, secrets) {
  for (const secret of secrets) assert.ok(!server.output.includes(secret), `${secret} appears in the output:\n${server.output}`);
}

describe('start-up line', () => {
  test('a default start states its mode, without the secrets', async () => {
    const server = await start();
    const line = await startupLine(server);
    assert.equal(line.level, 'INFO');
    assert.deepEqual(line.fields, {
      message: 'listening',
      addr: `127.0.0.1:${server.port}`,
      auth_required: true,
      jwt_algorithms: 'HS256',
      cors_origins: '*',
      store: 'sqlite',
      redis: false,
      documents: `folder ${server.env.DATA_DIR}/documents`,
    });
    assertNoSecret(server, [JWT_SECRET, API_KEY]);
  });

  test('a configured start states the settings it was given', async () => {
    const server = await start({
      AUTH_REQUIRED: 'false',
      JWT_ALGORITHMS: 'HS384,HS256',
      CORS_ORIGINS: 'https://App.example.com/, http://localhost:5173',
      JWT_SECRET: 'operability-jwt-secret-value',
      API_KEY: 'operability-api-key-value',
      ACCESS_HOOK_URL: 'http://127.0.0.1:9/hook',
      ACCESS_HOOK_TOKEN: 'operability-hook-token-value',
    });
    const { fields } = await startupLine(server);
    assert.equal(fields.auth_required, false);
    assert.equal(fields.jwt_algorithms, 'HS384,HS256');
    assert.equal(fields.cors_origins, 'https://app.example.com,http://localhost:5173');
    assert.deepEqual(warnings(server), [], 'nothing here refuses everything');
    assertNoSecret(server, ['operability-jwt-secret-value', 'operability-api-key-value', 'operability-hook-token-value']);
  });

  test('PostgreSQL and Redis URLs with passwords: their kind is logged, never the URL', async () => {
    const redis = await startRedis({ password: 'operability-redis-password' });
    const database = new URL(createDatabase());
    // The test cluster trusts every local login, so any password is accepted.
    database.password = 'operability-pg-password';
    try {
      const server = await start({ DATABASE_URL: database.toString(), REDIS_URL: redis.url });
      const { fields } = await startupLine(server);
      assert.equal(fields.store, 'postgres');
      assert.equal(fields.redis, true);
      assertNoSecret(server, ['operability-redis-password', 'operability-pg-password', database.toString(), redis.url]);
      await server.stop();
    } finally {
      await redis.stop();
    }
  });
});

describe('warnings for settings that refuse everything', () => {
  test('no API_KEY: a warning that every /api/emit is refused; API_KEY set: none', async () => {
    const [unset, set] = await Promise.all([start({ API_KEY: undefined }), start()]);
    await Promise.all([startupLine(unset), startupLine(set)]);
    assert.deepEqual(warnings(unset), ['API_KEY is not set: every POST /api/emit is refused with 401']);
    assert.deepEqual(warnings(set), []);
  });

  test('CORS_ORIGINS with no usable origin and MAX_CONNECTIONS=0 are warned about', async () => {
    const server = await start({ CORS_ORIGINS: 'app.example.com, https://app.example.com/path', MAX_CONNECTIONS: '0' });
    await startupLine(server);
    const got = warnings(server);
    assert.ok(got.some((m) => m.includes('CORS_ORIGINS')), `no CORS_ORIGINS warning in ${JSON.stringify(got)}`);
    assert.ok(got.some((m) => m.includes('MAX_CONNECTIONS is 0')), `no MAX_CONNECTIONS warning in ${JSON.stringify(got)}`);
  });
});

describe('LOG_FORMAT=pretty', () => {
  test('has no ANSI colour codes when the output is not a terminal', async () => {
    const server = await start({ LOG_FORMAT: 'pretty', API_KEY: undefined });
    // a warning as well as info lines: levels are what colouring touches first
    await waitUntil(() => server.output.includes(' listening ') && server.output.includes('WARN'));
    assert.ok(!server.output.includes('\x1b['), `escape codes in:\n${JSON.stringify(server.output)}`);
    assert.match(server.output, /INFO .*listening .*auth_required=true/);
  });
});

describe('/metrics process metrics', () => {
  test('each standard process metric with a plausible value', async () => {
    const server = await start();
    const m = await metrics(server);
    const now = Date.now() / 1000;
    assert.ok(m.process_resident_memory_bytes > 1024 * 1024, `RSS ${m.process_resident_memory_bytes}`);
    assert.ok(m.process_virtual_memory_bytes >= m.process_resident_memory_bytes, `virtual ${m.process_virtual_memory_bytes}`);
    assert.ok(m.process_cpu_seconds_total >= 0, `cpu ${m.process_cpu_seconds_total}`);
    assert.ok(m.process_open_fds > 0, `open fds ${m.process_open_fds}`);
    assert.ok(m.process_max_fds >= m.process_open_fds || m.process_max_fds === 0, `max fds ${m.process_max_fds}`);
    assert.ok(Math.abs(m.process_start_time_seconds - now) < 120, `start time ${m.process_start_time_seconds}, now ${now}`);
    assert.ok(m.process_threads >= 1, `threads ${m.process_threads}`);
  });

  test('process_cpu_seconds_total is a counter, the others gauges', async () => {
    const server = await start();
    const res = await fetch(`${server.url}/metrics`);
    const text = await res.text();
    assert.match(text, /^# TYPE process_cpu_seconds_total counter$/m);
    for (const name of ['resident_memory_bytes', 'virtual_memory_bytes', 'open_fds', 'max_fds', 'start_time_seconds', 'threads']) {
      assert.match(text, new RegExp(`^# TYPE process_${name} gauge$`, 'm'));
    }
  });
});
