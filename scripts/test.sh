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
# The load-balancer test runs docker/nginx.conf in front of two instances.
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} through apt"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq "${need_apt[@]}"
fi

echo "== cargo build --release"
cargo build --release --locked

echo "== cargo test (unit and integration)"
cargo test --release --locked

echo "== client-tests (node --test, socket.io-client)"
(
  cd client-tests
  npm ci --no-audit --no-fund --loglevel=error
  TRESTLE_BIN="$PWD/../target/release/trestle" npm test
)
