#!/usr/bin/env bash
# Read path and resource use (issue 8, points 3-5), side by side in one run:
#   native overlayfs on local disk | rstargz | Go stargz-snapshotter (reference)
# Sets up a docker-registry on 127.0.0.1 with eStargz images of the data,
# then for each snapshotter starts a fresh daemon per cache state and drives
# it over its Snapshots socket with `rstargz-bench read-path|resources`.
# Run as root after scripts/setup.sh (it runs scripts/setup-bench.sh for the
# Go reference and Python); prints tables, writes results.jsonl and
# a markdown fragment (second argument) if asked.
#   usage: scripts/bench-readpath.sh [BIG_MIB] [MARKDOWN_OUT]
# Bounded: every timed run stops after MAX_SECONDS (default 30 s); the warm-up
# read of the big file after 300 s. Runs that do not start cold are repeated
# REPEAT times (default 3) and the best is kept: other load on the machine
# only slows runs down. With the default 1 GiB file a whole run takes about
# 10-15 minutes here (first run: + ~10 min to build the images, kept in
# $BENCH_DIR for later runs).
set -euo pipefail
cd "$(dirname "$0")/.."

big_mib=${1:-1024}
markdown=${2:-}
max_seconds=${MAX_SECONDS:-30}
random_ops=${RANDOM_OPS:-256}
repeat=${REPEAT:-3}
tree_files=${TREE_FILES:-100000}
only=${ONLY:-}  # ONLY=container: only the runs inside a container
start_after=${START_AFTER:-0}  # seconds a container waits before its reads
bench=${BENCH_DIR:-/var/tmp/rstargz-readpath}
go_bin=${GO_STARGZ:-/usr/local/bin/containerd-stargz-grpc}

GO_STARGZ=$go_bin bash scripts/setup-bench.sh  # builds the Go reference when missing
cargo build -q --release -p rstargz --bin rstargz -p rstargz-bench --bin rstargz-bench
bin=${CARGO_TARGET_DIR:-target}/release/rstargz
bench_bin=${CARGO_TARGET_DIR:-target}/release/rstargz-bench

mkdir -p "$bench/data" "$bench/registry"
work=$(mktemp -d /var/tmp/rstargz-readpath-run.XXXXXX)
results=$work/results.jsonl
registry_pid= daemon_pid=
stop_daemon() {
  if [ -n "$daemon_pid" ]; then
    kill -TERM "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
    daemon_pid=
  fi
  # Leftover FUSE mounts of a daemon that died would block the rm below.
  local m
  for m in $(grep -o " $work/[^ ]*" /proc/self/mounts | sort -r || true); do
    umount -l "$m" 2>/dev/null || true
  done
}
cleanup() {
  stop_daemon
  if [ -n "$registry_pid" ]; then
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
  return 0
}
trap cleanup EXIT

# --- data: the same trees on local disk and in the registry ---------------
make_data() {
  local d=$bench/data
  if [ ! -f "$d/big/big.bin" ] || [ "$(stat -c %s "$d/big/big.bin")" != $((big_mib << 20)) ]; then
    rm -rf "$d/big" && mkdir -p "$d/big"
    # base64 of random bytes: compresses like text/binaries (~75%), so
    # decompression does real work.
    head -c $((big_mib << 20)) < <(base64 -w 0 /dev/urandom) >"$d/big/big.bin"
  fi
  if [ ! -f "$d/small/small.bin" ]; then
    mkdir -p "$d/small"
    head -c 10000000 < <(base64 -w 0 /dev/urandom) >"$d/small/small.bin"
  fi
  for n in 1000 10000 "$tree_files"; do
    [ -f "$d/tree$n/.done" ] && continue
    rm -rf "$d/tree$n"
    python3 - "$d/tree$n" "$n" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
per_dir = 1000
words = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod "
for i in range(n):
    d = os.path.join(root, "usr", "share", f"d{i // per_dir:04}")
    if i % per_dir == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"file-{i % per_dir:04}.txt"), "wb") as f:
        f.write((words * 40)[: 16 + (i * 7919) % 1500])
PY
    touch "$d/tree$n/.done"
  done
}

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
host=127.0.0.1:$port
cat >"$work/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $bench/registry
http:
  addr: $host
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 100); do curl -sf "http://$host/v2/" >/dev/null && break; sleep 0.1; done
curl -sf "http://$host/v2/" >/dev/null || { echo "registry did not start" >&2; cat "$work/registry.log" >&2; exit 1; }

make_data
accept=application/vnd.oci.image.manifest.v1+json
image() { # NAME: pushes data/NAME as bench/NAME:esgz unless present; prints the reference
  local name=$1 ref=$host/bench/$1
  # The tag carries the data's size so a rerun with other sizes rebuilds.
  local tag=esgz-$(du -sb "$bench/data/$name" | cut -f1)
  if ! curl -sf -H "Accept: $accept" "http://$host/v2/bench/$name/manifests/$tag" -o /dev/null; then
    echo "building image $name" >&2
    "$bin" image build-test-image --plain-http "$ref:plain" "$bench/data/$name" >/dev/null
    "$bin" image convert --plain-http "$ref:plain" "$ref:$tag" >/dev/null
  fi
  echo "$ref:$tag"
}
img_big=$(image big)
img_small=$(image small)
img_t1k=$(image tree1000)
img_t10k=$(image tree10000)
img_tree=$(image "tree$tree_files")

