#!/usr/bin/env bash
# Lint: clang-format-14 check of every C++ file (fast) and clang-tidy-14 with .clang-tidy
# over the project's sources (slow: several minutes a core, so CI runs only the format
# check: `scripts/lint.sh --format-only`). clang-tidy needs build/compile_commands.json
# (scripts/build.sh or `cmake --preset release` writes it) and the generated protobuf
# headers, so it builds the proto targets first.
#   scripts/lint.sh                 format check + clang-tidy on every source
#   scripts/lint.sh --format-only   format check only
#   scripts/lint.sh --fix-format    rewrite the files in place with clang-format
#   scripts/lint.sh --tidy-only [FILE...]  clang-tidy only (on FILEs if given)
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-all}
[ $# -gt 0 ] && shift
mapfile -t files < <(git ls-files '*.cc' '*.h')
status=0

if [ "$mode" = all ] || [ "$mode" = --format-only ]; then
  if ! clang-format-14 --dry-run --Werror "${files[@]}"; then
    echo "lint: formatting differs; scripts/lint.sh --fix-format rewrites it" >&2
    status=1
  fi
elif [ "$mode" = --fix-format ]; then
  clang-format-14 -i "${files[@]}"
  exit 0
fi

if [ "$mode" = all ] || [ "$mode" = --tidy-only ]; then
  build=${BUILD_DIR:-build}
  if [ ! -f "$build/compile_commands.json" ]; then
    cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  fi
  # The .pb.h headers are generated at build time.
  ninja -C "$build" fisherd_proto fisherd_durable_proto >/dev/null
  if [ $# -gt 0 ]; then
    sources=("$@")
  else
    mapfile -t sources < <(git ls-files '*.cc')
  fi
  if ! run-clang-tidy-14 -quiet -p "$build" -j "${LINT_JOBS:-2}" \
      "${sources[@]/#/$(pwd)/}" >"$build/clang-tidy.log" 2>&1; then
    status=1
  fi
  grep -E "warning:|error:" "$build/clang-tidy.log" | sort -u || true
  grep -qE "warning:|error:" "$build/clang-tidy.log" && status=1
fi
exit $status
