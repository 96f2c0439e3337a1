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
      # Prepare+Mounts+Commit+Remove cycles (snapshot-ops, SNAPSHOT_CYCLES) on
      # rstargz and the Go reference directly and through containerd, and on
      # containerd's overlayfs; then snapshot metadata (scale-snapshots) at
      # SNAPSHOT_LEVELS snapshots on rstargz, Go and containerd's overlayfs;
      # then start-up with SNAPSHOT_STARTUP_LAYERS remote snapshots and the
      # registry down (the startup test's measurement; SNAPSHOT_SKIP_STARTUP
      # skips it). Each daemon fresh, with its default config (an empty
      # file); the load average is logged.
      (
        source scripts/lib/containerd.sh
        sw=$(mktemp -d /var/tmp/rstargz-scale-snapshots.XXXXXX)
        pids=()
        trap 'containerd_stop; for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; done; umount -R "$sw"/containerd/root 2>/dev/null || true; rm -rf "$sw"' EXIT
        : >"$sw/empty.toml"
        # Separate daemons behind containerd: its garbage collector removes from
        # a proxy snapshotter every snapshot its own metadata does not know.
        for d in rstargz rstargz-ctr; do
          "$bin" serve --root "$sw/$d" --address "$sw/$d.sock" --config "$sw/empty.toml" \
            --log-level warn 2>"$sw/$d.log" & pids+=($!)
        done
        for d in go go-ctr; do
          "$goref" -address "$sw/$d.sock" -root "$sw/$d" -config "$sw/empty.toml" \
            -log-level warn 2>"$sw/$d.log" & pids+=($!)
        done
        for s in rstargz rstargz-ctr go go-ctr; do
          for _ in $(seq 1 100); do [ -S "$sw/$s.sock" ] && break; sleep 0.1; done
          [ -S "$sw/$s.sock" ] || { echo "$s did not start" >&2; cat "$sw/$s.log" >&2; exit 1; }
        done
        containerd_start "$sw/containerd" "$sw/rstargz-ctr.sock" "$sw/go-ctr.sock"
        echo "snapshots: load average $(cut -d' ' -f1-3 /proc/loadavg) before the cycles" >&2
        cycles=${SNAPSHOT_CYCLES:-1000}
        for t in "rstargz $sw/rstargz.sock rstargz" "go $sw/go.sock stargz" \
                 "containerd-overlayfs $CONTAINERD_ADDRESS overlayfs" \
                 "containerd-rstargz $CONTAINERD_ADDRESS rstargz" "containerd-go $CONTAINERD_ADDRESS stargz"; do
          set -- $t
          "$bench_bin" snapshot-ops --label "$1" --address "$2" --snapshotter "$3" --iterations "$cycles"
        done | tee "$out/snapshot-cycles.jsonl" >&2
        echo "snapshots: load average $(cut -d' ' -f1-3 /proc/loadavg) after the cycles" >&2
        "$bench_bin" scale-snapshots --out "$out" --levels "${SNAPSHOT_LEVELS:-10000,100000}" \
          --ops "${SNAPSHOT_OPS:-500}" \
          --target "rstargz=$sw/rstargz.sock" --target "go=$sw/go.sock@stargz" \
          --target "containerd-overlayfs=$CONTAINERD_ADDRESS@overlayfs" >/dev/null
        python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
cyc = [json.loads(l) for l in open(f"{out}/snapshot-cycles.jsonl")]
by = {c["label"]: c for c in cyc}
print("Prepare+Mounts+Commit+Remove cycles/s (same run):")
for c in cyc:
    ratio = c["cycles_per_sec"] / by["containerd-overlayfs"]["cycles_per_sec"]
    print(f"  {c['label']:<22}{c['cycles_per_sec']:>8.0f}/s  p50 {c['p50_ms']:.2f} ms  p99 {c['p99_ms']:.2f} ms  {ratio:.2f}x containerd's overlayfs")
print(f"  through containerd, rstargz / Go: {by['containerd-rstargz']['cycles_per_sec'] / by['containerd-go']['cycles_per_sec']:.2f}x")
r = json.load(open(f"{out}/scale-snapshots.json"))
ops = ["fill", "prepare", "commit", "usage", "list", "remove"]
print("ops/s at each level (same run; list = whole-store Lists/s):")
print(f"  {'target':<22}{'snapshots':>10}{'load':>6}" + "".join(f"{o:>10}" for o in ops))
for t in r["targets"]:
    for l in t["levels"]:
        print(f"  {t['label']:<22}{l['snapshots']:>10}{l['load_avg'][0]:>6.2f}" + "".join(f"{l[o]['per_sec']:>10.1f}" for o in ops))
PY
      ) || exit 1
      if [ -z "${SNAPSHOT_SKIP_STARTUP:-}" ]; then
        echo "snapshots: load average $(cut -d' ' -f1-3 /proc/loadavg) before start-up" >&2
        RSTARGZ_STARTUP_BIN=$(realpath "$bin") RSTARGZ_STARTUP_LAYERS=${SNAPSHOT_STARTUP_LAYERS:-1000} \
          cargo test -q -p rstargz --features rstargz/system --test it \
          startup::startup_with_many_remote_snapshots -- --ignored --nocapture 2>&1 |
          grep -A2 '^STARTUP' | tee "$out/startup.txt"
      fi
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
