#!/usr/bin/env bash
# Configures and builds everything into build/ (BUILD_TYPE, default Release; FISHERD_WERROR,
# default OFF, makes warnings errors).
set -euo pipefail
cd "$(dirname "$0")/.."
# ccache (CMakeLists.txt): paths relative to the checkout and no working directory in the
# hash, so that another clone of the repository (CI's) hits the same cache.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}" \
  -DFISHERD_WERROR="${FISHERD_WERROR:-OFF}" >/dev/null
ninja -C build
