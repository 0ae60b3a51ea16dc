#!/usr/bin/env bash
# Builds and tests one sanitizer configuration (scripts/test.sh runs both):
#   asan  ASan + UBSan (preset asan-ubsan, build-asan/): every test but the docker label,
#         the Python suites included (they launch the instrumented fisherd through
#         FISHERD_BIN; the Python process itself is not instrumented and needs no preload).
#   tsan  TSan (preset tsan, build-tsan/): the C++ unit, service and e2e labels (core,
#         storage, common, the fuzz replays, the in-process service, fisherd and fisherctl
#         over loopback and TLS), not the python, docker and slow labels.
# Any sanitizer report fails the test that produced it: UBSan is built with
# -fno-sanitize-recover, ASan and TSan halt on the first error. Extra ctest arguments are
# passed on, e.g. `scripts/test-sanitizers.sh asan -L unit`.
set -euo pipefail
cd "$(dirname "$0")/.."
# ccache (CMakeLists.txt): paths relative to the checkout and no working directory in the
# hash, so that another clone of the repository (CI's) hits the same cache.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
root=$(pwd)
supp="$root/tests/sanitizers"

stage=${1:?usage: scripts/test-sanitizers.sh asan|tsan [ctest arguments]}
shift
case "$stage" in
  asan)
    preset=asan-ubsan
    labels=(-LE docker)
    ;;
  tsan)
    preset=tsan
    # Debian's gRPC is not built with TSan. tests/sanitizers/tsan_grpc_sync.cc tells TSan
    # where gRPC hands an operation from one thread to another (completion queues, call
    # combiners, the reactors' reference count), and tests/sanitizers/tsan.supp ignores the
    # core's own buffers (libgrpc, libgpr, its absl::Status errors) and a few library
    # internals, each with its reason. The Python suites drive the same fisherd as the
    # e2e suite and are left to the ASan stage, which runs everything but docker.
    labels=(-L "unit|service|e2e" -LE "docker|slow|python")
    ;;
  *)
    echo "usage: scripts/test-sanitizers.sh asan|tsan [ctest arguments]" >&2
    exit 2
    ;;
esac

# ASan: stop at the first error; leaks are checked when a process exits (fisherd's
# graceful shutdown, every test binary); stack-use-after-return is off for speed.
export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:detect_stack_use_after_return=0:strict_init_order=1:check_initialization_order=1"
export LSAN_OPTIONS="suppressions=$supp/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$supp/ubsan.supp:print_suppressions=0"
# TSan: stop at the first report (exit code 66) so that a race fails its test even when the
# process that saw it is a fisherd a test launched.
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$supp/tsan.supp:print_suppressions=0"

# Every report is also written to build-<stage>/sanitizer-logs/: the Python suites and the
# end-to-end tests do not always look at how a fisherd they launched exited, so a report
# there fails the stage after CTest.
logs="$root/build-${stage}/sanitizer-logs"
for var in ASAN_OPTIONS UBSAN_OPTIONS TSAN_OPTIONS; do
  export "$var=${!var}:log_path=$logs/${var%%_*}"
done
# The options above are repeated in CMakePresets.json's test presets (without log_path) for
# `ctest --preset asan-ubsan|tsan`; keep the two in step.

cmake --preset "$preset" -DFISHERD_WERROR="${FISHERD_WERROR:-OFF}" >/dev/null
cmake --build --preset "$preset" -j "${FISHERD_BUILD_JOBS:-2}"
rm -rf "$logs"
mkdir -p "$logs"
status=0
ctest --test-dir "build-${stage}" --output-on-failure --timeout 900 -j2 "${labels[@]}" "$@" ||
  status=$?
if [ -n "$(ls -A "$logs")" ]; then
  for log in "$logs"/*; do
    echo "==== $log"
    cat "$log"
  done
  echo "test-sanitizers.sh $stage: sanitizer reports above (also in $logs)" >&2
  status=1
fi
exit $status