# --- daemons -----------------------------------------------------------------
start_daemon() { # KIND [CONFIG]: fresh root, sets daemon_pid and sock
  local kind=$1 root=$work/$1-root
  # Background fetch off in both by default: cold figures measure on-demand reads.
  local config=${2-no_background_fetch = true}
  stop_daemon
  rm -rf "$root" && mkdir -p "$root"
  sock=$work/$kind.sock
  rm -f "$sock"
  echo "$config" >"$work/$kind.toml"
  case $kind in
    rstargz) "$bin" serve --root "$root" --address "$sock" --config "$work/$kind.toml" \
               --log-level warn 2>>"$work/$kind.log" & ;;
    go) "$go_bin" -address "$sock" -root "$root" -config "$work/$kind.toml" \
          -log-level warn 2>>"$work/$kind.log" & ;;
  esac
  daemon_pid=$!
  for _ in $(seq 1 100); do [ -S "$sock" ] && break; sleep 0.1; done
  [ -S "$sock" ] || { echo "$kind did not start" >&2; tail "$work/$kind.log" >&2; exit 1; }
}

record() { # LABEL JSON...: appends labelled lines to results
  local label=$1; shift
  "$@" --label "$label" | tee -a "$results" >&2
}
readpath() { # KIND IMAGE RUNS [MAX_SECONDS]
  local kind=$1 img=$2 runs=$3 secs=${4:-$max_seconds}
  record "$kind" "$bench_bin" read-path --address "$work/$kind.sock" --image "$img" \
    --work "$work/mnt-$kind" --run "$runs" --max-seconds "$secs" --random-ops "$random_ops" --repeat "$repeat"
}
container() { # KIND RUN: reads of the big file in a container through containerd
  local kind=$1 run=$2
  record "ctr-$kind" "$bench_bin" read-path --container "$kind" \
    $([ "$kind" = overlayfs ] || echo "--address $work/$kind.sock") --image "$img_big" \
    --work "$work/ctr-$kind" --run "$run" --max-seconds 300 --random-ops "$random_ops" \
    --start-after "$start_after"
}
native() { # TREE RUNS
  record native "$bench_bin" read-path --native "$bench/data/$1" --work "$work/mnt-native" \
    --run "$2" --max-seconds "$max_seconds" --random-ops "$random_ops" --repeat "$repeat"
}

patterns="seq-4k seq-128k rand-4k rand-128k"
warm_runs=$(for s in disk page; do for p in $patterns; do printf '%s-%s,' "$s" "$p"; done; done)
warm_runs=${warm_runs%,}

echo "machine: $(nproc) cores, kernel $(uname -r); big file ${big_mib} MiB; runs bounded to ${max_seconds}s" >&2
if [ "$only" != container ]; then
  native big "$(for p in $patterns; do printf 'cold-%s,' "$p"; done)page-seq-4k,page-seq-128k,page-rand-4k,page-rand-128k"
  native "tree$tree_files" walk-cold,walk-warm
fi

# In a container through a private containerd, each daemon with its default
# config (background fetch on), fresh for each run; the baseline is
# containerd's own overlayfs. A cold read then at once the re-read, and cold
# random 4 KiB reads.
for run in reread-1m cold-rand-4k; do
  container overlayfs "$run"
  for kind in rstargz go; do
    start_daemon "$kind" ""
    container "$kind" "$run"
  done
  stop_daemon
done

for kind in rstargz go; do
  [ "$only" != container ] || break
  # Cold: a fresh daemon (empty caches) per pattern.
  for p in $patterns; do
    start_daemon "$kind"
    readpath "$kind" "$img_big" "cold-$p"
  done
  # Warm: one full read fills the snapshotter's caches, then disk and page runs.
  start_daemon "$kind"
  readpath "$kind" "$img_big" cold-seq-1m 300
  if [ "$kind" = rstargz ]; then
    # A file read whole is ready for passthrough at once; one read in
    # parts is assembled after the close: wait (bounded) until it is on disk.
    for _ in $(seq 1 120); do
      [ "$(du -sb "$work/rstargz-root/cache/files" 2>/dev/null | cut -f1)" -ge $((big_mib << 20)) ] 2>/dev/null && break
      sleep 0.5
    done
  fi
  readpath "$kind" "$img_big" "$warm_runs"
  readpath "$kind" "$img_tree" walk-cold,walk-warm
  # Resources: one fresh daemon, images mounted one after another.
  start_daemon "$kind"
  record "$kind" "$bench_bin" resources --address "$work/$kind.sock" --pid "$daemon_pid" \
    --work "$work/res-$kind" --image "$img_small" --image "$img_big" --image "$img_t1k" \
    --image "$img_t10k" --image "$img_tree"
  stop_daemon
done

python3 scripts/lib/readpath_tables.py "$results" ${markdown:+"$markdown"}
