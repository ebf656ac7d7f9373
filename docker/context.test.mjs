// Checks docker/Dockerfile without a Docker engine, in seconds: scripts/test.sh runs it
// (`node --test docker/context.test.mjs`) after the release build.
//
// 1. Build context. The repository is filtered through docker/Dockerfile.dockerignore with
//    Docker's own matching rules (moby/patternmatcher: last matching pattern wins, `!`
//    re-includes, a pattern matching a directory matches everything under it), into a temp
//    directory. The root .dockerignore (read by builders that ignore the Dockerfile-specific
//    file) must be identical.
// 2. Builder stage replay. Its WORKDIR, COPY and RUN lines are replayed in order in a temp
//    directory standing for the container's /: COPY takes files from the filtered context
//    only (a source missing from it fails, as in `docker build`), RUN runs under /bin/sh in
//    WORKDIR, with `cargo` on PATH replaced by a shim that, instead of compiling, snapshots
//    the tree, runs the real `cargo metadata --locked` there (so a missing
//    vendored manifest or an outdated Cargo.lock fails the RUN, as the real build does) and
//    leaves target/release/trestle behind: the binary already built from this repository
//    when the sources are the repository's, a do-nothing stub otherwise.
// 3. Every cargo invocation of the replay must have found the files the real build reads:
//    the files listed in target/release/trestle.d (cargo's dep-info of the release binary:
//    every source file, build.rs, the migrations embedded by sqlx::migrate!, the vendored
//    crates' sources and the docs they include), the manifests of the local packages and
//    Cargo.lock, byte for byte; and cargo must see the same library, binary and build-script
//    targets as in the repository (build.rs left out silently drops the build script). The
//    dependency-layer build (stub sources) needs all of that for the vendored crates, the
//    final build for everything.
// 4. Runtime stage: COPY --from the builder picks up the real binary, ENTRYPOINT runs it,
//    USER is not root, and the HEALTHCHECK command itself, run with the image's ENV against
//    the binary, passes on a healthy server and fails with no server, on a 503 and on a
//    server without /health.
// 5. compose.yaml builds its trestleN services from this Dockerfile with the repository as
//    context, and nginx.conf names exactly those services on the image's port.
//
// What it cannot check: the base images, apt-get and the real compile inside the image.
// docker/build-image.sh does that with a Docker engine (see docker/README.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
// Overridable so that the test can be pointed at a broken copy (see docker/README.md).
const dockerfilePath = path.resolve(repo, process.env.DOCKERFILE || 'docker/Dockerfile');
const ignorePath = process.env.DOCKERIGNORE
  ? path.resolve(repo, process.env.DOCKERIGNORE)
  : `${dockerfilePath}.dockerignore`;
const composePath = path.join(repo, 'docker/compose.yaml');
const nginxPath = path.join(repo, 'docker/nginx.conf');
const bin = path.resolve(repo, process.env.TRESTLE_BIN || 'target/release/trestle');

// ------------------------------------------------------------------ dockerignore

/** Parses a .dockerignore like moby/patternmatcher's ReadAll. */
export function parseIgnore(text) {
  const patterns = [];
  for (let line of text.replace(/^\uFEFF/, '').split(/\r?\n/)) {
    line = line.trim();
    if (!line || line.startsWith('#')) continue;
    let exclusion = false;
    if (line.startsWith('!')) {
      exclusion = true;
      line = line.slice(1).trim();
    }
    if (!line) throw new Error('dockerignore: "!" without a pattern');
    line = path.posix.normalize(line);
    if (line.length > 1 && line.endsWith('/')) line = line.slice(0, -1);
    if (line.length > 1 && line.startsWith('/')) line = line.slice(1);
    if (/[[\]\\]/.test(line)) {
      // Character classes and escapes: not needed so far; refuse rather than guess.
      throw new Error(`dockerignore pattern ${line}: [ ] and \\ are not supported by this test`);
    }
    patterns.push({ text: line, exclusion, re: patternRegex(line) });
  }
  return patterns;
}

