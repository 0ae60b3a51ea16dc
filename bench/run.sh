#!/usr/bin/env bash
# The performance comparison of issue #3: builds in Release, starts fisherd on loopback,
# runs fisherd-bench beside its in-process peers (OpenBLAS dsyrk, LAPACK dpotrf + solves,
# NumPy, PyTorch, iperf3) in the same run, then fisherd-layered-bench (Kronecker blocks
# against in-process dsyrk / dsyevd / dgemm), and prints one table:
# measure, fisherd, peer, ratio, target, met.
#
#   bash bench/run.sh                 # the full run (about 10-13 minutes on 2 cores)
#   bash bench/run.sh --repeats=5     # medians over 5 interleaved runs (default 3)
#   bash bench/run.sh --quick --build-dir=DIR   # smoke: tiny dims, under a minute,
#                                     # installs and builds nothing, skips missing peers
#   bash bench/run.sh --float32-products   # fisherd's dense sessions opt into the
#                                     # float32 batch kernel (SessionConfig.float32_products)
#   bash bench/run.sh --layered-only  # only the layered-session rows (Kronecker ingest,
#                                     # ResNet-18 steps and memory; about 4-5 minutes)
#   bash bench/run.sh --layered-repeats=N  # fresh ResNet-18 steps (default 2; each one
#                                     # re-decomposes every factor, ~45 s per side)
#   bash bench/run.sh --durability-only  # only bench/durability_bench.sh (fisherd --data-dir:
#                                     # ingest with vs without the log, snapshot, recovery;
#                                     # about 2-3 minutes)
#   bash bench/run.sh --no-build --build-dir=DIR   # the full sizes with DIR's binaries as
#                                     # they are: no installs, no build
#   bash bench/run.sh --cluster-only  # only the "Past one machine" benchmarks (needs haproxy):
#                                     # ingest through HAProxy vs straight into the replica
#                                     # (bench/cluster_bench.py, ~5 minutes), then ResNet-18's
#                                     # layered session over 3 replicas vs one
#                                     # (bench/sharded_step_bench.py, ~25-40 minutes); --repeats=N
#                                     # sets the rounds and fresh steps of both (default 5)
#
# Every figure is the median over the repeats; each repeat runs fisherd and its peer
# back to back, so both see the same machine. Raw JSON lines go to $BENCH_OUT
# (default: a temporary directory, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
float32_products=0
repeats=3
build_dir=build
layered_only=0
durability_only=0
cluster_only=0
repeats_set=0
layered_repeats=2
no_build=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --float32-products) float32_products=1 ;;
    --repeats=*) repeats="${arg#--repeats=}"; repeats_set=1 ;;
    --build-dir=*) build_dir="${arg#--build-dir=}" ;;
    --layered-only) layered_only=1 ;;
    --durability-only) durability_only=1 ;;
    --cluster-only) cluster_only=1 ;;
    --layered-repeats=*) layered_repeats="${arg#--layered-repeats=}" ;;
    --no-build) no_build=1 ;;
    *) echo "usage: bench/run.sh [--quick] [--repeats=N] [--build-dir=DIR] [--float32-products]" \
            "[--layered-only] [--layered-repeats=N] [--durability-only] [--cluster-only]" \
            "[--no-build]" >&2
       exit 2 ;;
  esac
done
python=/usr/bin/python3  # Debian's interpreter, which sees python3-numpy and python3-torch

