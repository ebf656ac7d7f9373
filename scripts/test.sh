#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests, then the black-box client-tests
# (node --test + socket.io-client) against the release binary. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# Cluster tests start their own redis-server (Redis 7 or later) on free ports.
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# redis-cli (redis-tools): the Redis Cluster tests create their cluster with it.
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
# Store and cluster tests use a real PostgreSQL, started below on a free port.
[ -n "$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null)" ] || need_apt+=(postgresql)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
# The load-balancer test runs docker/nginx.conf in front of two instances.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
# The admin dashboard's end-to-end test drives admin-ui's UI in Debian's headless Chromium
# (playwright-core, no browser download).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# python-socketio (the Origin test's Python client) goes into a virtualenv of its own.
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} through apt"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq "${need_apt[@]}"
fi

# One throwaway PostgreSQL for the whole run; each test creates its own database in it.
pg_dir=$(mktemp -d)
cleanup() { ./scripts/pg.sh stop "$pg_dir"; rm -rf "$pg_dir"; }
trap cleanup EXIT
TEST_DATABASE_URL=$(./scripts/pg.sh start "$pg_dir")
export TEST_DATABASE_URL
echo "test PostgreSQL: $TEST_DATABASE_URL"

echo "== cargo build --release"
cargo build --release --locked

echo "== cargo test (unit and integration)"
cargo test --release --locked

echo "== client-tests (node --test, socket.io-client)"
(
  cd client-tests
  npm ci --no-audit --no-fund --loglevel=error
  [ -x .venv/bin/python ] || python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check -r python/requirements.txt
  TRESTLE_BIN="$PWD/../target/release/trestle" npm test
)

# Every scenario of bench/loadgen against Trestle, a few clients for about a second each:
# fails if a scenario misses deliveries or acks. No timing is asserted.
echo "== load generator smoke"
cargo build --release --locked --manifest-path bench/loadgen/Cargo.toml --target-dir target
target/release/loadgen smoke --trestle-bin target/release/trestle

# docker/Dockerfile without a Docker engine (a few seconds): its build context holds every
# file the build reads, its builder steps replay, the HEALTHCHECK works (docker/README.md).
echo "== docker image context (node --test docker/context.test.mjs)"
TRESTLE_BIN="$PWD/target/release/trestle" node --test docker/context.test.mjs