function patternRegex(p) {
  let re = '^';
  for (let i = 0; i < p.length; i++) {
    const c = p[i];
    if (c === '*') {
      if (p[i + 1] === '*') {
        i++;
        if (p[i + 1] === '/') i++;
        re += i + 1 >= p.length ? '.*' : '(.*/)?';
      } else {
        re += '[^/]*';
      }
    } else if (c === '?') {
      re += '[^/]';
    } else {
      re += c.replace(/[.+^${}()|]/g, '\\$&');
    }
  }
  return new RegExp(`${re}$`);
}

/** True when `rel` (a slash-separated path) is left out of the context. */
export function ignored(patterns, rel) {
  const parents = path.posix.dirname(rel).split('/');
  let matched = false;
  for (const p of patterns) {
    if (p.exclusion !== matched) continue;
    let m = p.re.test(rel);
    if (!m && parents[0] !== '.') {
      for (let i = 1; i <= parents.length && !m; i++) m = p.re.test(parents.slice(0, i).join('/'));
    }
    if (m) matched = !p.exclusion;
  }
  return matched;
}

/** Relative paths of the files in the context (symlinks count as files). */
function contextFiles(patterns) {
  // Directories that are ignored are still entered when a `!` pattern could re-include
  // something below them (as BuildKit's walker does).
  const reincludes = patterns.filter((p) => p.exclusion).map((p) => p.text.split(/[*?]/)[0]);
  const mayReinclude = (dir) =>
    reincludes.some((pre) => pre === '' || pre.startsWith(`${dir}/`) || `${dir}/`.startsWith(pre.endsWith('/') ? pre : `${pre}/`) || pre === dir);
  const out = [];
  const walk = (relDir) => {
    for (const e of fs.readdirSync(path.join(repo, relDir), { withFileTypes: true })) {
      const rel = relDir ? `${relDir}/${e.name}` : e.name;
      if (e.isDirectory()) {
        if (!ignored(patterns, rel) || mayReinclude(rel)) walk(rel);
      } else if (!ignored(patterns, rel)) {
        out.push(rel);
      }
    }
  };
  walk('');
  return out.sort();
}

// ------------------------------------------------------------------ Dockerfile

/** Instructions of a Dockerfile: [{ op, args, line }], continuations joined, comments dropped. */
export function parseDockerfile(text) {
  const out = [];
  let cur = null;
  let lineNo = 0;
  for (const raw of text.split(/\r?\n/)) {
    lineNo++;
    const trimmed = raw.trim();
    if (cur === null && (trimmed === '' || trimmed.startsWith('#'))) continue;
    if (cur !== null && trimmed.startsWith('#')) continue;
    const cont = /\\\s*$/.test(raw);
    const body = cont ? raw.replace(/\\\s*$/, '') : raw;
    if (cur === null) cur = { text: body.trim(), line: lineNo };
    else cur.text += ` ${body.trim()}`;
    if (!cont) {
      const m = /^(\S+)\s*(.*)$/.exec(cur.text);
      out.push({ op: m[1].toUpperCase(), args: m[2], line: cur.line });
      cur = null;
    }
  }
  return out;
}

