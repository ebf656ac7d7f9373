// README as a new user reads it: its run command starts the server as written, and its
// settings table lists exactly the settings `trestle --help` knows, with the same defaults.
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { IS_REFERENCE, freePort, rawRequest, waitUntil } from './helpers.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
const bin = process.env.TRESTLE_BIN ? path.resolve(root, 'client-tests', process.env.TRESTLE_BIN) : path.join(root, 'target/release/trestle');

/** The body of the first fenced block after the heading `## title`. */
function blockAfter(title) {
  const at = readme.indexOf(`\n## ${title}\n`);
  assert.ok(at >= 0, `README has no "## ${title}" section`);
  const m = readme.slice(at).match(/```[a-z]*\n([\s\S]*?)```/);
  assert.ok(m, `no code block under "## ${title}"`);
  return m[1].trim();
}

/** `| \`NAME\` | default | meaning |` rows of the table under "## Configuration". */
function readmeSettings() {
  const at = readme.indexOf('\n## Configuration\n');
  const end = readme.indexOf('\n## ', at + 1);
  const rows = new Map();
  for (const line of readme.slice(at, end).split('\n')) {
    const m = line.match(/^\| `([A-Z][A-Z0-9_]*)` \| (.*?) \|/);
    if (m) rows.set(m[1], m[2].trim());
  }
  return rows;
}

/** Settings of `trestle --help`: env name → default (undefined when it has none). */
function helpSettings() {
  // A clean environment: clap prints the value of a set variable in place of its default.
  const help = execFileSync(bin, ['--help'], { env: { PATH: process.env.PATH }, encoding: 'utf8' });
  const settings = new Map();
  for (const option of help.split(/\n(?=\s{2,}(?:-\w, )?--[a-z])/)) {
    const env = option.match(/\[env: ([A-Z0-9_]+)=?\]/);
    if (!env) continue;
    const def = option.match(/\[default: ([^\]]*)\]/);
    settings.set(env[1], def ? def[1] : undefined);
  }
  return settings;
}

const children = [];
after(() => {
  for (const c of children) {
    try {
      process.kill(-c.pid, 'SIGKILL');
    } catch {
      // the group is gone already
    }
  }
});

test("README's run command, as written (PORT added), serves /health", { skip: IS_REFERENCE && 'Trestle README' }, async () => {
  const command = blockAfter('Run');
  assert.match(command, /cargo run --release/, command);
  const port = await freePort();
  // The command runs as a shell line in the repository, as a user pastes it.
  const child = spawn('sh', ['-c', command], {
    cwd: root,
    env: { ...process.env, PORT: String(port), RUST_LOG: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  children.push(child);
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  // 'close': every process of the line (sh, cargo, trestle) has let go of the output.
  const closed = new Promise((r) => child.once('close', r));
  const healthy = async () => {
    if (child.exitCode !== null) throw new Error(`the command exited:\n${output}`);
    const res = await rawRequest(`http://127.0.0.1:${port}/health`, { timeoutMs: 1000 }).catch(() => null);
    return res?.status === 200;
  };
  // cargo may have to build first when the release binary is not up to date.
  await waitUntil(healthy, 600_000);
  assert.match(output, /listening/, output);
  // Ctrl-C as a user would stop it: the whole process group. The server stops gracefully.
  process.kill(-child.pid, 'SIGINT');
  await closed;
  assert.match(output, /stopped/, output);
});

test('the settings table lists the same settings as trestle --help, with the same defaults', { skip: IS_REFERENCE && 'Trestle binary' }, () => {
  const documented = readmeSettings();
  const help = helpSettings();
  // RUST_LOG is read by the logger, not by clap.
  const inHelpOnly = [...help.keys()].filter((k) => !documented.has(k));
  const inReadmeOnly = [...documented.keys()].filter((k) => !help.has(k) && k !== 'RUST_LOG');
  assert.deepEqual({ inHelpOnly, inReadmeOnly }, { inHelpOnly: [], inReadmeOnly: [] });
  assert.ok(help.size >= 40, `only ${help.size} settings read from --help`);
  for (const [name, cell] of documented) {
    // A single literal in backticks is a default to compare; prose (`—`, "SQLite file …") is not.
    const literal = cell.match(/^`([^`]*)`$/);
    if (!literal || help.get(name) === undefined) continue;
    assert.equal(literal[1], help.get(name) ?? '', `${name}: README says ${cell}, --help says ${help.get(name)}`);
  }
});

test('docs/events.md names only settings that exist, and the slow-reader bound as configured', { skip: IS_REFERENCE && 'Trestle docs' }, () => {
  const help = helpSettings();
  const events = fs.readFileSync(path.join(root, 'docs/events.md'), 'utf8');
  const named = new Set([...events.matchAll(/`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`/g)].map((m) => m[1]));
  const unknown = [...named].filter((n) => !help.has(n) && n !== 'RUST_LOG' && !n.startsWith('INVALID') && !['ROOM_FULL', 'NOT_FOUND', 'RATE_LIMITED', 'TOO_LARGE'].includes(n));
  assert.deepEqual(unknown, [], 'settings named in docs/events.md that trestle --help does not know');
  const slow = events.split('\n').find((l) => /slow reader/i.test(l));
  assert.ok(slow, 'docs/events.md says nothing of slow readers');
  for (const name of ['MAX_BUFFER_PACKETS', 'MAX_BUFFER_BYTES']) assert.ok(slow.includes(`\`${name}\``), `the slow-reader line does not name ${name}: ${slow}`);
  assert.ok(slow.includes(`(${help.get('MAX_BUFFER_PACKETS')})`), `the slow-reader line does not give the default ${help.get('MAX_BUFFER_PACKETS')}: ${slow}`);
});

test("every setting the Node backend reads is a Trestle setting too", { skip: IS_REFERENCE && 'Trestle binary' }, () => {
  // The Node peer (shared/reference-node) reads what the Node backend's deployments set.
  const config = fs.readFileSync(path.join(root, '../shared/reference-node/src/config.mjs'), 'utf8');
  const node = new Set([...config.matchAll(/(?:env\.|(?:num|bool|list)\(')([A-Z][A-Z0-9_]+)/g)].map((m) => m[1]));
  assert.ok(node.size >= 30, `only ${node.size} settings found in the Node peer's config`);
  const help = helpSettings();
  assert.deepEqual([...node].filter((n) => !help.has(n)), [], 'Node settings that Trestle does not know');
});
