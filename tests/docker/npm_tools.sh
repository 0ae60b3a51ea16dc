#!/usr/bin/env bash
# Installs, once, the npm tools the Docker and Kubernetes checks use, pinned, into
# $FISHERD_IMAGE_CACHE/npm (default /var/cache/fisherd-docker/npm), and prints the
# node_modules directory. Concurrent callers wait for each other (flock).
set -euo pipefail
dir=${FISHERD_IMAGE_CACHE:-/var/cache/fisherd-docker}/npm
packages=(dockerfilelint@1.8.0 dclint@3.1.0 kubernetes-models@5.1.0 yaml@2.8.1)
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
stamp="$dir/.installed"
if [ "$(cat "$stamp" 2>/dev/null)" != "${packages[*]}" ]; then
  command -v npm >/dev/null || { echo "npm is missing; run scripts/install-deps.sh" >&2; exit 1; }
  npm install --silent --no-audit --no-fund --prefix "$dir" "${packages[@]}" >&2
  echo "${packages[*]}" >"$stamp"
fi
echo "$dir/node_modules"