/** Splits a stage list out of the instructions. */
function stages(instrs) {
  const list = [];
  for (const ins of instrs) {
    if (ins.op === 'FROM') {
      const m = /^(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$/i.exec(ins.args);
      list.push({ image: m[1], name: m[2] ?? String(list.length), instrs: [] });
    } else if (list.length) {
      list.at(-1).instrs.push(ins);
    }
  }
  return list;
}

/** COPY/ADD arguments: { flags, srcs, dest }. */
function copyArgs(args) {
  const flags = {};
  let rest = args;
  for (let m; (m = /^--([a-z-]+)(?:=(\S+))?\s+/.exec(rest)); rest = rest.slice(m[0].length)) {
    flags[m[1]] = m[2] ?? true;
  }
  const words = rest.trim().startsWith('[') ? JSON.parse(rest) : rest.trim().split(/\s+/);
  return { flags, srcs: words.slice(0, -1), dest: words.at(-1) };
}

/** ENV arguments (`k=v k2="v 2"` or `k v`). */
function envArgs(args) {
  const env = {};
  if (!/^[A-Za-z_][A-Za-z0-9_]*=/.test(args)) {
    const m = /^(\S+)\s+(.*)$/.exec(args);
    env[m[1]] = m[2];
    return env;
  }
  const re = /([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|'[^']*'|\S*)/g;
  for (let m; (m = re.exec(args)); ) {
    let v = m[2];
    if (v.startsWith('"')) v = JSON.parse(v);
    else if (v.startsWith("'")) v = v.slice(1, -1);
    env[m[1]] = v;
  }
  return env;
}

const resolveIn = (workdir, p) => (p.startsWith('/') ? path.posix.normalize(p) : path.posix.join(workdir, p));

function copyTree(src, dst) {
  const st = fs.lstatSync(src);
  if (st.isDirectory()) {
    fs.mkdirSync(dst, { recursive: true });
    for (const e of fs.readdirSync(src)) copyTree(path.join(src, e), path.join(dst, e));
  } else {
    fs.mkdirSync(path.dirname(dst), { recursive: true });
    fs.copyFileSync(src, dst);
    fs.chmodSync(dst, st.mode & 0o7777);
  }
}

// ------------------------------------------------------------------ cargo

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 256 << 20, ...opts });
  if (r.error) throw r.error;
  return r;
}

const hostTriple = () => /^host: (\S+)$/m.exec(run('rustc', ['-vV']).stdout)[1];

// --filter-platform: without it cargo wants every package of every platform downloaded.
function metadata(dir) {
  const r = run('cargo', ['metadata', '--locked', '--format-version', '1', '--filter-platform', hostTriple()], { cwd: dir });
  assert.equal(r.status, 0, `cargo metadata in ${dir}:\n${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** Local (path) packages: [{ name, root (relative dir), manifest (relative), targets }]. */
function localPackages(meta, base) {
  const kinds = new Set(['lib', 'rlib', 'proc-macro', 'custom-build', 'bin']);
  return meta.packages
    .filter((p) => p.source === null)
    .map((p) => {
      const rel = (f) => path.relative(base, f).split(path.sep).join('/');
      return {
        name: p.name,
        root: rel(path.dirname(p.manifest_path)),
        manifest: rel(p.manifest_path),
        targets: p.targets
          .filter((t) => t.kind.some((k) => kinds.has(k)))
          .map((t) => `${t.kind.join(',')} ${t.name} ${rel(t.src_path)}`)
          .sort(),
      };
    })
    .sort((a, b) => a.name.localeCompare(b.name));
}

/** Files (and directories) of the repository listed in a make-style dep-info file. */
function depInfoInputs(file) {
  const text = fs.readFileSync(file, 'utf8').replace(/\\\n/g, ' ');
  const firstLine = text.split('\n')[0];
  const deps = firstLine.slice(firstLine.indexOf(': ') + 2);
  const paths = deps.match(/(?:\\ |[^\s])+/g).map((p) => p.replace(/\\ /g, ' '));
  const real = fs.realpathSync(repo);
  return paths
    .map((p) => path.relative(real, fs.existsSync(p) ? fs.realpathSync(p) : p).split(path.sep).join('/'))
    .filter((rel) => !rel.startsWith('..') && !path.isAbsolute(rel) && !rel.startsWith('target/'));
}

// ------------------------------------------------------------------ replay

const cargoShim = `#!/usr/bin/env bash
# Stands in for cargo in the replayed RUN lines (docker/context.test.mjs).
set -euo pipefail
n=$(( $(ls "$SHIM_SNAPSHOTS" | wc -l) + 1 ))
snap="$SHIM_SNAPSHOTS/$n"
mkdir -p "$snap/tree"
printf '%s\\n' "$*" > "$snap/args"
pwd > "$snap/cwd"
tar --exclude=./target -cf - . | tar -C "$snap/tree" -xf -
case " $* " in
  *" build "*) ;;
  *) echo "cargo shim: only 'cargo build' is replayed, not: cargo $*" >&2; exit 99 ;;
