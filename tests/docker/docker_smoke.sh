#!/usr/bin/env bash
# Docker smoke test: starts its own Docker engine in a temporary directory, makes the
# Debian base images (docker/make-base-images.sh, cached), builds docker/Dockerfile from
# this checkout, lints the Dockerfile and the compose file, runs the image and makes
# real RPCs from the host with fisherctl from the build tree (the token enforced),
# checks the health check, the non-root user and a clean `docker stop`, then runs
# docker/compose.yaml until both sample workers have trained and exited 0.
# Everything it started is removed on exit, failure included.
#
# usage: docker_smoke.sh REPO_DIR FISHERCTL
# Needs root (dockerd), docker.io, docker-compose, debootstrap and npm (scripts/
# install-deps.sh installs them). It never skips: a missing piece is a failure.
set -euo pipefail
repo=$(cd "$1" && pwd)
fisherctl=$2
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH  # Debian's docker client (with BuildKit) first
started=$(date +%s)
step() { printf '\n=== [%4ss] %s\n' $(( $(date +%s) - started )) "$*"; }
fail() { echo "docker_smoke: FAIL: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "must run as root to start dockerd (CI runs as root)"
for tool in dockerd docker docker-compose debootstrap npm; do
  command -v "$tool" >/dev/null || fail "$tool is missing; run scripts/install-deps.sh"
done
[ -x "$fisherctl" ] || fail "fisherctl not found at $fisherctl"

work=$(mktemp -d /tmp/fisherd-docker-smoke.XXXXXX)
export DOCKER_HOST="unix://$work/docker.sock"
export DOCKER_BUILDKIT=1
tag="fisherd:smoke-$$"
project="fisherd-smoke-$$"
container="fisherd-smoke-$$"
dockerd_pid=""

cleanup() {
  status=$?
  set +e
  step "cleanup (exit status $status)"
  if [ -n "$dockerd_pid" ]; then
    FISHERD_IMAGE=$tag docker-compose -p "$project" -f "$repo/docker/compose.yaml" \
      down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1
    docker rm -f "$container" >/dev/null 2>&1
    kill -TERM "$dockerd_pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$dockerd_pid" 2>/dev/null
    # mounts a killed engine may have left behind
    grep " $work/" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
  fi
  rm -rf "$work"
  echo "docker_smoke: total $(( $(date +%s) - started )) s"
  exit $status
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "start dockerd in $work"
setsid dockerd --data-root "$work/root" --exec-root "$work/exec" --pidfile "$work/dockerd.pid" \
  -H "$DOCKER_HOST" >"$work/dockerd.log" 2>&1 </dev/null &
dockerd_pid=$!
for _ in $(seq 150); do
  docker info >/dev/null 2>&1 && break
  kill -0 "$dockerd_pid" 2>/dev/null || { cat "$work/dockerd.log"; fail "dockerd exited"; }
  sleep 0.2
done
docker info >/dev/null 2>&1 || { tail -20 "$work/dockerd.log"; fail "dockerd not ready in 30 s"; }

step "lint: dockerfilelint, dclint (npm), docker-compose config -q"
modules=$(bash "$repo/tests/docker/npm_tools.sh") || fail "npm install of the linters failed"
"$modules/.bin/dockerfilelint" "$repo/docker/Dockerfile" || fail "dockerfilelint"
"$modules/.bin/dclint" "$repo/docker/compose.yaml" || fail "dclint"
docker-compose -f "$repo/docker/compose.yaml" config -q || fail "docker-compose config"

step "base images debian:bookworm and debian:bookworm-slim"
bash "$repo/docker/make-base-images.sh"

step "docker build -f docker/Dockerfile -t $tag"
build_started=$(date +%s)
docker build --progress=plain -f "$repo/docker/Dockerfile" -t "$tag" "$repo" >"$work/build.log" 2>&1 ||
  { tail -60 "$work/build.log"; fail "docker build"; }
echo "built in $(( $(date +%s) - build_started )) s; image size $(docker image inspect -f '{{.Size}}' "$tag") bytes"

step "docker run with a token; RPCs from the host"
token_file="$work/token"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$token_file"
chmod 644 "$token_file"
docker run -d --name "$container" -p 127.0.0.1::50051 \
  -v "$token_file:/run/secrets/fisherd-token:ro" \
  "$tag" --auth-token-file=/run/secrets/fisherd-token >/dev/null
address=$(docker port "$container" 50051/tcp | head -n1)
[ -n "$address" ] || fail "no published port"
echo "fisherd in $container, published at $address"
"$fisherctl" --target="$address" --timeout-seconds=20 health || { docker logs "$container"; fail "health"; }
"$fisherctl" --target="$address" --token-file="$token_file" create smoke --dim=8 --damping=0.001 ||
  fail "create with the token"
"$fisherctl" --target="$address" --token-file="$token_file" list | tee "$work/list.out"
grep -q "sessions/smoke" "$work/list.out" || fail "list does not show sessions/smoke"
if "$fisherctl" --target="$address" list >"$work/denied.out" 2>&1; then
  fail "list without a token succeeded"
fi
grep -q UNAUTHENTICATED "$work/denied.out" || { cat "$work/denied.out"; fail "no UNAUTHENTICATED"; }
echo "without the token: $(cat "$work/denied.out")"
if "$fisherctl" --target="$address" --token=wrong create other --dim=2 >"$work/denied.out" 2>&1; then
  fail "create with a wrong token succeeded"
fi
grep -q UNAUTHENTICATED "$work/denied.out" || { cat "$work/denied.out"; fail "no UNAUTHENTICATED"; }

uid=$(docker exec "$container" id -u)
[ "$uid" != 0 ] || fail "the server runs as root"
echo "server runs as uid $uid"
for _ in $(seq 60); do
  health=$(docker inspect -f '{{.State.Health.Status}}' "$container")
  [ "$health" = healthy ] && break
  sleep 0.5
done
[ "$health" = healthy ] || fail "container health is $health"
echo "HEALTHCHECK: $health"
stop_started=$(date +%s%N)
docker stop "$container" >/dev/null
stop_ms=$(( ($(date +%s%N) - stop_started) / 1000000 ))
stop_seconds=$(( stop_ms / 1000 )).$(printf '%03d' $(( stop_ms % 1000 )))
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$container")
docker logs "$container" 2>&1 | tail -3
echo "docker stop took ${stop_seconds} s, exit code $exit_code"
[ "$exit_code" = 0 ] || fail "fisherd exited $exit_code on SIGTERM"
[ "$stop_ms" -lt 9000 ] || fail "docker stop took ${stop_seconds} s"
docker rm "$container" >/dev/null

step "docker-compose: one fisherd, two workers"
port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export FISHERD_IMAGE=$tag FISHERD_PORT=$port
compose=(docker-compose -p "$project" -f "$repo/docker/compose.yaml")
"${compose[@]}" up -d --no-build
workers=("$("${compose[@]}" ps -q worker-a)" "$("${compose[@]}" ps -q worker-b)")
[ -n "${workers[0]}" ] && [ -n "${workers[1]}" ] || fail "workers not created"
codes=$(timeout 600 docker wait "${workers[@]}") || fail "workers did not finish in 600 s"
"${compose[@]}" logs --no-color worker-a worker-b | tail -30
"$fisherctl" --target="127.0.0.1:$port" list
codes=$(echo $codes)
echo "worker exit codes: $codes"
[ "$codes" = "0 0" ] || fail "workers exited with $codes"
"${compose[@]}" down --timeout 10
step "docker smoke test passed"
