#!/usr/bin/env bash
# N fisherd replicas and HAProxy in front of them, all on loopback: the routing setup of
# docker/haproxy/haproxy.cfg without containers, for trying it out and for tests.
#
#   docker/haproxy/loopback-cluster.sh start [N] [--port P] [--dir D] [--fisherd BIN]
#       Starts N replicas (default 3) on ports P+1 .. P+N, each with its own data
#       directory D/replica-K and Prometheus metrics on port P+101+K, and HAProxy on P
#       (default 50050). Clients use 127.0.0.1:P; each replica is also reachable
#       directly. Writes D/prometheus.yml, a scrape configuration of the replicas
#       (`prometheus --config.file=D/prometheus.yml`). Runs until interrupted (Ctrl-C or
#       SIGTERM), then stops the proxy and drains every replica.
#   docker/haproxy/loopback-cluster.sh config LISTEN REPLICA...
#       Prints haproxy.cfg with LISTEN as the proxy's address and one server line per
#       REPLICA (host:port), in order; replica K gets id K+1, as in haproxy.cfg.
#
# BIN defaults to fisherd on PATH, else build/server/fisherd; D to a new temporary
# directory (kept afterwards, so a second start on it recovers every session).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
template="$here/haproxy.cfg"

# haproxy.cfg with the address placeholders filled in and the replica lines replaced.
render_config() {
  local listen="$1"
  shift
  local servers="" k=0
  for replica in "$@"; do
    servers+="    server replica-$k $replica id $((k + 1)) proto h2"$'\n'
    k=$((k + 1))
  done
  awk -v listen="$listen" -v servers="$servers" '
    /# BEGIN replicas/ { print; printf "%s", servers; skipping = 1; next }
    /# END replicas/   { skipping = 0 }
    skipping           { next }
    { gsub(/"\$\{FISHERD_PROXY_LISTEN\}"/, listen); print }
  ' "$template"
}

usage() {
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
command="$1"
shift
case "$command" in
  config)
    [[ $# -ge 2 ]] || usage
    render_config "$@"
    exit 0
    ;;
  start) ;;
  *) usage ;;
esac

replicas=3
port=50050
dir=""
fisherd="$(command -v fisherd || true)"
[[ -n "$fisherd" ]] || fisherd="$here/../../build/server/fisherd"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --port) port="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --fisherd) fisherd="$2"; shift 2 ;;
    [0-9]*) replicas="$1"; shift ;;
    *) usage ;;
  esac
done
[[ -x "$fisherd" ]] || { echo "loopback-cluster: no fisherd at $fisherd (--fisherd BIN)" >&2; exit 1; }
command -v haproxy >/dev/null || { echo "loopback-cluster: haproxy is not installed" >&2; exit 1; }
[[ -n "$dir" ]] || dir="$(mktemp -d -t fisherd-cluster.XXXXXX)"
mkdir -p "$dir"

pids=()
stop_all() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait || true
}
trap stop_all INT TERM EXIT

addresses=()
metrics=()
for ((k = 0; k < replicas; k++)); do
  address="127.0.0.1:$((port + 1 + k))"
  metrics+=("127.0.0.1:$((port + 101 + k))")
  mkdir -p "$dir/replica-$k"
  "$fisherd" --listen="$address" --data-dir="$dir/replica-$k" --replica-name="replica-$k" \
    --metrics-listen="${metrics[$k]}" --drain-seconds=2 >"$dir/replica-$k.log" 2>&1 &
  pids+=("$!")
  addresses+=("$address")
done
{
  echo "# Written by loopback-cluster.sh: the replicas' /metrics, scraped every 2 s."
  echo "global: {scrape_interval: 2s, scrape_timeout: 1s}"
  echo "scrape_configs:"
  echo "  - job_name: fisherd"
  echo "    static_configs:"
  echo "      - targets: [$(IFS=,; echo "${metrics[*]}" | sed 's/,/, /g')]"
} >"$dir/prometheus.yml"
# Each replica prints its listening line once its sessions are recovered.
for ((k = 0; k < replicas; k++)); do
  for _ in $(seq 1 200); do
    grep -q "fisherd listening on" "$dir/replica-$k.log" && break
    kill -0 "${pids[$k]}" 2>/dev/null || { cat "$dir/replica-$k.log" >&2; exit 1; }
    sleep 0.05
  done
done
render_config "127.0.0.1:$port" "${addresses[@]}" >"$dir/haproxy.cfg"
haproxy -W -db -f "$dir/haproxy.cfg" >"$dir/haproxy.log" 2>&1 &
pids+=("$!")
echo "fisherd cluster: proxy 127.0.0.1:$port, replicas ${addresses[*]}, metrics ${metrics[*]}, data and logs in $dir"
wait -n "${pids[@]}" || true
echo "loopback-cluster: a process exited; stopping the others" >&2
