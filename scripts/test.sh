#!/usr/bin/env bash
# The project's test command: unit, integration, fuzz (bounded) and conformance tests.
# Run as root on a machine prepared by scripts/setup.sh. Each stage prints
# its runner's summary; the script fails if any stage fails.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every tier: the `system` features add the tests that need root, FUSE, a
# registry, containerd, dockerd or qemu-img (plain `cargo test` leaves them
# out; rstargz-snapshotter has one, a bind-mounting unit test); a missing
# prerequisite fails them, never skips them.
features=rstargz/system,rstargz-fs/system,rstargz-snapshotter/system

# tests/it/bench_coldstart.rs runs target/<profile>/rstargz-bench, and
# `cargo test` builds only the binaries of the packages whose integration
# tests it runs (rstargz's, not rstargz-bench's).
cargo build --workspace --bins --features "$features" 2>&1

echo "== unit and integration tests (cargo test, system tier on)"
cargo test --workspace --all-targets --features "$features" 2>&1

echo "== bounded fuzz run, the outside-input targets (fuzz/run.sh)"
# 30 s per target, two at a time: about 1.5 min of fuzzing after the build.
# `config` is left out here (it doubles the cold instrumented build); its
# seeds and saved inputs are still replayed by tests/it/fuzz_regressions.rs.
bash fuzz/run.sh "${FUZZ_SECONDS:-30}"

echo "== containerd snapshotter conformance suite"
bash scripts/conformance.sh
