#!/usr/bin/env bash
# Runs every test: install what is missing, build (Release), run CTest, which holds the
# C++ suites (core, service, end-to-end) and the Python end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
cd build
ctest --output-on-failure --timeout 600 -j2
