#!/usr/bin/env bash
# Scale on one node (issue 18), side by side with the Go reference in one run:
#   layers    - N = 10, 100, 1,000 mounted remote layers: threads, RSS, fds,
#               time per mount, Prepare/Mounts p50/p99; rpull of a 100-layer image
#   snapshots - snapshot metadata at 10k and 100k snapshots, start-up with
#               1,000 remote snapshots and the registry down, ops through containerd
#   drain     - 20 pods from 20 eStargz images started at once over a shaped link
# Run as root after scripts/setup.sh (it runs scripts/setup-bench.sh for the
# Go reference). Figures and plots go to $OUT (default bench-out/scale).
#   usage: scripts/bench-scale.sh [PART...]   (default: every part)
set -euo pipefail
cd "$(dirname "$0")/.."
goref=${GO_STARGZ:-/usr/local/bin/containerd-stargz-grpc}
GO_STARGZ=$goref bash scripts/setup-bench.sh  # builds the Go reference when missing
cargo build -q --release -p rstargz --bin rstargz -p rstargz-bench --bin rstargz-bench
bin=${CARGO_TARGET_DIR:-target}/release/rstargz
bench_bin=${CARGO_TARGET_DIR:-target}/release/rstargz-bench
out=${OUT:-bench-out/scale}
mkdir -p "$out"
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(layers snapshots drain)
echo "machine: $(nproc) cores, kernel $(uname -r), $(containerd --version | awk '{print $3}')" >&2

for part in "${parts[@]}"; do
  case $part in
    layers)
      # N = 10, 100, 1,000 mounted layers and a 100-layer rpull, rstargz and
      # the Go reference fresh per N, same run; LAYERS / GO_MAX_LAYERS /
      # RPULL_RUNS override. report.md, report.json, scale-layers.png.
      echo "part layers: load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
      "$bench_bin" scale-layers --rstargz "$bin" --go-reference "$goref" \
        --layers "${LAYERS:-10,100,1000}" --go-max-layers "${GO_MAX_LAYERS:-1000}" \
        --rpull-runs "${RPULL_RUNS:-3}" \
        --out "$out/layers" --work "${WORK:-/var/tmp/rstargz-scale}/layers"
      echo "part layers: done, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
      ;;

    snapshots)
      echo "part snapshots: not built yet" >&2
      ;;

    drain)
      # Every mode with each daemon's default config, then rstargz alone
      # with a smaller and a larger memory tier (time and peak RSS against
      # the default's). DRAIN_RUNS (default 3) runs per mode.
      d_out=$out/drain
      "$bench_bin" drain --rstargz "$bin" --go-reference "$goref" \
        --runs "${DRAIN_RUNS:-3}" --out "$d_out/default"
      for mib in ${DRAIN_TIERS:-64 1024}; do
        RSTARGZ_BENCH_CONFIG="[directory_cache]
memory_bytes = $((mib << 20))" \
          "$bench_bin" drain --rstargz "$bin" --modes rstargz,rstargz-prio \
          --runs "${DRAIN_RUNS:-3}" --label "memory tier $mib MiB" --out "$d_out/tier-$mib"
      done
      echo "drain: $d_out/*/report.md, $d_out/default/drain.png" >&2
      ;;

    *) echo "bench-scale: unknown part '$part' (layers, snapshots, drain)" >&2; exit 2 ;;
  esac
done
