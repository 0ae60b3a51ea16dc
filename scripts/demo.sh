#!/usr/bin/env bash
# The main job: install what is missing, build, start fisherd on loopback, train the
# sample worker against it, stop the server. Exits with the worker's status.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh

log=$(mktemp)
build/server/fisherd --listen=127.0.0.1:0 >"$log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT

address=""
for _ in $(seq 100); do
  address=$(sed -n 's/^fisherd listening on //p' "$log")
  [ -n "$address" ] && break
  kill -0 $server 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
[ -n "$address" ] || { echo "fisherd did not start:"; cat "$log"; exit 1; }
echo "fisherd is serving on $address"

build/client/fisherctl health --target="$address"
build/client/fisherd-demo --target="$address" "$@"
