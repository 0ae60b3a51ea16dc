#!/usr/bin/env bash
# Docker smoke test: starts its own Docker engine in a temporary directory, makes the
# Debian base images (docker/make-base-images.sh, cached), builds docker/Dockerfile from
# this checkout, lints the Dockerfile and the compose file, runs the image and makes
# real RPCs from the host with fisherctl from the build tree (the token enforced),
# checks the health check, the non-root user and a clean `docker stop`.
# Then durable sessions (the image's --data-dir on a named volume), through the Python
# client (client/python) from the host:
#  - docker restart (SIGTERM: drain, snapshot; then start): the session comes back from
#    its snapshot alone with the same statistics and a bit-identical GetFisher;
#  - docker kill (SIGKILL) while a client streams one batch per call, then docker start:
#    every acknowledged batch is there, counted once (the log replayed), and the
#    statistics equal those of a fresh session fed the same batches;
#  - a new container on the same volume (what an image update does) recovers it all.
# Then it runs docker/compose.yaml until both sample workers have trained and exited
# 0, and checks that a session survives `docker-compose down` and `up` (the named
# volume). Finally tests/docker/compose_cluster_smoke.sh builds the HAProxy image and runs
# docker/compose-cluster.yaml's three replicas behind it (routing, a stopped replica,
# its return). Everything it started is removed on exit, failure included.
#
# usage: docker_smoke.sh REPO_DIR FISHERCTL
# Needs root (dockerd), docker.io, docker-compose, debootstrap, npm, and Debian's python3
# with python3-grpcio, python3-numpy and protoc with grpc_python_plugin (the Python
# client's stubs are generated from proto/); scripts/install-deps.sh installs them. It
# never skips: a missing piece is a failure.
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
# Checked before the long build: the durability checks drive fisherd with this client.
PYTHONPATH="$repo/client/python" PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 -c 'import fisherd' ||
  fail "the Python client (client/python) does not import; run scripts/install-deps.sh"

work=$(mktemp -d /tmp/fisherd-docker-smoke.XXXXXX)
export DOCKER_HOST="unix://$work/docker.sock"
export DOCKER_BUILDKIT=1
tag="fisherd:smoke-$$"
project="fisherd-smoke-$$"
container="fisherd-smoke-$$"
durable="fisherd-smoke-durable-$$"    # the durability checks' container,
durable_next="$durable-next"          # its successor on the same volume,
volume="fisherd-smoke-data-$$"        # and their data directory
dockerd_pid=""