if [ "$quick" -eq 0 ] && [ "$no_build" -eq 0 ]; then
  scripts/install-deps.sh
  extra=()
  peers=(iperf3 python3-numpy python3-torch)
  [ "$layered_only" -eq 0 ] && [ "$durability_only" -eq 0 ] || peers=()
  [ "$cluster_only" -eq 0 ] || peers=(iperf3)
  for package in "${peers[@]+"${peers[@]}"}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
      extra+=("$package")
  done
  if [ ${#extra[@]} -gt 0 ]; then
    echo "installing the peers: ${extra[*]}"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq \
      --no-install-recommends "${extra[@]}"
  fi
  BUILD_TYPE=Release scripts/build.sh >/dev/null
fi

bin="$build_dir"
if [ "$durability_only" -eq 1 ]; then
  durability_flags=(--build-dir="$build_dir" --repeats="$repeats")
  [ "$quick" -eq 0 ] || durability_flags+=(--quick)
  exec bash bench/durability_bench.sh "${durability_flags[@]}"
fi
if [ "$cluster_only" -eq 1 ]; then
  # Past one machine (docs/performance.md): each script starts its own fisherd processes
  # (and HAProxy) on loopback and prints its own table; raw JSON lines go to $BENCH_OUT.
  out="${BENCH_OUT:-$(mktemp -d)}"
  cluster_flags=(--build-dir="$build_dir" --out="$out")
  [ "$quick" -eq 0 ] || cluster_flags+=(--quick)
  rounds=(); fresh=()
  [ "$repeats_set" -eq 0 ] || { rounds=(--rounds="$repeats"); fresh=(--repeats="$repeats"); }
  "$python" bench/cluster_bench.py "${cluster_flags[@]}" "${rounds[@]+"${rounds[@]}"}"
  "$python" bench/sharded_step_bench.py "${cluster_flags[@]}" "${fresh[@]+"${fresh[@]}"}"
  echo "raw results: $out"
  exit 0
fi
for tool in server/fisherd bench/fisherd-bench bench/peer-blas bench/fisherd-layered-bench; do
  [ -x "$bin/$tool" ] || { echo "missing $bin/$tool: build first" >&2; exit 1; }
done

out="${BENCH_OUT:-$(mktemp -d)}"
mkdir -p "$out"
results="$out/results.jsonl"
: >"$results"

# Sizes: the issue's for the full run, tiny ones for the smoke.
if [ "$quick" -eq 1 ]; then
  repeats=1; secs=0.3; small=64; large=128; diag_dim=256; diag_batch=16; step_dim=64
  step_repeats=1; mem_dim=128; acc_dim=64; acc_samples=10000
  # Layered: ResNet-18's structure with every channel count / 16 (46k parameters).
  kron_dim=64; resnet_divisor=16; layered_repeats=1; cached_repeats=1; new_rows=4
else
  secs=4; small=1024; large=4096; diag_dim=4096; diag_batch=64; step_dim=4096
  step_repeats=3; mem_dim=4096; acc_dim=256; acc_samples=1000000
  kron_dim=1024; resnet_divisor=1; cached_repeats=3; new_rows=16
fi
threads=$(nproc)

servers=()
cleanup() {
  for pid in "${servers[@]+"${servers[@]}"}"; do kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

# start_server LOG: starts fisherd on a free loopback port; sets address and server_pid.
start_server() {
  "$bin/server/fisherd" --listen=127.0.0.1:0 --math-threads="$threads" >"$1" 2>&1 &
  server_pid=$!
  servers+=("$server_pid")
  local pid=$server_pid
  address=""
  for _ in $(seq 100); do
    address=$(sed -n 's/^fisherd listening on //p' "$1")
    [ -n "$address" ] && break
    kill -0 "$pid" 2>/dev/null || { cat "$1" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$address" ] || { echo "fisherd did not start" >&2; cat "$1" >&2; exit 1; }
}

# record KEY COMMAND...: runs COMMAND, echoes its output to the log, appends its last
# line (a JSON object) tagged with KEY to the results.
record() {
  local key="$1"; shift
  local log="$out/$key.log"
  if "$@" >"$log" 2>&1; then
    echo "  $key: $(tail -n 1 "$log" | cut -c1-150)"
    printf '{"key":"%s","data":%s}\n' "$key" "$(tail -n 1 "$log")" >>"$results"
  else
    echo "  $key: FAILED (see $log)"; tail -n 5 "$log" | sed 's/^/    /'
  fi
}

start_server "$out/fisherd.log"
target=$address
echo "fisherd on $target; $threads cores; raw results in $out"
bench=("$bin/bench/fisherd-bench" --target="$target" --delete-session --seconds="$secs")
[ "$float32_products" -eq 0 ] || bench+=(--float32-products)

if [ "$layered_only" -eq 0 ]; then
for rep in $(seq "$repeats"); do
  echo "repeat $rep/$repeats"
  record dense_small "${bench[@]}" --dim="$small" --batch=256 --workers=1
  record blas_small "$bin/bench/peer-blas" syrk --dim="$small" --batch=256 --seconds="$secs" --threads="$threads"
  if "$python" -c "import numpy" 2>/dev/null; then
    record numpy_small "$python" bench/peers.py numpy --dim="$small" --batch=256 --seconds="$secs"
  fi
  record dense_small_w8 "${bench[@]}" --dim="$small" --batch=256 --workers=8
  record dense_large "${bench[@]}" --dim="$large" --batch=256 --workers=1
  record blas_large "$bin/bench/peer-blas" syrk --dim="$large" --batch=256 --seconds="$secs" --threads="$threads"
  record diagonal "${bench[@]}" --representation=diagonal --dim="$diag_dim" --batch="$diag_batch" --workers=1
  if command -v iperf3 >/dev/null; then
    port=$((20000 + RANDOM % 20000))
    timeout 60 iperf3 -s -1 -p "$port" >/dev/null 2>&1 &
    iperf_pid=$!
    sleep 0.3
    # iperf3 takes whole seconds (-t 0 would mean forever).
    tcp_secs=$(printf '%.0f' "$secs"); [ "$tcp_secs" -ge 1 ] || tcp_secs=1
    record tcp "$python" -c "
import json, subprocess, sys
r = json.loads(subprocess.run(['iperf3', '-c', '127.0.0.1', '-p', '$port', '-t', '$tcp_secs', '-J'],
                              check=True, capture_output=True, text=True, timeout=60).stdout)
print(json.dumps({'peer': 'iperf3', 'bytes_per_second': r['end']['sum_received']['bits_per_second'] / 8}))"
    wait "$iperf_pid" 2>/dev/null || true
  fi
  record step "${bench[@]}" --mode=step --dim="$step_dim" --batch=256 --repeats="$step_repeats"
  record fresh_step "${bench[@]}" --mode=fresh-step --dim="$step_dim" --batch=256 --repeats="$step_repeats"
  record lapack "$bin/bench/peer-blas" solve --dim="$step_dim" --repeats="$step_repeats" --threads="$threads"
  if [ "$quick" -eq 0 ] && "$python" -c "import torch" 2>/dev/null; then
    record torch "$python" bench/peers.py torch --dim="$step_dim" --batch=256 --repeats="$step_repeats" --threads="$threads"
  fi
done

# Resident memory of one dense session: a fresh server, its RSS idle, then after a
# session of mem_dim has taken batches and steps (every buffer touched).
start_server "$out/fisherd-mem.log"
mem_target=$address
mem_pid=$server_pid
rss_kb() { awk '/^'"$1"':/ {print $2}' "/proc/$mem_pid/status"; }
sleep 0.5
idle=$(rss_kb VmRSS)
"$bin/bench/fisherd-bench" --target="$mem_target" --mode=step --dim="$mem_dim" --batch=256 \
  --repeats=2 >"$out/memory.log" 2>&1
after=$(rss_kb VmRSS)
peak=$(rss_kb VmHWM)
printf '{"key":"memory","data":{"dim":%d,"idle_kb":%d,"after_kb":%d,"peak_kb":%d}}\n' \
  "$mem_dim" "$idle" "$after" "$peak" >>"$results"

# Accuracy: 1e6 samples streamed over gRPC into a dense session (the kernel the run's
# sessions use), F read back with GetFisher and compared with long-double sums.
record accuracy "${bench[@]}" --mode=accuracy --dim="$acc_dim" --batch=256 --samples="$acc_samples"
fi  # layered_only

# Layered sessions (docs/performance.md, "Layered sessions"). Each tool runs fisherd and
# its in-process peer back to back --repeats times and reports medians and the median of
# the per-repeat ratios itself.
# 1. Kronecker factor ingest: one block in = out = kron_dim, 256-row FACTOR_ACTIVATIONS
#    batches over gRPC vs dsyrk of the same rows (k = 256) in the tool's process.
echo "layered sessions"
record kronecker_ingest "$bin/bench/fisherd-layered-bench" --mode=kronecker-ingest \
  --target="$target" --dim="$kron_dim" --batch=256 --seconds="$secs" --repeats="$repeats" \
  --threads="$threads" --delete-session
# 2-4. ResNet-18's convolution and linear layers as Kronecker blocks, on a fresh server
#    so that its VmRSS / VmHWM are this session's: steps with fresh factors (new rows in
#    every factor first) and with cached ones through StreamNaturalGradientStep, against
#    dsyevd + dgemm of the same factors in the tool's process; the server's memory.
start_server "$out/fisherd-layered.log"
record resnet18_step "$bin/bench/fisherd-layered-bench" --mode=resnet18-step \
  --target="$address" --server-pid="$server_pid" --width-divisor="$resnet_divisor" \
  --repeats="$layered_repeats" --cached-repeats="$cached_repeats" --new-rows="$new_rows" \
  --threads="$threads" --delete-session
# 5-6. The Fashion-MNIST example's MLP (784-1000-1000-10) as three Kronecker blocks, the
#    same steps in float64 and with float32_products (the peer then uses sgemm).
record mlp_step "$bin/bench/fisherd-layered-bench" --mode=kfac-step --layout=mlp \
  --target="$address" --width-divisor="$resnet_divisor" --repeats="$layered_repeats" \
  --cached-repeats="$cached_repeats" --new-rows="$new_rows" --threads="$threads" --delete-session
record mlp_step_f32 "$bin/bench/fisherd-layered-bench" --mode=kfac-step --layout=mlp \
  --float32-products --target="$address" --width-divisor="$resnet_divisor" \
  --repeats="$layered_repeats" --cached-repeats="$cached_repeats" --new-rows="$new_rows" \
  --threads="$threads" --delete-session

report_flags=(--threads="$threads" --repeats="$repeats")
[ "$float32_products" -eq 0 ] || report_flags+=(--float32-products)
"$python" bench/report.py "$results" "${report_flags[@]}"
echo "raw results: $results"
