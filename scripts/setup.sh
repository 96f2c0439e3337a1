#!/usr/bin/env bash
# Installs what rstargz's build and tests need on a fresh Debian/Ubuntu
# machine (run as root). Idempotent: packages already present are skipped.
set -euo pipefail

packages=(
  fuse3            # /dev/fuse userspace bits, fusermount3
  containerd runc  # end-to-end tests and the overlayfs benchmark baseline
  docker-registry  # a real OCI registry on 127.0.0.1 for tests
  stargz-snapshotter  # ctr-remote (image rpull) for the containerd end-to-end test
  busybox-static   # /bin/busybox, the end-to-end test image's shell
  apache2-utils    # htpasswd -B for the registry basic-auth tests
  e2fsprogs        # mkfs.ext4 for LCOW scratch disks
  qemu-utils       # qemu-img checks the VHDX we write
  zstd gzip tar    # format round-trip checks with the standard tools
  jq curl
  openssl          # test CA and certificates for the registry TLS tests
  docker.io docker-compose  # the dev stack (docker-compose.yml), run by tests/compose.rs
  mmdebstrap       # its Debian base image, made offline from the apt sources
  fonts-dejavu-core   # the cold-start benchmark's PNG plots (DejaVu Sans)
  python3-minimal libpython3.11-stdlib  # the cold-start benchmark's Python image
  # The Go reference snapshotter, built below for side-by-side benchmarks:
  golang-go golang-github-containerd-stargz-snapshotter-dev golang-github-containerd-containerd-dev
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts these services on install; our tests run their own instances
# (docker first: it starts containerd, and its socket unit would start it again).
for svc in docker.socket docker containerd docker-registry; do
  systemctl stop "$svc" 2>/dev/null || true
done
# The Go reference daemon (benchmarks and their CI smoke test), ~30 s to build
# with the shared bench kit (GO_REFERENCE_DIR, default ../shared/bench/go-reference).
if [ ! -x /usr/local/bin/containerd-stargz-grpc ]; then
  go_reference=${GO_REFERENCE_DIR:-$(cd "$(dirname "$0")/.." && pwd)/../shared/bench/go-reference}
  [ -x "$go_reference/build.sh" ] || { echo "setup: $go_reference/build.sh not found (set GO_REFERENCE_DIR)" >&2; exit 1; }
  echo "setup: building the Go reference snapshotter" >&2
  "$go_reference/build.sh" /usr/local/bin/containerd-stargz-grpc >&2
fi
command -v cargo >/dev/null || { echo "setup: cargo not found (install Rust via rustup)" >&2; exit 1; }
