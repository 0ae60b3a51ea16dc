#!/usr/bin/env bash
# The benchmarks of durable sessions (fisherd --data-dir): what the write-ahead log costs
# dense ingest, how long a snapshot and a recovery take. Every figure is the median over
# --repeats runs, and every ratio compares runs of the same invocation.
#
#   bash bench/durability_bench.sh                     # the full run (2-3 minutes on 2 quiet
#                                                      # cores; recovery time grows with load)
#   bash bench/durability_bench.sh --repeats=5         # more repeats (default 3)
#   bash bench/durability_bench.sh --quick             # smoke: tiny sizes, ~15 s
#   bash bench/durability_bench.sh --build-dir=DIR     # binaries of DIR (default build);
#                                                      # this script never builds
#
# 1. Ingest: two fisherd processes, A with --data-dir on a fresh directory on the build
#    directory's filesystem (default snapshot flags) and B without, both idle but for the
#    run at hand; fisherd-bench streams dense dim-1024 batches of 256 float32 rows (1 MiB)
#    into A, then B, then A, ... (A B A B A B), for each --workers value. Reported:
#    scores/s of each, A/B (target >= 0.8x), and from `perf trace -s -e fdatasync,pwritev
#    -p A` (when perf can; else n/a) the log's group-commit factor (records logged per
#    fdatasync) and the mean fdatasync latency of its writer thread.
#    Its peer: the disk of the data directory, in the same loop, written the way the log
#    writes it (64 MiB preallocated segments, a pwrite of one batch-sized record and an
#    fdatasync per record, i.e. no group commit) and streamed (1 MiB writes, one
#    fdatasync at the end: the bandwidth bound), both in /usr/bin/python3.
# 2. Snapshot of a dense dim-4096 session (F materialized: 3+ batches of 256 rows): a
#    durable and a plain server get the same session; each is sent SIGTERM and timed to
#    its exit. The durable one's drain writes the snapshot, so snapshot seconds = the
#    durable drain - the plain drain. Reported with the snapshot file's size and MiB/s.
#    Then the durable server is restarted on the directory: recovery from the snapshot
#    (the log is still there - a first snapshot round truncates nothing - and is read,
#    but every record in it is older than the snapshot and skipped), warm (page cache)
#    and cold (the directory's files dropped from the page cache with
#    posix_fadvise(DONTNEED), which touches no other file).
# 3. Recovery against the log replayed: a durable server with no snapshot rounds
#    (--snapshot-interval-seconds=0, --snapshot-log-mb huge) takes about N MiB of
#    dim-1024 batches (N from --log-mib, default 64,256,1024; the stream's length comes
#    from the latest durable ingest rate, so N is approximate), is SIGKILLed, and is
#    restarted --repeats times warm and once cold; the figures come from its line "durable sessions in DIR:
#    recovered ... (X MiB) in T s". Reported: seconds, records, MiB, s/GiB, and the
#    slope of seconds against GiB over the sizes (the fixed start-up cost taken out).
#
# Each part prints a table and one JSON line (stdout); the raw per-run records go to
# $BENCH_OUT/durability.jsonl (default: a temporary directory, printed at the end). The
# data directories live in a temporary directory under the build directory and are
# removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
repeats=3
build_dir=build
workers_list=1,8
log_mib_list=64,256,1024
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    --repeats=*) repeats="${arg#--repeats=}" ;;
    --build-dir=*) build_dir="${arg#--build-dir=}" ;;
    --workers=*) workers_list="${arg#--workers=}" ;;
    --log-mib=*) log_mib_list="${arg#--log-mib=}" ;;
    *) echo "usage: bench/durability_bench.sh [--quick] [--repeats=N] [--build-dir=DIR]" \
            "[--workers=W1,W2] [--log-mib=N1,N2,...]" >&2
       exit 2 ;;
  esac
done
python=/usr/bin/python3

if [ "$quick" -eq 1 ]; then
  repeats=1; secs=0.5; ingest_dim=256; snap_dim=512; log_mib_list=8,16; disk_secs=0.3
  workers_list=1
