#!/usr/bin/env bash
# Makes the base images docker/Dockerfile builds on, debian:bookworm and
# debian:bookworm-slim, with debootstrap from Debian's archive (no registry needed),
# and imports them into the engine that `docker` talks to (DOCKER_HOST).
# The root file systems are cached as tar files in $FISHERD_IMAGE_CACHE (default
# /var/cache/fisherd-docker), so a second run skips debootstrap.
# An image already present in the engine is left alone.
set -euo pipefail
cache=${FISHERD_IMAGE_CACHE:-/var/cache/fisherd-docker}
mkdir -p "$cache"

make_rootfs_tar() {  # variant (full|slim), output tar
  local variant=$1 out=$2 rootfs
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' RETURN
  echo "debootstrap bookworm ($variant), about 30 s..."
  debootstrap --variant=minbase bookworm "$rootfs" >"$rootfs.log" 2>&1 ||
    { cat "$rootfs.log"; rm -f "$rootfs.log"; return 1; }
  rm -f "$rootfs.log"
  rm -f "$rootfs"/var/cache/apt/archives/*.deb
  rm -rf "$rootfs"/var/lib/apt/lists/*
  if [ "$variant" = slim ]; then
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'CFG'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/doc/*/copyright
CFG
    find "$rootfs/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
    rm -rf "$rootfs"/usr/share/{man,info,locale}/*
  fi
  tar --numeric-owner -C "$rootfs" -cf "$out.tmp" .
  mv "$out.tmp" "$out"
}

for variant in full slim; do
  tag=debian:bookworm
  [ "$variant" = slim ] && tag=debian:bookworm-slim
  if docker image inspect "$tag" >/dev/null 2>&1; then
    continue
  fi
  tar_file="$cache/bookworm-$variant.tar"
  [ -s "$tar_file" ] || make_rootfs_tar "$variant" "$tar_file"
  docker import --change 'CMD ["bash"]' "$tar_file" "$tag" >/dev/null
  echo "imported $tag"
done
