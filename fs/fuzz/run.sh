#!/usr/bin/env bash
# Bounded fuzz run of every target: `fs/fuzz/run.sh [SECONDS_PER_TARGET]` (default 30).
# Seeds come from testdata/estargz; any crash input is copied to
# fs/fuzz/regressions/<target>/ (replayed by fs/tests/fuzz_regressions.rs) and fails the run.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-30}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
data=../../testdata/estargz
mkdir -p corpus/blob corpus/toc_json
for f in "$data"/*.estargz; do
    [ "$(stat -c %s "$f")" -le 200000 ] && cp -n "$f" corpus/blob/ || true
done
cp -n "$data"/*.toc.json corpus/toc_json/
status=0
for target in blob toc_json; do
    rm -rf "artifacts/$target"
    echo "== fuzz $target for ${secs}s"
    if ! cargo +nightly fuzz run "$target" "corpus/$target" "regressions/$target" -- \
        -max_total_time="$secs" -max_len=262144 -rss_limit_mb=2048 -print_final_stats=1; then
        status=1
    fi
    for crash in artifacts/"$target"/*; do
        [ -e "$crash" ] || continue
        cp "$crash" "regressions/$target/"
        echo "crash input saved: regressions/$target/$(basename "$crash")"
        status=1
    done
done
exit $status