cleanup() {
  status=$?
  set +e
  step "cleanup (exit status $status)"
  if [ -n "$dockerd_pid" ]; then
    FISHERD_IMAGE=$tag docker-compose -p "$project" -f "$repo/docker/compose.yaml" \
      down --volumes --remove-orphans --timeout 5 >/dev/null 2>&1
    docker rm -f -v "$container" "$durable" "$durable_next" >/dev/null 2>&1
    docker volume rm "$volume" >/dev/null 2>&1
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
for dockerfile in docker/Dockerfile docker/haproxy/Dockerfile; do
  "$modules/.bin/dockerfilelint" "$repo/$dockerfile" || fail "dockerfilelint $dockerfile"
done
for compose_file in docker/compose.yaml docker/compose-cluster.yaml; do
  "$modules/.bin/dclint" "$repo/$compose_file" || fail "dclint $compose_file"
  docker-compose -f "$repo/$compose_file" config -q || fail "docker-compose config $compose_file"
done

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
# The image's own command makes sessions durable (here on an anonymous volume).
docker logs "$container" 2>&1 | grep "fisherd: durable sessions in /var/lib/fisherd: " ||
  { docker logs "$container"; fail "the image's default command does not pass --data-dir"; }

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
docker rm -v "$container" >/dev/null

# --- durable sessions ------------------------------------------------------------------
# The client side of the durability checks (the Python client, from the host). Batch k of
# the worker "feeder" is always the same ROWS x DIM rows (seeded by k) and is sent as one
# batch, and a natural-gradient step (which decays the sums) follows batches 20 and 40,
# so a session's statistics are determined by how many batches it holds, and any two
# sessions fed batches 1..n must agree bit for bit.
cat >"$work/durability.py" <<'PY'
import json
import os
import sys

import numpy as np

import fisherd

DIM, ROWS, WORKER = 12, 16, "feeder"
CONFIG = dict(dim=DIM, decay=0.9, damping=1e-3)
STEPS_AFTER = (20, 40)  # logged too, and their decay must survive a restart


def rows(first, last):
    return np.concatenate([np.random.default_rng(k).standard_normal((ROWS, DIM))
                           for k in range(first, last + 1)]).astype(np.float32)


def feed(client, name, first, last):
    for cut in sorted({k for k in STEPS_AFTER if first <= k < last} | {last}):
        result = client.stream_scores(name, rows(first, cut), worker_id=WORKER,
                                      rows_per_batch=ROWS)
        if result.sequence != cut:
            sys.exit(f"fed batches {first}..{cut} but the server's sequence is {result.sequence}")
        if cut in STEPS_AFTER:
            client.step(name, np.linspace(-1.0, 1.0, DIM), kl_budget=0.01)
        first = cut + 1


def state(client, name):
    s = client.get_session(name)
    matrix = client.get_fisher(name).matrix
    return {"sample_count": s.sample_count, "weight_sum": s.weight_sum.hex(),
            "step_count": s.step_count, "worker_sequences": s.worker_sequences,
            "fisher": [float(v) for v in matrix.ravel()]}  # json keeps every bit of a float


def compare(a, b, what):
    differ = [k for k in a if k != "fisher" and a[k] != b[k]]
    fa, fb = np.array(a["fisher"]), np.array(b["fisher"])
    if differ or not np.array_equal(fa, fb):
        worst = np.max(np.abs(fa - fb)) if fa.shape == fb.shape else "shape"
        sys.exit(f"{what}: differ in {differ or 'nothing else'}; GetFisher max |diff| {worst}\n"
                 f"  {json.dumps({k: a[k] for k in a if k != 'fisher'})}\n"
                 f"  {json.dumps({k: b[k] for k in b if k != 'fisher'})}")
    print(f"{what}: identical: sample_count {a['sample_count']}, workers "
          f"{a['worker_sequences']}, GetFisher {DIM}x{DIM} bit for bit")


def main(target, command, name, *args):
    # No retries: a broken stream must end `follow` at once (see there).
    with fisherd.Client(target, timeout=30, wait_for_ready=True, max_retries=0) as client:
        if command == "create":            # create NAME
            client.create_session(name, **CONFIG)
        elif command == "feed":            # feed NAME FIRST LAST: batches FIRST..LAST
            feed(client, name, int(args[0]), int(args[1]))
        elif command == "follow":          # follow NAME FIRST ACKED_FILE
            # One batch per call from FIRST on, until the server goes away; after each
            # call returns (the batch acknowledged, so durable) its number goes to
            # ACKED_FILE, replaced atomically.
            k, acked_file = int(args[0]), args[1]
            try:
                while k < int(args[0]) + 100000:
                    feed(client, name, k, k)
                    with open(acked_file + ".tmp", "w") as f:
                        f.write(f"{k}\n")
                    os.replace(acked_file + ".tmp", acked_file)
                    k += 1
            except fisherd.FisherdError as error:
                print(f"follow: batch {k} not acknowledged: {error.code.name}")
                return
            sys.exit("follow: the server never went away")
        elif command == "save":            # save NAME FILE
            with open(args[0], "w") as f:
                json.dump(state(client, name), f)
        elif command == "same":            # same NAME FILE: the live state equals FILE's
            with open(args[0]) as f:
                compare(json.load(f), state(client, name), f"{name} vs {os.path.basename(args[0])}")
        elif command == "acked":           # acked NAME ACKED_FILE
            # Every acknowledged batch is there; at most the one in flight at the kill
            # may be too (logged, its ack lost). Each counted once.
            acked = int(open(args[0]).read())
            s = client.get_session(name)
            sequence = s.worker_sequences.get(WORKER, 0)
            print(f"acknowledged up to batch {acked}; recovered up to {sequence}, "
                  f"sample_count {s.sample_count}")
            if not acked <= sequence <= acked + 1:
                sys.exit(f"recovered sequence {sequence}, acknowledged {acked}")
            if s.sample_count != ROWS * sequence:
                sys.exit(f"sample_count {s.sample_count} != {ROWS} x {sequence} batches")
        elif command == "reference":       # reference NAME REF
            # REF: a fresh session fed the batches NAME holds; their states must agree.
            sequence = client.get_session(name).worker_sequences[WORKER]
            client.create_session(args[0], **CONFIG)
            feed(client, args[0], 1, sequence)
            mine, ref = state(client, name), state(client, args[0])
            client.delete_session(args[0])
            compare(mine, ref, f"{name} vs a fresh session fed batches 1..{sequence}")
        else:
            sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main(*sys.argv[1:])
PY
durability() { PYTHONPATH="$repo/client/python" PYTHONDONTWRITEBYTECODE=1 \
  /usr/bin/python3 "$work/durability.py" "$@"; }

# The address a container's port 50051 is published at, once fisherd serves there (a
# restarted container may get another host port).
serving() {
  local address=""
  for _ in $(seq 50); do
    address=$(docker port "$1" 50051/tcp 2>/dev/null | head -n1) && [ -n "$address" ] && break
    sleep 0.2
  done
  [ -n "$address" ] || { docker logs "$1" 2>&1 | tail -20; fail "$1 publishes no port"; }
  "$fisherctl" --target="$address" --timeout-seconds=30 health >/dev/null ||
    { docker logs "$1" 2>&1 | tail -20; fail "$1 not serving at $address"; }
  echo "$address"
}

# "SESSIONS SNAPSHOTS RECORDS" from the N-th start's recovery line of a container (fisherd
# writes it right after it opens the port, so wait for it).
recovery() {
  local container=$1 n=$2 line=""
  for _ in $(seq 50); do
    line=$(docker logs "$container" 2>&1 | grep "fisherd: durable sessions in" | sed -n "${n}p")
    [ -n "$line" ] && break
    sleep 0.1
  done
  echo "  $line" >&2
  echo "$line" | sed -nE \
    's/.*recovered ([0-9]+) session\(s\) from ([0-9]+) snapshot\(s\) and ([0-9]+) log record\(s\).*/\1 \2 \3/p' |
    grep . || fail "no recovery line for start $n of $container"
}

step "durable sessions: a session on the volume $volume"
docker volume create "$volume" >/dev/null
docker run -d --name "$durable" -p 127.0.0.1::50051 -v "$volume:/var/lib/fisherd" "$tag" >/dev/null
address=$(serving "$durable")
[ "$(recovery "$durable" 1)" = "0 0 0" ] || fail "a new volume is not empty"
durability "$address" create durable
durability "$address" feed durable 1 40
durability "$address" save durable "$work/before-restart.json"
"$fisherctl" --target="$address" get durable
docker exec "$durable" ls -lnR /var/lib/fisherd

step "docker restart (SIGTERM: drain, snapshot, exit; start): the same session"
restart_started=$(date +%s%N)
docker restart "$durable" >/dev/null
restart_ms=$(( ($(date +%s%N) - restart_started) / 1000000 ))
address=$(serving "$durable")
echo "docker restart took ${restart_ms} ms"
# A stop that hit docker's 10 s timeout would have been a SIGKILL, no drain.
[ "$restart_ms" -lt 9000 ] || fail "docker restart took ${restart_ms} ms: fisherd did not exit on SIGTERM"
[ "$(docker logs "$durable" 2>&1 | grep -c '^fisherd: stopped')" = 1 ] ||
  { docker logs "$durable" 2>&1 | tail; fail "fisherd did not stop cleanly before the restart"; }
# The drain's snapshot holds everything: the start needs no log record.
[ "$(recovery "$durable" 2)" = "1 1 0" ] ||
  fail "after SIGTERM the session did not come back from one snapshot and no log"
durability "$address" same durable "$work/before-restart.json"

step "docker kill (SIGKILL) while batches stream, then docker start: every acknowledged batch"
acked="$work/acked"
durability "$address" follow durable 41 "$acked" >"$work/follow.out" 2>&1 &
follower=$!
for _ in $(seq 600); do
  [ "$(cat "$acked" 2>/dev/null || echo 0)" -ge 70 ] && break
  kill -0 "$follower" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$follower" 2>/dev/null || { cat "$work/follow.out"; fail "the streaming client stopped early"; }
[ "$(cat "$acked" 2>/dev/null || echo 0)" -ge 70 ] || fail "30 batches not acknowledged in 60 s"
docker kill "$durable" >/dev/null
killed_at=$(cat "$acked")
wait "$follower" || { cat "$work/follow.out"; fail "the streaming client failed"; }
cat "$work/follow.out"
echo "killed after batch $killed_at was acknowledged; the client last saw batch $(cat "$acked")"
[ "$(docker inspect -f '{{.State.ExitCode}}' "$durable")" = 137 ] || fail "docker kill did not SIGKILL"
docker start "$durable" >/dev/null
address=$(serving "$durable")
read -r sessions snapshots records <<<"$(recovery "$durable" 3)"
[ "$sessions" = 1 ] && [ "$records" -gt 0 ] ||
  fail "after SIGKILL expected 1 session with log records replayed"
durability "$address" acked durable "$acked"
durability "$address" save durable "$work/after-kill.json"
"$fisherctl" --target="$address" get durable

step "a new container on the same volume (an image update): the same session"
docker stop "$durable" >/dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' "$durable")" = 0 ] || fail "fisherd exited non-zero on SIGTERM"
docker rm "$durable" >/dev/null
docker run -d --name "$durable_next" -p 127.0.0.1::50051 -v "$volume:/var/lib/fisherd" "$tag" >/dev/null
address=$(serving "$durable_next")
[ "$(recovery "$durable_next" 1)" = "1 1 0" ] ||
  fail "the new container did not recover the session from the stop's snapshot alone"
durability "$address" same durable "$work/after-kill.json"
# The recovered sums are those of the batches, not just the count.
durability "$address" reference durable reference
docker stop "$durable_next" >/dev/null
docker rm "$durable_next" >/dev/null
docker volume rm "$volume" >/dev/null

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
# The compose file's named volume: a session outlives down and up (new containers).
durability "127.0.0.1:$port" create durable
durability "127.0.0.1:$port" feed durable 1 20
durability "127.0.0.1:$port" save durable "$work/compose.json"
"${compose[@]}" down --timeout 30
"${compose[@]}" up -d --no-build fisherd
"$fisherctl" --target="127.0.0.1:$port" --timeout-seconds=30 health >/dev/null ||
  { "${compose[@]}" logs --no-color fisherd | tail -20; fail "compose fisherd not back up"; }
"${compose[@]}" logs --no-color fisherd | grep "durable sessions in" | tail -n1
durability "127.0.0.1:$port" same durable "$work/compose.json"
"${compose[@]}" down --volumes --timeout 30

step "docker-compose: three replicas behind HAProxy (compose-cluster.yaml)"
bash "$repo/tests/docker/compose_cluster_smoke.sh" "$repo" "$fisherctl" "$tag" ||
  fail "compose-cluster smoke test"
step "docker smoke test passed"
