#!/usr/bin/env bash
# Runs every test: install what is missing, build (Release), run CTest, which holds the
# C++ suites (core, service, end-to-end) and the Python end-to-end tests; then the same
# code under the sanitizers (scripts/test-sanitizers.sh): ASan+UBSan on everything but the
# docker label, TSan on the C++ unit, service and e2e tests; then every libFuzzer
# target for FISHERD_FUZZ_SECONDS (default 20) each (scripts/fuzz.sh). FISHERD_SANITIZERS=0
# skips the sanitizer and fuzz stages (a quick local run); FISHERD_WERROR=ON (CI) makes
# warnings errors.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
(cd build && ctest --output-on-failure --timeout 600 -j2)
if [ "${FISHERD_SANITIZERS:-1}" != 0 ]; then
  scripts/test-sanitizers.sh asan
  scripts/test-sanitizers.sh tsan
  scripts/fuzz.sh "${FISHERD_FUZZ_SECONDS:-20}"
fi
