#!/usr/bin/env bash
# Installs the Debian 12 packages fisherd builds and tests with, only those missing.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config ccache
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libeigen3-dev libabsl-dev libcli11-dev libgtest-dev libgmock-dev libbenchmark-dev
  libopenblas-dev liblapacke-dev zlib1g-dev libxxhash-dev libcpp-httplib-dev
  # For promtool, which the metrics tests run; the package also holds a Prometheus server
  # (which systemd, where it runs, starts on port 9090).
  prometheus
  python3-grpcio python3-protobuf python3-numpy python3-pytest
  python3-torch python3-matplotlib dataset-fashion-mnist
  openssl docker.io docker-compose debootstrap ca-certificates
  python3-pip python3-setuptools python3-wheel python3-venv
  clang-14 libfuzzer-14-dev clang-format-14 clang-tidy-14
  haproxy
)
# npm runs the Docker smoke test's linters; a Node.js installed otherwise brings its own.
command -v npm >/dev/null || packages+=(npm)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "installing: ${missing[*]}"
sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
  "${missing[@]}"
