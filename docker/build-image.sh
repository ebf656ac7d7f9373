#!/usr/bin/env bash
# The heavy check: builds docker/Dockerfile with a real Docker engine (BuildKit) from the
# repository root, starts a container and checks it: running as uid 10001, the image's
# HEALTHCHECK reaching "healthy", GET /health through the published port, a clean stop on
# SIGTERM. Not part of scripts/test.sh (a from-scratch build takes 10 to 25 minutes on two
# cores, and CI has no Docker engine); see docker/README.md for when it was last run.
#
#   docker/build-image.sh                 # build trestle:local, then test it
#   BUILD=0 docker/build-image.sh         # test an already built trestle:local
#   IMAGE=trestle:test DOCKER=/usr/bin/docker docker/build-image.sh
set -euo pipefail
cd "$(dirname "$0")/.."

docker=${DOCKER:-docker}
image=${IMAGE:-trestle:local}
name=trestle-image-test-$$

if [ "${BUILD:-1}" != 0 ]; then
  echo "== docker build -f docker/Dockerfile -t $image ."
  DOCKER_BUILDKIT=1 "$docker" build --progress=plain -f docker/Dockerfile -t "$image" .
fi

cleanup() { "$docker" rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; "$docker" logs "$name" 2>&1 | tail -20 >&2 || true; exit 1; }

echo "== image settings"
user=$("$docker" image inspect "$image" --format '{{.Config.User}}')
[ -n "$user" ] && [ "${user%%:*}" != root ] && [ "${user%%:*}" != 0 ] || fail "image user is '$user'"
"$docker" image inspect "$image" --format '{{json .Config.Healthcheck}}' | grep -q '/health' ||
  fail "no HEALTHCHECK on /health"
"$docker" run --rm "$image" --version

echo "== docker run"
"$docker" run -d --name "$name" -p 127.0.0.1::3001 \
  -e JWT_SECRET=image-test-secret -e API_KEY=image-test-key "$image" >/dev/null
[ "$("$docker" exec "$name" id -u)" = 10001 ] || fail "not running as uid 10001"

echo "== waiting for the HEALTHCHECK"
status=
for _ in $(seq 60); do
  status=$("$docker" inspect "$name" --format '{{.State.Health.Status}}')
  [ "$status" = healthy ] && break
  [ "$("$docker" inspect "$name" --format '{{.State.Running}}')" = true ] || fail "container exited"
  sleep 1
done
[ "$status" = healthy ] || fail "health status: $status"

port=$("$docker" port "$name" 3001/tcp | head -1 | sed 's/.*://')
body=$(curl -fsS "http://127.0.0.1:$port/health") || fail "GET /health on port $port"
echo "GET /health: $body"
echo "$body" | grep -q '"ok"' || fail "unexpected /health body"
# The SQLite default in /data is writable by the non-root user.
"$docker" exec "$name" sh -c 'test -f /data/trestle.db' || fail "/data/trestle.db not created"

echo "== docker stop"
"$docker" stop -t 15 "$name" >/dev/null
code=$("$docker" inspect "$name" --format '{{.State.ExitCode}}')
[ "$code" = 0 ] || fail "exit code $code after SIGTERM"
echo "OK: $image builds, runs as uid 10001, turns healthy, answers /health, stops cleanly"
