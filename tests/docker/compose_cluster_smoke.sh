#!/usr/bin/env bash
# Smoke test of docker/compose-cluster.yaml: builds the HAProxy image (docker/haproxy, about
# 30 s), starts the three replicas and HAProxy (not the sample workers, which
# docker_smoke.sh already runs against one server) with the fisherd image given, and
# checks from the host with fisherctl:
#  - HAProxy runs as non-root and becomes healthy once the replicas are;
#  - sessions created through the proxy each live on exactly one replica, all three used,
#    and are served through the proxy; NOT_FOUND names the replica that answered;
#  - with one replica stopped, its session fails with UNAVAILABLE through the proxy while
#    the others are served, and once it is started again (on its volume) the session is
#    back;
#  - `docker stop` of HAProxy (the image's SIGUSR1, a soft stop) exits 0 at once.
# Everything it started is removed on exit.
#
# usage: compose_cluster_smoke.sh REPO_DIR FISHERCTL FISHERD_IMAGE
# (DOCKER_HOST names the engine; docker_smoke.sh calls it with the image it built)
set -euo pipefail
repo=$(cd "$1" && pwd)
fisherctl=$2
export FISHERD_IMAGE=$3
fail() { echo "compose_cluster_smoke: FAIL: $*" >&2; exit 1; }

project="fisherd-cluster-smoke-$$"
export FISHERD_HAPROXY_IMAGE="fisherd-haproxy:smoke-$$"
FISHERD_PORT=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export FISHERD_PORT
proxy="127.0.0.1:$FISHERD_PORT"
compose=(docker-compose -p "$project" -f "$repo/docker/compose-cluster.yaml")
log=$(mktemp /tmp/fisherd-cluster-smoke.XXXXXX)
cleanup() {
  status=$?
  set +e
  [ "$status" = 0 ] || "${compose[@]}" logs --no-color --tail 20 >&2
  "${compose[@]}" down --volumes --remove-orphans --timeout 10 >/dev/null 2>&1
  docker rmi "$FISHERD_HAPROXY_IMAGE" >/dev/null 2>&1
  rm -f "$log"
  exit "$status"
}
trap cleanup EXIT
ctl() { "$fisherctl" --target="$proxy" --timeout-seconds=30 "$@"; }
healthy() {  # SERVICE: waits up to 60 s for its health check
  local id status=""
  id=$("${compose[@]}" ps -q "$1")
  for _ in $(seq 120); do
    status=$(docker inspect -f '{{.State.Health.Status}}' "$id" 2>/dev/null || true)
    [ "$status" = healthy ] && return 0
    sleep 0.5
  done
  fail "$1 is $status after 60 s"
}
# "REPLICA SESSION" per line, every replica asked directly from inside the project.
where() {
  "${compose[@]}" exec -T fisherd-0 fisherctl list --replica=fisherd-0:50051 \
    --replica=fisherd-1:50051 --replica=fisherd-2:50051 | awk '$2 ~ /^sessions\// {print $1, $2}'
}

started=$(date +%s)
docker build -t "$FISHERD_HAPROXY_IMAGE" "$repo/docker/haproxy" >"$log" 2>&1 ||
  { tail -30 "$log"; fail "docker build docker/haproxy"; }
echo "HAProxy image built in $(( $(date +%s) - started )) s"
"${compose[@]}" up -d --no-build haproxy   # and the three replicas it waits for
healthy haproxy
uid=$(docker exec "$("${compose[@]}" ps -q haproxy)" id -u)
[ "$uid" != 0 ] || fail "HAProxy runs as root"
echo "HAProxy healthy at $proxy, uid $uid, $(( $(date +%s) - started )) s in"

ids=()
for i in $(seq 0 11); do ids+=("cluster-$i"); ctl create "cluster-$i" --dim=2 >/dev/null; done
where | tee "$log"
[ "$(awk '{print $2}' "$log" | sort | uniq -d)" = "" ] || fail "a session is on two replicas"
[ "$(wc -l <"$log")" = 12 ] || fail "expected 12 sessions over the replicas"
[ "$(awk '{print $1}' "$log" | sort -u | wc -l)" = 3 ] || fail "not all three replicas hold sessions"
for id in "${ids[@]}"; do ctl get "$id" >/dev/null || fail "get $id through the proxy"; done
if ctl get no-such-session >"$log" 2>&1; then fail "a missing session was found"; fi
grep -q 'NOT_FOUND: .* not found on replica "fisherd-[012]"' "$log" || { cat "$log"; fail "NOT_FOUND does not name the replica"; }
cat "$log"

# Stop the replica of cluster-0: its sessions fail with UNAVAILABLE, the others are served.
down=$(where | awk '$2 == "sessions/cluster-0" {sub(/:.*/, "", $1); print $1}')
other=$(where | awk -v down="$down" '$1 !~ "^" down ":" {sub(/^sessions\//, "", $2); print $2; exit}')
echo "stopping $down (holds cluster-0); $other is elsewhere"
"${compose[@]}" stop "$down"
if ctl get cluster-0 >"$log" 2>&1; then fail "cluster-0 served with $down stopped"; fi
grep -q UNAVAILABLE "$log" || { cat "$log"; fail "cluster-0 with $down stopped: not UNAVAILABLE"; }
echo "with $down stopped: $(cat "$log")"
ctl get "$other" >/dev/null || fail "$other not served while $down is stopped"
"${compose[@]}" start "$down"
healthy "$down"
# HAProxy finds the replica again at its (possibly new) address within seconds.
for _ in $(seq 60); do ctl get cluster-0 >/dev/null 2>&1 && break; sleep 0.5; done
ctl get cluster-0 >/dev/null || fail "cluster-0 not back after $down restarted"
echo "$down back: cluster-0 served again"

stop_started=$(date +%s%N)
docker stop "$("${compose[@]}" ps -q haproxy)" >/dev/null
stop_ms=$(( ($(date +%s%N) - stop_started) / 1000000 ))
code=$(docker inspect -f '{{.State.ExitCode}}' "$("${compose[@]}" ps -q haproxy)")
echo "docker stop of HAProxy: ${stop_ms} ms, exit code $code"
[ "$code" = 0 ] || fail "HAProxy exited $code on its stop signal"
echo "compose_cluster_smoke: passed in $(( $(date +%s) - started )) s"
