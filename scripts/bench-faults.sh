#!/usr/bin/env bash
# Full read of every file of an eStargz image under transient registry
# faults, side by side in one run: rstargz and (when available) the Go
# reference containerd-stargz-grpc, each without faults and with 20 % of blob
# requests faulted (mixed: resets, 5xx/429, stalls, hangs, short and corrupt
# bodies, 401s, redirects) by the fault proxy of the tests. Prints mount and
# total times, the ratio to the same snapshotter's fault-free time, and the
# read outcomes (correct / EIO / wrong). Run as root after scripts/setup.sh;
# builds the Go reference with scripts/setup-bench.sh when it is missing.
#   usage: scripts/bench-faults.sh [DIRECTORIES]   (9 files, ~2.5 MB each; default 16)
set -euo pipefail
cd "$(dirname "$0")/.."

go_daemon=/usr/local/bin/containerd-stargz-grpc
[ -x "$go_daemon" ] || bash scripts/setup-bench.sh  # builds the Go reference

echo "machine: $(nproc) cores, kernel $(uname -r)" >&2
FAULT_BENCH_DIRS=${1:-16} cargo test -q --release -p rstargz --features system --test it faults::bench_full_read_under_faults \
  -- --ignored --nocapture 2>&1 | grep -v '^running\|^test \|^\.\?$'