esac
"$SHIM_REAL_CARGO" metadata --locked --format-version 1 --filter-platform "$SHIM_HOST" > "$snap/metadata.json"
mkdir -p target/release
if cmp -s src/main.rs "$SHIM_REPO/src/main.rs" && cmp -s src/lib.rs "$SHIM_REPO/src/lib.rs"; then
  cp "$SHIM_BIN" target/release/trestle
else
  printf '#!/bin/sh\\nexit 0\\n' > target/release/trestle
  chmod +x target/release/trestle
fi
`;

/**
 * Replays the builder stage into `root` (standing for /). Returns { snapshots, workdir }
 * or throws with the failing step.
 */
function replayBuilder(stage, ctxDir, root, tmp) {
  const snapDir = path.join(tmp, 'snapshots');
  const shimDir = path.join(tmp, 'shim');
  fs.mkdirSync(snapDir);
  fs.mkdirSync(shimDir);
  fs.writeFileSync(path.join(shimDir, 'cargo'), cargoShim, { mode: 0o755 });
  const realCargo = run('bash', ['-c', 'command -v cargo']).stdout.trim();
  assert.ok(realCargo, 'cargo not on PATH');
  let workdir = '/';
  const host = (p) => path.join(root, p);
  for (const ins of stage.instrs) {
    const where = `${path.relative(repo, dockerfilePath)}:${ins.line} ${ins.op} ${ins.args}`;
    if (ins.op === 'WORKDIR') {
      workdir = resolveIn(workdir, ins.args.trim());
      fs.mkdirSync(host(workdir), { recursive: true });
    } else if (ins.op === 'COPY' || ins.op === 'ADD') {
      const { flags, srcs, dest } = copyArgs(ins.args);
      if (flags.from) throw new Error(`${where}: COPY --from in the builder stage is not replayed`);
      let to = resolveIn(workdir, dest);
      const intoDir = dest.endsWith('/') || srcs.length > 1;
      for (const src of srcs) {
        if (/[*?[$]/.test(src)) throw new Error(`${where}: wildcards and variables are not replayed`);
        const from = path.join(ctxDir, path.posix.normalize(src));
        if (!fs.existsSync(from)) {
          throw new Error(`${where}: "${src}" is not in the build context (docker build fails: file not found)`);
        }
        const isDir = fs.statSync(from).isDirectory();
        const target = isDir || !intoDir ? to : path.posix.join(to, path.posix.basename(src));
        copyTree(from, host(target));
      }
    } else if (ins.op === 'RUN') {
      if (ins.args.trim().startsWith('[') || /(^|[\s;&|=])\//.test(ins.args)) {
        // Absolute paths would touch this machine, not the replayed tree.
        throw new Error(`${where}: exec form and absolute paths are not replayed; extend the test`);
      }
      const r = run('/bin/sh', ['-c', ins.args], {
        cwd: host(workdir),
        env: {
          ...process.env,
          PATH: `${shimDir}:${process.env.PATH}`,
          SHIM_SNAPSHOTS: snapDir,
          SHIM_REAL_CARGO: realCargo,
          SHIM_REPO: repo,
          SHIM_BIN: bin,
          SHIM_HOST: hostTriple(),
        },
      });
      if (r.status !== 0) {
        throw new Error(`${where}\nfailed (exit ${r.status}):\n${r.stdout}${r.stderr}`);
      }
    } else if (!['ARG', 'ENV', 'LABEL', 'SHELL'].includes(ins.op)) {
      throw new Error(`${where}: not replayed; extend the test`);
    }
  }
  const snapshots = fs
    .readdirSync(snapDir)
    .sort((a, b) => a - b)
    .map((n) => {
      const d = path.join(snapDir, n);
      return {
        args: fs.readFileSync(path.join(d, 'args'), 'utf8').trim(),
        cwd: fs.readFileSync(path.join(d, 'cwd'), 'utf8').trim(),
        tree: path.join(d, 'tree'),
        meta: JSON.parse(fs.readFileSync(path.join(d, 'metadata.json'), 'utf8')),
      };
    });
  return { snapshots, workdir };
}

// ------------------------------------------------------------------ helpers

const freePort = () =>
  new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

/** Runs an exec-form command; resolves to its exit code (null when killed at timeoutMs). */
function runCheck(argv, env, timeoutMs) {
  return new Promise((resolve) => {
    const p = spawn(argv[0], argv.slice(1), { env, stdio: 'ignore' });
    const t = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.once('exit', (code) => {
      clearTimeout(t);
      resolve(code);
    });
  });
}

function seconds(s) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)$/.exec(s);
  assert.ok(m, `duration ${s}`);
  return Number(m[1]) * { ms: 1, s: 1000, m: 60000 }[m[2]];
}

// ------------------------------------------------------------------ the test

test('docker/Dockerfile builds from its context and the image runs healthy', async (t) => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'trestle-docker-'));
  t.after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  // The binary and its dep-info must be the current build of this repository.
  const b = run('cargo', ['build', '--release', '--locked', '--bin', 'trestle'], { cwd: repo, stdio: ['ignore', 'ignore', 'pipe'] });
  assert.equal(b.status, 0, `cargo build --release:\n${b.stderr}`);
  assert.ok(fs.existsSync(`${bin}.d`), `${bin}.d (cargo dep-info) missing`);

  const ignoreText = fs.readFileSync(ignorePath, 'utf8');
  const patterns = parseIgnore(ignoreText);
  const files = contextFiles(patterns);

  await t.test('the root .dockerignore is the same list', () => {
    const root = path.join(repo, '.dockerignore');
    assert.ok(fs.existsSync(root), '.dockerignore missing at the repository root');
    assert.equal(fs.readFileSync(root, 'utf8'), ignoreText, '.dockerignore differs from docker/Dockerfile.dockerignore');
  });

  await t.test('the context leaves build output, git and node_modules out', () => {
    for (const p of ['target/release/trestle', '.git/HEAD', 'client-tests/node_modules/x/package.json', 'bench/x', 'docs/x.md']) {
      assert.ok(ignored(patterns, p), `${p} would be in the build context`);
    }
    const bytes = files.reduce((n, f) => n + fs.lstatSync(path.join(repo, f)).size, 0);
    assert.ok(bytes < 20e6, `build context is ${bytes} bytes`);
  });

  // The context, materialised.
  const ctxDir = path.join(tmp, 'context');
  for (const f of files) copyTree(path.join(repo, f), path.join(ctxDir, f));

  const all = stages(parseDockerfile(fs.readFileSync(dockerfilePath, 'utf8')));
  const final = all.at(-1);
  const fromCopies = final.instrs.filter((i) => i.op === 'COPY' && copyArgs(i.args).flags.from);
  assert.equal(fromCopies.length, 1, 'the runtime stage should copy exactly one thing from the builder');
  const binCopy = copyArgs(fromCopies[0].args);
  const builder = all.find((s) => s.name === binCopy.flags.from);
  assert.ok(builder, `stage ${binCopy.flags.from} not found`);

  // What the real build reads, from the repository's own build.
  const repoPkgs = localPackages(metadata(repo), repo);
  const rootPkg = repoPkgs.find((p) => p.root === '');
  assert.ok(rootPkg, 'root package');
  const inputs = [
    ...new Set([
      'Cargo.lock',
      ...repoPkgs.map((p) => p.manifest),
      ...depInfoInputs(`${bin}.d`),
    ]),
  ].sort();
  // Sanity: the dep-info is the complete list this test relies on.
  for (const must of ['build.rs', 'src/main.rs', 'migrations', 'vendor/engineioxide/src/lib.rs']) {
    assert.ok(inputs.includes(must), `${must} not among the build inputs: dep-info format changed?`);
  }
  const ownedBy = (rel) =>
    repoPkgs
      .filter((p) => p.root === '' || rel === p.root || rel.startsWith(`${p.root}/`))
      .sort((a, b) => b.root.length - a.root.length)[0];

  const root = path.join(tmp, 'root');
  fs.mkdirSync(root);
  let replay = null;
  let replayError = null;
  try {
    replay = replayBuilder(builder, ctxDir, root, tmp);
  } catch (e) {
    replayError = e;
  }
  await t.test('the builder stage replays (COPY from the context, RUN with a cargo stand-in)', () => {
    if (replayError) throw replayError;
    assert.ok(replay.snapshots.length > 0, 'the builder stage never runs cargo build');
  });

  await t.test('every cargo build in the image finds every file the build reads', () => {
    assert.ok(replay, 'the builder stage did not replay (see above)');
    let finalBuilds = 0;
    for (const [i, s] of replay.snapshots.entries()) {
      const realSources = ['src/main.rs', 'src/lib.rs'].every((f) => {
        const p = path.join(s.tree, f);
        return fs.existsSync(p) && fs.readFileSync(p).equals(fs.readFileSync(path.join(repo, f)));
      });
      if (realSources) finalBuilds++;
      const label = `cargo ${s.args} (build ${i + 1} of the builder stage, ${realSources ? 'the crate' : 'dependency layer, stub sources'})`;
      // The dependency layer builds the vendored crates; the final build everything.
      const needed = inputs.filter((rel) => realSources || ownedBy(rel) !== rootPkg || rel === 'Cargo.lock' || rel === 'Cargo.toml');
      const missing = [];
      for (const rel of needed) {
        const have = path.join(s.tree, rel);
        const want = path.join(repo, rel);
        if (!fs.existsSync(have)) missing.push(`${rel} (missing)`);
        else if (fs.statSync(want).isFile() && !fs.readFileSync(have).equals(fs.readFileSync(want))) missing.push(`${rel} (differs)`);
      }
      assert.deepEqual(missing, [], `${label}: files the build reads are not in the image`);
      const pkgs = localPackages(s.meta, s.cwd);
      const expect = realSources ? repoPkgs : repoPkgs.filter((p) => p !== rootPkg);
      for (const want of expect) {
        const got = pkgs.find((p) => p.name === want.name);
        assert.ok(got, `${label}: package ${want.name} unknown to cargo`);
        assert.deepEqual(got.targets, want.targets, `${label}: cargo sees other targets for ${want.name}`);
      }
    }
    assert.ok(finalBuilds > 0, 'no cargo build in the builder stage sees the crate\'s own sources');
  });

  const env = {};
  let user = null;
  let health = null;
  let entrypoint = null;
  for (const ins of final.instrs) {
    if (ins.op === 'ENV') Object.assign(env, envArgs(ins.args));
    if (ins.op === 'USER') user = ins.args.trim();
    if (ins.op === 'HEALTHCHECK') health = ins.args;
    if (ins.op === 'ENTRYPOINT') entrypoint = JSON.parse(ins.args);
  }

  await t.test('the runtime stage gets the real binary and runs it as a non-root user', () => {
    assert.ok(replay, 'the builder stage did not replay (see above)');
    const src = path.join(root, resolveIn('/', binCopy.srcs[0]));
    assert.ok(fs.existsSync(src), `COPY --from=${binCopy.flags.from} ${binCopy.srcs[0]}: not produced by the builder stage`);
    assert.ok(fs.readFileSync(src).equals(fs.readFileSync(bin)), `${binCopy.srcs[0]} is not the binary built from the crate's sources`);
    assert.ok(entrypoint, 'ENTRYPOINT missing');
    const dest = binCopy.dest.endsWith('/') ? path.posix.join(binCopy.dest, path.posix.basename(binCopy.srcs[0])) : binCopy.dest;
    assert.equal(entrypoint[0], dest, 'ENTRYPOINT does not run the copied binary');
    assert.ok(user, 'no USER: the image would run as root');
    const name = user.split(':')[0];
    assert.ok(!['root', '0'].includes(name), `USER ${user} is root`);
    assert.ok(
      final.instrs.some((i) => i.op === 'RUN' && /\buseradd\b/.test(i.args) && i.args.includes(name)),
      `user ${name} is not created in the runtime stage`,
    );
  });

  await t.test('HEALTHCHECK passes on the running server and fails otherwise', async () => {
    assert.ok(health, 'HEALTHCHECK missing (compose waits for service_healthy)');
    const m = /^((?:--\S+\s+)*)CMD\s+(\[.*\])\s*$/.exec(health);
    assert.ok(m, `HEALTHCHECK ${health}: expected options and CMD [exec form]`);
    const opts = Object.fromEntries([...m[1].matchAll(/--([a-z-]+)=(\S+)/g)].map((x) => [x[1], x[2]]));
    const timeout = seconds(opts.timeout ?? '30s');
    const argv = JSON.parse(m[2]);
    assert.ok(argv.join(' ').includes('/health'), 'HEALTHCHECK does not ask /health');
    const port = await freePort();
    const dataDir = fs.mkdtempSync(path.join(tmp, 'data-'));
    const imageEnv = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', ...env, PORT: String(port), DATA_DIR: dataDir };
    assert.equal(env.HOST, '0.0.0.0', 'HOST in the image must let 127.0.0.1 in (the HEALTHCHECK connects there)');

    assert.notEqual(await runCheck(argv, imageEnv, timeout), 0, 'passes with no server listening');
    for (const [status, p] of [[503, '/health'], [200, '/elsewhere']]) {
      const srv = http.createServer((req, res) => {
        res.writeHead(req.url === p ? status : 404).end('{}');
      });
      await new Promise((r) => srv.listen(port, '127.0.0.1', r));
      try {
        assert.notEqual(await runCheck(argv, imageEnv, timeout), 0, `passes when ${p} answers ${status}`);
      } finally {
        await new Promise((r) => srv.close(r));
      }
    }

    const proc = spawn(bin, entrypoint.slice(1), {
      env: { ...imageEnv, JWT_SECRET: 'docker-test-secret', API_KEY: 'docker-test-key' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    proc.stderr.on('data', (d) => (stderr += d));
    const exited = new Promise((r) => proc.once('exit', r));
    try {
      let code = null;
      for (const deadline = Date.now() + seconds(opts['start-period'] ?? '10s') + 5000; Date.now() < deadline; ) {
        code = await runCheck(argv, imageEnv, timeout);
        if (code === 0 || proc.exitCode !== null) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      assert.equal(code, 0, `HEALTHCHECK fails against the running server\n${stderr}`);
    } finally {
      proc.kill('SIGTERM');
      await exited;
    }
  });

  await t.test('compose.yaml builds its instances from this Dockerfile; nginx.conf names them', () => {
    const compose = fs.readFileSync(composePath, 'utf8');
    const anchor = /^x-trestle: &trestle\n((?:[ #].*\n|\n)*)/m.exec(compose);
    assert.ok(anchor, 'x-trestle anchor missing in compose.yaml');
    const ctx = /^ {4}context: *(\S+)/m.exec(anchor[1]);
    const df = /^ {4}dockerfile: *(\S+)/m.exec(anchor[1]);
    assert.ok(ctx && df, 'x-trestle: build.context / build.dockerfile missing');
    const ctxAbs = path.resolve(path.dirname(composePath), ctx[1]);
    assert.equal(ctxAbs, repo, 'compose build context is not the repository root');
    assert.equal(path.resolve(ctxAbs, df[1]), path.join(repo, 'docker/Dockerfile'));
    const services = [...compose.matchAll(/^ {2}(trestle\d+):\n((?: {4}.*\n|\n)*)/gm)];
    assert.ok(services.length >= 1, 'no trestleN service');
    for (const [, name, body] of services) assert.match(body, /<<: \*trestle/, `${name} does not use the trestle build`);
    const nginx = fs.readFileSync(nginxPath, 'utf8');
    const upstream = [...nginx.matchAll(/^\s*server\s+(trestle\d+):(\d+)/gm)];
    assert.deepEqual(upstream.map((u) => u[1]).sort(), services.map((s) => s[1]).sort(), 'nginx.conf upstream vs compose services');
    for (const u of upstream) assert.equal(u[2], env.PORT, `nginx reaches ${u[1]} on ${u[2]}, the image listens on ${env.PORT}`);
  });
});

