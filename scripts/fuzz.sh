#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ (clang-14, ASan + UBSan, into build-fuzz/) and
# runs each for a bounded time on its corpus (README "Fuzzing"):
#   scripts/fuzz.sh [seconds-per-target] [target...]
# seconds-per-target defaults to 60; no targets means all of them. Each target starts
# from fuzz/corpus/<target>/ (read only) plus build-fuzz/fuzz-corpus/<target>/, where
# the new inputs it finds are kept between runs. A finding is written to
# build-fuzz/fuzz-artifacts/<target>/ and makes the script exit 1 once every target ran;
# the last lines print executions per target from libFuzzer's final stats.
# Environment: FUZZ_JOBS (build jobs, default 2), FUZZ_BUILD_DIR (default build-fuzz),
# FUZZ_ARGS (extra libFuzzer flags, e.g. "-jobs=2 -workers=2").
set -euo pipefail
cd "$(dirname "$0")/.."
# ccache (CMakeLists.txt): paths relative to the checkout and no working directory in the
# hash, so that another clone of the repository (CI's) hits the same cache.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1

seconds=${1:-60}
shift || true
all_targets=(score_batch service flags record_format journal snapshot durable_recovery)
if [ $# -gt 0 ]; then targets=("$@"); else targets=("${all_targets[@]}"); fi
build_dir=${FUZZ_BUILD_DIR:-build-fuzz}
jobs=${FUZZ_JOBS:-2}

for t in "${targets[@]}"; do
  if [[ ! " ${all_targets[*]} " =~ " $t " ]]; then
    echo "unknown fuzz target '$t' (known: ${all_targets[*]})" >&2
    exit 2
  fi
done

build_start=$(date +%s)
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  cmake -S . -B "$build_dir" -G Ninja \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
    -DFISHERD_FUZZ=ON >/dev/null
fi
build_targets=()
for t in "${targets[@]}"; do build_targets+=("fuzz_$t"); done
cmake --build "$build_dir" -j "$jobs" --target "${build_targets[@]}"
build_seconds=$(( $(date +%s) - build_start ))
echo "fuzz build: ${build_seconds}s"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

failed=()
summary=()
for t in "${targets[@]}"; do
  work="$build_dir/fuzz-corpus/$t"
  artifacts="$build_dir/fuzz-artifacts/$t/"
  log="$build_dir/fuzz-logs/$t.log"
  mkdir -p "$work" "$artifacts" "$(dirname "$log")"
  echo "=== fuzz_$t for ${seconds}s"
  status=0
  # shellcheck disable=SC2086
  "$build_dir/fuzz/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -max_len=4096 -print_final_stats=1 -artifact_prefix="$artifacts" ${FUZZ_ARGS:-} \
    "$work" "fuzz/corpus/$t" >"$log" 2>&1 || status=$?
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)
  if [ "$status" -ne 0 ]; then
    failed+=("$t")
    grep -E 'ERROR|SUMMARY|FUZZ_CHECK|runtime error|Test unit written' "$log" | head -20 || true
    echo "fuzz_$t FAILED (exit $status); log: $log; artifacts: $artifacts"
  fi
  summary+=("$(printf '%-18s %12s execs %8s exec/s  %s' "$t" "${execs:-?}" "${rate:-?}" \
    "$([ "$status" -eq 0 ] && echo ok || echo FAILED)")")
done

echo "=== fuzz summary (${seconds}s per target, build ${build_seconds}s)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "findings in: ${failed[*]} (reproduce: $build_dir/fuzz/fuzz_<target> <artifact>)"
  exit 1
fi