else
  secs=4; ingest_dim=1024; snap_dim=4096; disk_secs=2
fi
batch=256
threads=$(nproc)

for tool in server/fisherd bench/fisherd-bench; do
  [ -x "$build_dir/$tool" ] || { echo "missing $build_dir/$tool: build first" >&2; exit 1; }
done

out="${BENCH_OUT:-$(mktemp -d)}"
mkdir -p "$out"
raw="$out/durability.jsonl"
: >"$raw"
# Data directories and copies of the binaries (a rebuild during the run cannot swap
# them), on the build directory's filesystem.
work=$(mktemp -d "$(cd "$build_dir" && pwd)/durability-bench.XXXXXX")
cp "$build_dir/server/fisherd" "$build_dir/bench/fisherd-bench" "$work/"
fisherd="$work/fisherd"
bench="$work/fisherd-bench"

servers=()
cleanup() {
  for pid in "${servers[@]+"${servers[@]}"}"; do
    kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", b - a }'; }

# start_server LOG FLAGS...: starts fisherd on a free loopback port, waits until it
# listens; sets address, server_pid and start_wall (seconds from exec to listening).
start_server() {
  local log="$1"; shift
  local t0; t0=$(now)
  "$fisherd" --listen=127.0.0.1:0 --math-threads="$threads" "$@" >"$log" 2>&1 &
  server_pid=$!
  servers+=("$server_pid")
  address=""
  for _ in $(seq 12000); do  # up to 120 s (a large recovery)
    address=$(sed -n 's/^fisherd listening on //p' "$log")
    [ -n "$address" ] && break
    kill -0 "$server_pid" 2>/dev/null || { echo "fisherd exited:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.01
  done
  [ -n "$address" ] || { echo "fisherd did not start" >&2; cat "$log" >&2; exit 1; }
  start_wall=$(elapsed "$t0" "$(now)")
  # The durable-sessions line follows the address on stderr.
  for _ in $(seq 200); do
    grep -q '^fisherd: \(durable sessions\|sessions in memory\)' "$log" && break
    sleep 0.01
  done
}

forget_server() {
  local pid="$1" kept=()
  for p in "${servers[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
  servers=("${kept[@]+"${kept[@]}"}")
}

# stop_server PID SIGNAL: sends it and waits for the exit; sets stop_seconds.
stop_server() {
  local t0; t0=$(now)
  kill -"$2" "$1"
  wait "$1" 2>/dev/null || true
  stop_seconds=$(elapsed "$t0" "$(now)")
  forget_server "$1"
}

# recovery_json LOG: the recovery line of LOG as JSON fields.
recovery_json() {
  sed -n 's/.*durable sessions in .*: recovered \([0-9]*\) session(s) from \([0-9]*\) snapshot(s) and \([0-9]*\) log record(s) (\([0-9.]*\) MiB) in \([0-9.]*\) s.*/"sessions":\1,"snapshots":\2,"records":\3,"mib":\4,"seconds":\5/p' "$1" | head -n 1
}

cpu_seconds() {  # utime + stime of a process, in seconds
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); printf "%.3f", ($12 + $13) / hz }' "/proc/$1/stat"
}

