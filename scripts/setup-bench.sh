#!/usr/bin/env bash
# Installs what the benchmarks need on top of scripts/setup.sh (run as root,
# after it): DejaVu fonts for the cold-start plots, Python for the cold-start
# Python image and the scripts' tables, and the Go reference snapshotter
# containerd-stargz-grpc (the side-by-side baseline), built from Debian's Go
# packages with the Go reference kit. Called by scripts/bench-*.sh and CI
# (.ci/run: tests/it/bench_coldstart.rs runs the Go reference). Idempotent.
#
# The kit (build.sh + main.go) is not part of this repository: it is the
# project's shared bench kit, shared/bench/go-reference, which CI checks out
# beside the clone (../shared). Point GO_REFERENCE_DIR at a copy elsewhere.
# Env: GO_REFERENCE_DIR (default ../shared/bench/go-reference from the repo
#      root), GO_STARGZ (where to install the daemon,
#      default /usr/local/bin/containerd-stargz-grpc).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/apt.sh

apt_install \
  fonts-dejavu-core \
  python3-minimal libpython3.11-stdlib

go_stargz=${GO_STARGZ:-/usr/local/bin/containerd-stargz-grpc}
[ -x "$go_stargz" ] && exit 0
kit=${GO_REFERENCE_DIR:-$(cd .. && pwd)/shared/bench/go-reference}
if [ ! -x "$kit/build.sh" ]; then
  cat >&2 <<MSG
setup-bench: no Go reference kit at $kit (build.sh not found).
  It builds $go_stargz, the Go stargz-snapshotter the benchmarks compare with.
  The kit is not in this repository: it is shared/bench/go-reference of the
  project's shared directory, which CI places beside the clone (../shared).
  Put it there, or run: GO_REFERENCE_DIR=/path/to/go-reference scripts/setup-bench.sh
MSG
  exit 1
fi
apt_install golang-go golang-github-containerd-stargz-snapshotter-dev golang-github-containerd-containerd-dev
echo "setup-bench: building the Go reference snapshotter into $go_stargz (~30 s)" >&2
"$kit/build.sh" "$go_stargz" >&2
