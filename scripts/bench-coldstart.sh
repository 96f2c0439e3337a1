#!/usr/bin/env bash
# Cold start (pull + create + run to the workload's end) of a busybox, a
# Python and a 2 GiB image: containerd's overlayfs full pull, rstargz and the
# Go reference (without and with a recorded prioritized list), on loopback
# and over a shaped 20 ms / 100 Mbit/s link, each run on fresh roots with
# the page cache dropped. Writes report.json, report.md and PNG plots.
# Run as root after scripts/setup.sh; runs scripts/setup-bench.sh (the Go
# reference, fonts, Python). A full run takes about 30 minutes
# (the 2 GiB full pull over 100 Mbit/s alone is ~3 minutes a run).
#   usage: scripts/bench-coldstart.sh [--quick] [rstargz-bench cold-start options]
#   e.g.   scripts/bench-coldstart.sh --images python --runs 5
set -euo pipefail
cd "$(dirname "$0")/.."
goref=/usr/local/bin/containerd-stargz-grpc
GO_STARGZ=$goref bash scripts/setup-bench.sh  # builds the Go reference when missing
cargo build -q --release -p rstargz --bin rstargz -p rstargz-bench --bin rstargz-bench
bin=${CARGO_TARGET_DIR:-target}/release/rstargz
bench_bin=${CARGO_TARGET_DIR:-target}/release/rstargz-bench
out=${OUT:-bench-out/cold-start}
echo "machine: $(nproc) cores, kernel $(uname -r), $(containerd --version | awk '{print $3}')" >&2
"$bench_bin" cold-start --rstargz "$bin" --out "$out" --go-reference "$goref" "$@"
echo "plots: $out/cold-start-*.png (docs/benchmarks.md shows the committed ones)" >&2
