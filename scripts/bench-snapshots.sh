#!/usr/bin/env bash
# Snapshot-operation throughput, side by side in one run:
#   rstargz (direct socket) | containerd + its overlayfs | containerd + rstargz (proxy)
# Each figure is Prepare+Mounts+Commit+Remove round trips per second on a
# child of a committed snapshot. Run as root after scripts/setup.sh (and
# python3, which scripts/setup-bench.sh installs).
#   usage: scripts/bench-snapshots.sh [ITERATIONS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/containerd.sh

command -v python3 >/dev/null || { echo "bench-snapshots: python3 is missing (scripts/setup-bench.sh installs it)" >&2; exit 1; }
iterations=${1:-1000}
concurrency=${2:-1}
cargo build -q --release -p rstargz --bin rstargz -p rstargz-bench --bin rstargz-bench
bin=${CARGO_TARGET_DIR:-target}/release/rstargz
bench_bin=${CARGO_TARGET_DIR:-target}/release/rstargz-bench

# Both snapshotters keep their data on the same filesystem, under one dir.
work=$(mktemp -d /var/tmp/rstargz-bench.XXXXXX)
sock=$work/rstargz.sock
rstargz_pid=
cleanup() {
  containerd_stop
  [ -n "$rstargz_pid" ] && kill "$rstargz_pid" 2>/dev/null && wait "$rstargz_pid" 2>/dev/null
  umount -R "$work"/containerd/root 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" serve --root "$work/rstargz" --address "$sock" --log-level warn 2>"$work/rstargz.log" &
rstargz_pid=$!
for _ in $(seq 1 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { echo "rstargz did not start" >&2; cat "$work/rstargz.log" >&2; exit 1; }
containerd_start "$work/containerd" "$sock"

run() { # LABEL SOCKET SNAPSHOTTER
  "$bench_bin" snapshot-ops --label "$1" --address "$2" --snapshotter "$3" \
    --iterations "$iterations" --concurrency "$concurrency"
}
echo "machine: $(nproc) cores, kernel $(uname -r), $(containerd --version | awk '{print $3}')" >&2
ours=$(run rstargz "$sock" rstargz)
theirs=$(run containerd-overlayfs "$CONTAINERD_ADDRESS" overlayfs)
proxied=$(run containerd-rstargz "$CONTAINERD_ADDRESS" rstargz)
printf '%s\n%s\n%s\n' "$ours" "$theirs" "$proxied"
python3 - "$ours" "$theirs" "$proxied" <<'PY'
import json, sys
ours, theirs, proxied = (json.loads(a) for a in sys.argv[1:])
print(f"{'target':<24}{'cycles/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'ratio':>8}")
for r in (theirs, ours, proxied):
    ratio = r['cycles_per_sec'] / theirs['cycles_per_sec']
    print(f"{r['label']:<24}{r['cycles_per_sec']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{ratio:>7.2f}x")
print("(ratio: cycles/s against containerd's own overlayfs through containerd, same run)")
PY
