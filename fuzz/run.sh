#!/usr/bin/env bash
# Bounded fuzz run: `fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]` (default
# 30 s, two at a time, every target that takes outside bytes: blob toc_json
# tar hosts_toml multipart). `config` (the operator's own file) runs only when
# named: it builds the whole daemon crate instrumented, which more than
# doubles the build (see README, Reliability). Seeds come from testdata/estargz
# and fuzz/seeds/<target>/; a crash input is copied to fuzz/regressions/<target>/
# (replayed by tests/it/fuzz_regressions.rs under `cargo test`) and fails the run.
# Uses `cargo +nightly` when rustup has it, else the stable toolchain with
# RUSTC_BOOTSTRAP=1 (the sanitizer flags need it). cargo-fuzz is installed
# pinned into ~/.cargo/bin once; the build is cached in $FUZZ_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-30}"
shift || true
all=(blob toc_json tar hosts_toml multipart config)
[ "$#" -gt 0 ] && targets=("$@") || targets=(blob toc_json tar hosts_toml multipart)
features=()
for t in "${targets[@]}"; do
    [ "$t" = config ] && features=(--features config)
done
CARGO_FUZZ_VERSION=0.13.2
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rstargz/fuzz-target}"
# The config feature changes the shared dependencies' features: a build dir of
# its own, so runs with and without it do not rebuild each other's.
[ "${#features[@]}" -gt 0 ] && CARGO_TARGET_DIR="$CARGO_TARGET_DIR-config"

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
if cargo +nightly --version >/dev/null 2>&1; then
    toolchain=(+nightly)
else
    toolchain=()
    export RUSTC_BOOTSTRAP=1
fi

data=../testdata/estargz
for t in "${all[@]}"; do mkdir -p "corpus/$t"; done
for f in "$data"/*.estargz; do
    [ "$(stat -c %s "$f")" -le 200000 ] && cp -n "$f" corpus/blob/
done
for f in "$data"/*.tar; do
    [ "$(stat -c %s "$f")" -le 200000 ] && cp -n "$f" corpus/tar/
done
cp -n "$data"/*.toc.json corpus/toc_json/
for t in "${all[@]}"; do
    if [ -d "seeds/$t" ]; then cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true; fi
done

echo "== fuzz build (${toolchain[*]:-stable, RUSTC_BOOTSTRAP=1})"
# One build for all targets; the runs below reuse it (same features).
cargo "${toolchain[@]}" fuzz build --debug-assertions "${features[@]}"

# One target: runs it for $secs, keeps its log, saves crash inputs.
fuzz_one() {
    local t="$1" status=0
    rm -rf "artifacts/$t"
    cargo "${toolchain[@]}" fuzz run --debug-assertions "${features[@]}" "$t" "corpus/$t" "regressions/$t" -- \
        -max_total_time="$secs" -max_len=262144 -rss_limit_mb=2048 -timeout=20 \
        -print_final_stats=1 >"artifacts/$t.log" 2>&1 || status=1
    for crash in artifacts/"$t"/*; do
        [ -e "$crash" ] || continue
        cp "$crash" "regressions/$t/"
        echo "crash input saved: fuzz/regressions/$t/$(basename "$crash")"
        status=1
    done
    local execs rate
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "artifacts/$t.log" | grep -o '[0-9]*$' || echo "?")
    rate=$(grep -o 'exec/s: *[0-9]*' "artifacts/$t.log" | tail -1 | grep -o '[0-9]*$' || echo "?")
    echo "fuzz $t: ${secs}s, ${execs} execs, ${rate} exec/s, $([ $status = 0 ] && echo ok || echo FAILED)"
    [ $status = 0 ] || tail -40 "artifacts/$t.log"
    return $status
}

mkdir -p artifacts
status=0
# Two at a time: the machine has two cores.
for ((i = 0; i < ${#targets[@]}; i += 2)); do
    pids=()
    for t in "${targets[@]:i:2}"; do
        fuzz_one "$t" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || status=1; done
done
echo "fuzz: $([ $status = 0 ] && echo "${#targets[@]} passed, 0 failed" || echo "FAILED")"
exit $status
