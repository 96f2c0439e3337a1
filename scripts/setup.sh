#!/usr/bin/env bash
# Installs what building, running and testing rstargz needs on a fresh
# Debian/Ubuntu machine (run as root). Idempotent: packages already present
# are skipped. Needs nothing outside the repository; the benchmarks (and
# tests/it/bench_coldstart.rs, their smoke test in CI) also need
# scripts/setup-bench.sh (the Go reference snapshotter, plot fonts, Python).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/apt.sh

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
  docker.io docker-compose  # the dev stack (docker-compose.yml), run by tests/it/compose.rs
  mmdebstrap       # its Debian base image, made offline from the apt sources
  systemd          # systemd-analyze verify of deploy/rstargz.service (tests/systemd.rs)
)
apt_install "${packages[@]}"
# Debian starts these services on install; our tests run their own instances
# (docker first: it starts containerd, and its socket unit would start it again).
for svc in docker.socket docker containerd docker-registry; do
  systemctl stop "$svc" 2>/dev/null || true
done
command -v cargo >/dev/null || { echo "setup: cargo not found (install Rust via rustup)" >&2; exit 1; }
