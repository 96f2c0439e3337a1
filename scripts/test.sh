#!/usr/bin/env bash
# The project's test command: unit, integration, fuzz (bounded) and conformance tests.
# Run as root on a machine prepared by scripts/setup.sh. Each stage prints
# its runner's summary; the script fails if any stage fails.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== unit and integration tests (cargo test)"
cargo test --workspace --all-targets 2>&1

echo "== bounded fuzz run, the outside-input targets (fuzz/run.sh)"
# 30 s per target, two at a time: about 1.5 min of fuzzing after the build.
# `config` is left out here (it doubles the cold instrumented build); its
# seeds and saved inputs are still replayed by tests/it/fuzz_regressions.rs.
bash fuzz/run.sh "${FUZZ_SECONDS:-30}"

echo "== containerd snapshotter conformance suite"
bash scripts/conformance.sh
