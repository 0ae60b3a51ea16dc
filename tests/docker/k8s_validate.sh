#!/usr/bin/env bash
# Validates docker/k8s/ with tests/docker/k8s_validate.mjs (Kubernetes schema and
# structure; the HAProxy ConfigMap against docker/haproxy/haproxy.cfg).
# usage: k8s_validate.sh REPO_DIR
set -euo pipefail
repo=$(cd "$1" && pwd)
command -v node >/dev/null || { echo "node is missing; run scripts/install-deps.sh" >&2; exit 1; }
modules=$(bash "$repo/tests/docker/npm_tools.sh")
node "$repo/tests/docker/k8s_validate.mjs" "$modules" "$repo/docker/k8s" "$repo/docker/haproxy/haproxy.cfg"
