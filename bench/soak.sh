#!/usr/bin/env bash
# The full soak (docs/performance.md, "Soak"): fisherd-soak with its defaults (64
# workers for 60 s over a durable fisherd, then a drain under load and a restart check),
# --runs times; each run's report goes to $SOAK_OUT/run-N.txt and its key lines are
# printed. Exits non-zero if any run failed.
#
#   bash bench/soak.sh                          # configures (Release) and builds build/
#   bash bench/soak.sh --runs=3 --build-dir=DIR --no-build -- --seconds=120 --durable=0
#
# Everything after -- goes to fisherd-soak (its flags: the comment at the top of bench/soak.cc).
set -euo pipefail
cd "$(dirname "$0")/.."

runs=2
build_dir=build
no_build=0
soak_flags=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs=*) runs="${1#--runs=}" ;;
    --build-dir=*) build_dir="${1#--build-dir=}" ;;
    --no-build) no_build=1 ;;
    --) shift; soak_flags=("$@"); break ;;
    *) echo "usage: bench/soak.sh [--runs=N] [--build-dir=DIR] [--no-build] [-- fisherd-soak flags]" >&2
       exit 2 ;;
  esac
  shift
done

if [ "$no_build" -eq 0 ]; then
  [ -f "$build_dir/CMakeCache.txt" ] ||
    cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$build_dir" --target fisherd fisherd-soak >/dev/null
fi

out="${SOAK_OUT:-$(mktemp -d)}"
mkdir -p "$out"
status=0
for run in $(seq 1 "$runs"); do
  log="$out/run-$run.txt"
  if "$build_dir/bench/fisherd-soak" --seed="$run" "${soak_flags[@]+"${soak_flags[@]}"}" >"$log" 2>&1; then
    :
  else
    status=1
  fi
  echo "== run $run ($log)"
  grep -E "^(expected failures|unexpected failures|fisherd VmRSS|fisherd RssAnon|fisherd open fds|exactly-once|drain under load|fisherd-soak: (PASS|FAIL))|^  [a-z_]+/[A-Z_]+ " "$log" || true
done
exit "$status"
