#!/usr/bin/env bash
# Configures and builds everything into build/ (BUILD_TYPE, default Release).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" >/dev/null
ninja -C build