# Drops a directory's files from the page cache (clean pages; the log is fdatasync'd).
drop_cache() {
  "$python" - "$1" <<'EOF'
import os, sys
for root, _, files in os.walk(sys.argv[1]):
    for name in files:
        fd = os.open(os.path.join(root, name), os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
EOF
}

emit() { echo "$1" >>"$raw"; }

perf_ok=0
if command -v perf >/dev/null &&
   perf trace -s -e fdatasync -o /dev/null -- true >/dev/null 2>&1; then
  perf_ok=1
fi

echo "durability bench: $threads cores, $(stat -f -c %T "$work") under $build_dir," \
     "repeats $repeats; raw results in $out"
uptime | sed 's/^/  /'

# --- 1. ingest with and without --data-dir, and the disk ------------------------------
start_server "$out/ingest-durable.log" --data-dir="$work/ingest-data"
durable_addr=$address; durable_pid=$server_pid
start_server "$out/ingest-plain.log"
plain_addr=$address; plain_pid=$server_pid

# run_ingest SIDE WORKERS REP: one fisherd-bench run against SIDE (durable|plain).
run_ingest() {
  local side="$1" workers="$2" rep="$3" addr pid perf_pid="" log
  if [ "$side" = durable ]; then addr=$durable_addr; pid=$durable_pid
  else addr=$plain_addr; pid=$plain_pid; fi
  log="$out/ingest-$side-w$workers-$rep.log"
  local perf_out="$out/perf-trace-$side-w$workers-$rep.txt"
  if [ "$perf_ok" -eq 1 ] && [ "$side" = durable ]; then
    perf trace -s -e fdatasync,pwritev -p "$pid" -o "$perf_out" &
    perf_pid=$!
    sleep 0.3
  fi
  local cpu0; cpu0=$(cpu_seconds "$pid")
  "$bench" --target="$addr" --dim="$ingest_dim" --batch="$batch" --workers="$workers" \
    --seconds="$secs" --representation=dense --delete-session >"$log" 2>&1 ||
    { echo "fisherd-bench FAILED against the $side server:" >&2; tail -n 5 "$log" >&2; exit 1; }
  local cpu1; cpu1=$(cpu_seconds "$pid")
  local fdatasyncs=null fdatasync_ms=null fdatasync_max_ms=null pwritevs=null pwritev_ms=null
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
    # perf trace -s: per thread, "syscall calls errors total min avg max stddev" (msec).
    read -r fdatasyncs fdatasync_ms fdatasync_max_ms < <(awk '$1 == "fdatasync" {
        n += $2; t += $4; if ($7 > m) m = $7 }
        END { if (n) printf "%d %.4f %.3f\n", n, t / n, m; else print "null null null" }' "$perf_out")
    read -r pwritevs pwritev_ms < <(awk '$1 == "pwritev" { n += $2; t += $4 }
        END { if (n) printf "%d %.4f\n", n, t / n; else print "null null" }' "$perf_out")
  fi
  local rows_total
  rows_total=$(sed -n 's/^ *rows acknowledged (total) *//p' "$log")
  local sps; sps=$(tail -n 1 "$log" | sed -n 's/.*"scores_per_second":\([0-9.]*\).*/\1/p')
  echo "  ingest $side workers=$workers: $sps scores/s" \
       "(server CPU $(elapsed "$cpu0" "$cpu1") s; fdatasync: $fdatasyncs, mean $fdatasync_ms ms)"
  # Records the run logged: its batches, the session's creation and deletion.
  emit "{\"part\":\"ingest\",\"side\":\"$side\",\"workers\":$workers,\"rep\":$rep,\"dim\":$ingest_dim,\"batch\":$batch,\"seconds\":$secs,\"scores_per_second\":$sps,\"rows_total\":$rows_total,\"records\":$((rows_total / batch + 2)),\"server_cpu_seconds\":$(elapsed "$cpu0" "$cpu1"),\"fdatasyncs\":$fdatasyncs,\"fdatasync_mean_ms\":$fdatasync_ms,\"fdatasync_max_ms\":$fdatasync_max_ms,\"pwritevs\":$pwritevs,\"pwritev_mean_ms\":$pwritev_ms,\"loadavg1\":$(cut -d' ' -f1 /proc/loadavg)}"
}

# The disk peer: journal-shaped (per-record fdatasync) and streamed (one at the end).
run_disk() {
  local rep="$1" record_bytes=$((batch * ingest_dim * 4 + 64))
  "$python" - "$work/disk-peer" "$record_bytes" "$disk_secs" "$rep" <<'EOF' >>"$raw"
import json, os, sys, time
base, record_bytes, seconds, rep = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
os.makedirs(base, exist_ok=True)
record = os.urandom(record_bytes)
segment = 64 << 20

def sync_dir():
    fd = os.open(base, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)

# As storage/journal.cc: preallocated 64 MiB segments, one pwrite + fdatasync per record
# (a group of one), a new segment when the record does not fit; old segments deleted.
fd, offset, index, records, paths = None, segment, 0, 0, []
start = time.perf_counter()
while time.perf_counter() - start < seconds:
    if offset + record_bytes > segment:
        if fd is not None:
            os.close(fd)
        path = os.path.join(base, "%020d.wal" % index)
        index += 1
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.posix_fallocate(fd, 0, segment)
        os.fsync(fd)
        sync_dir()
        paths.append(path)
        offset = 0
        while len(paths) > 2:
            os.unlink(paths.pop(0))
    os.pwrite(fd, record, offset)
    os.fdatasync(fd)
    offset += record_bytes
    records += 1
elapsed = time.perf_counter() - start
os.close(fd)
for p in paths:
    os.unlink(p)
print(json.dumps({"part": "disk", "mode": "record_fdatasync", "rep": rep,
                  "record_bytes": record_bytes, "records": records, "seconds": elapsed,
                  "records_per_second": records / elapsed,
                  "bytes_per_second": records * record_bytes / elapsed}))

# Streamed: 1 MiB writes to a new file, one fdatasync at the end (dd conv=fdatasync).
path = os.path.join(base, "stream")
chunk = os.urandom(1 << 20)
total = 256 << 20 if seconds >= 1 else 32 << 20
start = time.perf_counter()
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
written = 0
while written < total:
    written += os.write(fd, chunk)
os.fdatasync(fd)
elapsed = time.perf_counter() - start
os.close(fd)
os.unlink(path)
print(json.dumps({"part": "disk", "mode": "stream_fdatasync", "rep": rep, "bytes": written,
                  "seconds": elapsed, "bytes_per_second": written / elapsed}))
EOF
  tail -n 2 "$raw" | "$python" -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print("  disk %s: %.0f MiB/s" % (r["mode"], r["bytes_per_second"] / 2**20))'
}

IFS=, read -r -a workers_values <<<"$workers_list"
for workers in "${workers_values[@]}"; do
  for rep in $(seq "$repeats"); do
    echo "ingest workers=$workers repeat $rep/$repeats"
    run_ingest durable "$workers" "$rep"
    run_ingest plain "$workers" "$rep"
    [ "$workers" != "${workers_values[0]}" ] || run_disk "$rep"
  done
done
grep -h 'snapshot round failed\|error' "$out/ingest-durable.log" || true
stop_server "$durable_pid" TERM
stop_server "$plain_pid" TERM
rm -rf "$work/ingest-data" "$work/disk-peer"

# --- 2. snapshot of a dense dim-4096 session, and recovery from it ---------------------
for rep in $(seq "$repeats"); do
  echo "snapshot dim $snap_dim repeat $rep/$repeats"
  data="$work/snap-data-$rep"
  no_rounds=(--snapshot-interval-seconds=0 --snapshot-log-mb=1073741824)
  start_server "$out/snap-durable-$rep.log" --data-dir="$data" "${no_rounds[@]}"
  d_addr=$address; d_pid=$server_pid
  start_server "$out/snap-plain-$rep.log"
  p_addr=$address; p_pid=$server_pid
  # 0.5 s of 256-row batches: a few batches, more than dim / 16 rows, so F is dense.
  for addr in "$d_addr" "$p_addr"; do
    "$bench" --target="$addr" --dim="$snap_dim" --batch="$batch" --workers=1 --seconds=0.5 \
      --warmup-seconds=0 --representation=dense --session=snap >>"$out/snap-fill-$rep.log" 2>&1 ||
      { echo "fill FAILED" >&2; tail -n 5 "$out/snap-fill-$rep.log" >&2; exit 1; }
  done
  sleep 0.5  # let both settle (the stream's last acks, the pool)
  stop_server "$p_pid" TERM; plain_stop=$stop_seconds
  stop_server "$d_pid" TERM; durable_stop=$stop_seconds
  snap_file=$(ls "$data/snapshots/"*.snap 2>/dev/null | head -n 1)
  [ -n "$snap_file" ] || { echo "no snapshot was written" >&2; cat "$out/snap-durable-$rep.log" >&2; exit 1; }
  snap_bytes=$(stat -c %s "$snap_file")
  log_bytes=$(du -sb --apparent-size "$data/log" | cut -f1)  # preallocated segments
  log_segments=$(ls "$data/log" | wc -l)
  rows=$(sed -n 's/^ *rows acknowledged (total) *//p' "$out/snap-fill-$rep.log" | head -n 1)
  echo "  drain: durable $durable_stop s, plain $plain_stop s; snapshot $snap_bytes bytes"
  emit "{\"part\":\"snapshot\",\"rep\":$rep,\"dim\":$snap_dim,\"rows\":$rows,\"durable_stop_seconds\":$durable_stop,\"plain_stop_seconds\":$plain_stop,\"snapshot_bytes\":$snap_bytes,\"log_batch_records\":$((rows / batch)),\"log_batch_bytes\":$((rows * snap_dim * 4)),\"log_segments\":$log_segments}"
  # Recovery from it: warm, then cold.
  for cache in warm cold; do
    [ "$cache" = warm ] || drop_cache "$data"
    start_server "$out/snap-recover-$cache-$rep.log" --data-dir="$data" "${no_rounds[@]}"
    fields=$(recovery_json "$out/snap-recover-$cache-$rep.log")
    [ -n "$fields" ] || { echo "no recovery line" >&2; cat "$out/snap-recover-$cache-$rep.log" >&2; exit 1; }
    echo "  recovery from the snapshot ($cache): {$fields}, exec to listening $start_wall s"
    emit "{\"part\":\"snapshot_recovery\",\"cache\":\"$cache\",\"rep\":$rep,\"dim\":$snap_dim,\"snapshot_bytes\":$snap_bytes,\"log_bytes_on_disk\":$log_bytes,$fields,\"start_wall_seconds\":$start_wall}"
    stop_server "$server_pid" KILL
  done
  rm -rf "$data"
done

# --- 3. recovery against the size of the log ------------------------------------------
# The stream's length for N MiB: the durable side's median ingest rate at the first
# --workers value (1 MiB batches at dim 1024; scores/s * dim * 4 bytes).
rate_mib=$("$python" - "$raw" "${workers_values[0]}" "$ingest_dim" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
rates = [r["scores_per_second"] for r in runs
         if r.get("part") == "ingest" and r["side"] == "durable" and r["workers"] == int(sys.argv[2])]
print("%.3f" % (statistics.median(rates) * int(sys.argv[3]) * 4 / 2**20))
EOF
)
IFS=, read -r -a log_sizes <<<"$log_mib_list"
for mib in "${log_sizes[@]}"; do
  echo "recovery after ~$mib MiB of log"
  data="$work/log-data-$mib"
  no_rounds=(--snapshot-interval-seconds=0 --snapshot-log-mb=1073741824)
  start_server "$out/log-$mib.log" --data-dir="$data" "${no_rounds[@]}"
  stream_secs=$(awk -v m="$mib" -v r="$rate_mib" 'BEGIN { s = m / r; if (s < 0.1) s = 0.1; printf "%.2f", s }')
  "$bench" --target="$address" --dim="$ingest_dim" --batch="$batch" --workers=1 \
    --seconds="$stream_secs" --warmup-seconds=0 --representation=dense \
    --session=recovery >"$out/log-$mib-stream.log" 2>&1 ||
    { echo "stream FAILED" >&2; tail -n 5 "$out/log-$mib-stream.log" >&2; exit 1; }
  stop_server "$server_pid" KILL
  # The next stream's length from this one's rate (the machine's load drifts).
  rows=$(sed -n 's/^ *rows acknowledged (total) *//p' "$out/log-$mib-stream.log")
  rate_mib=$(awk -v r="$rows" -v s="$stream_secs" -v d="$ingest_dim" -v old="$rate_mib" \
    'BEGIN { x = r * d * 4 / 1048576 / s; printf "%.3f", (x > 0 ? x : old) }')
  for cache in warm cold; do
    cache_repeats=$repeats
    [ "$cache" = warm ] || cache_repeats=1  # replay is CPU-bound: cold reads add little
    for rep in $(seq "$cache_repeats"); do
      [ "$cache" = warm ] || drop_cache "$data"
      log="$out/log-$mib-recover-$cache-$rep.log"
      start_server "$log" --data-dir="$data" "${no_rounds[@]}"
      fields=$(recovery_json "$log")
      [ -n "$fields" ] || { echo "no recovery line" >&2; cat "$log" >&2; exit 1; }
      echo "  $cache $rep: {$fields}, exec to listening $start_wall s"
      emit "{\"part\":\"log_recovery\",\"target_mib\":$mib,\"cache\":\"$cache\",\"rep\":$rep,$fields,\"start_wall_seconds\":$start_wall}"
      stop_server "$server_pid" KILL
    done
  done
  rm -rf "$data"
done

echo
uptime | sed 's/^/  /'
# --- the tables and JSON lines -----------------------------------------------------------
"$python" - "$raw" "$perf_ok" <<'EOF'
import json, statistics, sys

runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
perf_ok = sys.argv[2] == "1"
med = statistics.median
MiB, GiB = 2**20, 2**30

def spread(values):
    return "%.0f-%.0f" % (min(values), max(values))

def table(title, header, rows):
    print(title)
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    for r in [header] + rows:
        print("  " + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                for i, (c, w) in enumerate(zip(r, widths))))
    print()

# 1. Ingest.
ingest = [r for r in runs if r["part"] == "ingest"]
disk = [r for r in runs if r["part"] == "disk"]
summary = {"measure": "durable_ingest", "rows": []}
rows = []
for workers in sorted({r["workers"] for r in ingest}):
    d = [r for r in ingest if r["workers"] == workers and r["side"] == "durable"]
    p = [r for r in ingest if r["workers"] == workers and r["side"] == "plain"]
    d.sort(key=lambda r: r["rep"]); p.sort(key=lambda r: r["rep"])
    ds, ps = [r["scores_per_second"] for r in d], [r["scores_per_second"] for r in p]
    paired = [a / b for a, b in zip(ds, ps)]
    ratio = med(ds) / med(ps)
    cpu_d = med([r["server_cpu_seconds"] / r["records"] * 1e3 for r in d])
    cpu_p = med([r["server_cpu_seconds"] / r["records"] * 1e3 for r in p])
    factors = [r["records"] / r["fdatasyncs"] for r in d if r.get("fdatasyncs")]
    factor = med(factors) if factors else None
    syncs_per_s = med([r["fdatasyncs"] / (r["rows_total"] / r["scores_per_second"])
                       for r in d if r.get("fdatasyncs")]) if factors else None
    lat = [r["fdatasync_mean_ms"] for r in d if r.get("fdatasync_mean_ms") is not None]
    sync_ms = med(lat) if lat else None
    batch, dim = d[0]["batch"], d[0]["dim"]
    rows.append(("%d worker(s)" % workers, "%.0f (%s)" % (med(ds), spread(ds)),
                 "%.0f (%s)" % (med(ps), spread(ps)), "%.2fx" % ratio,
                 "%.2f-%.2fx" % (min(paired), max(paired)),
                 "met" if ratio >= 0.8 else "NOT met",
                 "n/a" if factor is None else "%.2f" % factor,
                 "n/a" if sync_ms is None else "%.1f" % sync_ms,
                 "n/a" if syncs_per_s is None else "%.0f" % syncs_per_s))
    summary["rows"].append({"workers": workers, "dim": dim, "batch": batch,
                            "durable_scores_per_second": med(ds),
                            "plain_scores_per_second": med(ps), "ratio": round(ratio, 4),
                            "paired_ratios": [round(x, 4) for x in paired],
                            "target": 0.8, "met": ratio >= 0.8,
                            # utime + stime / records: includes OpenBLAS's idle
                            # threads spinning in sched_yield, so not the work done.
                            "server_cpu_ms_per_batch_durable_incl_spin": round(cpu_d, 3),
                            "server_cpu_ms_per_batch_plain_incl_spin": round(cpu_p, 3),
                            "fdatasync_mean_ms": None if sync_ms is None else round(sync_ms, 3),
                            "group_commit_factor": None if factor is None else round(factor, 2),
                            "fdatasyncs_per_second": None if syncs_per_s is None else round(syncs_per_s, 1)})
table("1. Dense ingest, dim %d, %d-row float32 batches (%.2f MiB), scores/s, medians "
      "(min-max) of %d A B runs" % (dim, batch, batch * dim * 4 / MiB, len(d)),
      ("workers", "--data-dir", "memory only", "ratio", "paired", ">= 0.8x",
       "records/fdatasync", "fdatasync ms", "fdatasync/s"), rows)
drows = []
for mode, label in (("record_fdatasync", "journal-shaped: pwrite + fdatasync per record"),
                    ("stream_fdatasync", "streamed 1 MiB writes, one fdatasync at the end")):
    rs = [r for r in disk if r["mode"] == mode]
    if not rs:
        continue
    bps = [r["bytes_per_second"] for r in rs]
    per_batch = batch * dim * 4
    scores = med(bps) / per_batch * batch
    drows.append((label, "%.0f (%s)" % (med(bps) / MiB, spread([b / MiB for b in bps])),
                  "%.0f" % (med(bps) / per_batch), "%.0f" % scores,
                  "%.2f" % (1e3 * per_batch / med(bps)) if mode == "record_fdatasync" else ""))
    summary["disk_" + mode] = {"bytes_per_second": med(bps),
                               "batches_per_second": med(bps) / per_batch,
                               "equivalent_scores_per_second": scores}
if drows:
    table("   the data directory's disk, same bytes per record (peer)",
          ("disk", "MiB/s", "batches/s", "as scores/s", "ms/record"), drows)
loads = [r["loadavg1"] for r in ingest if "loadavg1" in r]
if loads:
    print("   machine: 1-minute load average %.1f-%.1f during the ingest runs (%s cores)\n"
          % (min(loads), max(loads), __import__("os").cpu_count()))
    summary["loadavg1_range"] = [min(loads), max(loads)]
if not perf_ok:
    print("   (records/fdatasync: n/a, perf trace cannot count fdatasync here)\n")
print(json.dumps(summary))
print()

# 2. Snapshot.
snaps = [r for r in runs if r["part"] == "snapshot"]
if snaps:
    times = [r["durable_stop_seconds"] - r["plain_stop_seconds"] for r in snaps]
    size = med([r["snapshot_bytes"] for r in snaps])
    rec = [r for r in runs if r["part"] == "snapshot_recovery"]
    warm = [r["seconds"] for r in rec if r["cache"] == "warm"]
    cold = [r["seconds"] for r in rec if r["cache"] == "cold"]
    log_mib = med([r["log_bytes_on_disk"] for r in rec]) / MiB
    log_records = med([r["log_batch_records"] for r in snaps])
    log_batch_mib = med([r["log_batch_bytes"] for r in snaps]) / MiB
    t = med(times)
    rows = [("drain with --data-dir (SIGTERM to exit)", "%.3f s" % med([r["durable_stop_seconds"] for r in snaps])),
            ("drain without", "%.3f s" % med([r["plain_stop_seconds"] for r in snaps])),
            ("snapshot = the difference", "%.3f s (%s)" % (t, ", ".join("%.3f" % x for x in times))),
            ("snapshot file", "%.1f MiB" % (size / MiB)),
            ("snapshot throughput", "%.0f MiB/s" % (size / MiB / t) if t > 0 else "n/a"),
            ("recovery from it, warm", "%.2f s (%s)" % (med(warm), ", ".join("%.2f" % x for x in warm))),
            ("recovery from it, cold", "%.2f s (%s)" % (med(cold), ", ".join("%.2f" % x for x in cold))),
            ("  the log beside it, read but skipped (older than the snapshot)",
             "%d batch records, %.0f MiB (%.0f MiB of segments)" % (log_records, log_batch_mib, log_mib))]
    table("2. Snapshot of a dense dim-%d session (%d-%d rows), medians of %d" %
          (snaps[0]["dim"], min(r["rows"] for r in snaps), max(r["rows"] for r in snaps),
           len(snaps)), ("measure", "value"), rows)
    print(json.dumps({"measure": "snapshot", "dim": snaps[0]["dim"],
                      "snapshot_seconds": round(t, 4),
                      "snapshot_seconds_runs": [round(x, 4) for x in times],
                      "snapshot_bytes": size,
                      "snapshot_mib_per_second": round(size / MiB / t, 1) if t > 0 else None,
                      "durable_drain_seconds": med([r["durable_stop_seconds"] for r in snaps]),
                      "plain_drain_seconds": med([r["plain_stop_seconds"] for r in snaps]),
                      "recovery_seconds_warm": med(warm), "recovery_seconds_cold": med(cold),
                      "log_batch_records_beside_snapshot": log_records,
                      "log_batch_mib_beside_snapshot": round(log_batch_mib, 1),
                      "log_segment_mib_beside_snapshot": round(log_mib, 1)}))
    print()

# 3. Recovery against the log.
logs = [r for r in runs if r["part"] == "log_recovery"]
if logs:
    rows, out = [], {"measure": "log_recovery", "rows": []}
    for cache in ("warm", "cold"):
        points = []
        for target in sorted({r["target_mib"] for r in logs}):
            rs = [r for r in logs if r["target_mib"] == target and r["cache"] == cache]
            if not rs:
                continue
            s, mib = med([r["seconds"] for r in rs]), med([r["mib"] for r in rs])
            wall = med([r["start_wall_seconds"] for r in rs])
            points.append((mib / 1024, s))
            rows.append((cache, "%.0f" % mib, "%d" % med([r["records"] for r in rs]),
                         "%.2f (%s)" % (s, ", ".join("%.2f" % r["seconds"] for r in rs)),
                         "%.2f" % wall, "%.2f" % (s / (mib / 1024)) if mib else "n/a"))
            out["rows"].append({"cache": cache, "mib": mib, "records": med([r["records"] for r in rs]),
                                "seconds": s, "start_wall_seconds": wall,
                                "seconds_per_gib": round(s / (mib / 1024), 3) if mib else None})
        if len(points) >= 2:
            n = len(points)
            mx, my = sum(p[0] for p in points) / n, sum(p[1] for p in points) / n
            sxx = sum((p[0] - mx) ** 2 for p in points)
            slope = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx if sxx else None
            if slope is not None:
                out["slope_seconds_per_gib_" + cache] = round(slope, 3)
                out["intercept_seconds_" + cache] = round(my - slope * mx, 3)
    table("3. Recovery after SIGKILL against the log replayed (no snapshot): warm, median "
          "of %d; cold, %d run" % (max(r["rep"] for r in logs if r["cache"] == "warm"),
                                   max(r["rep"] for r in logs if r["cache"] == "cold")),
          ("page cache", "MiB", "records", "seconds (runs)", "exec->listening s", "s/GiB"), rows)
    for cache in ("warm", "cold"):
        if "slope_seconds_per_gib_" + cache in out:
            print("   %s: %.2f s/GiB (least-squares slope), %.2f s fixed" %
                  (cache, out["slope_seconds_per_gib_" + cache], out["intercept_seconds_" + cache]))
    print()
    print(json.dumps(out))
EOF
echo "raw results: $raw"
