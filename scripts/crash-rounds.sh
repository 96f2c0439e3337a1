#!/usr/bin/env bash
# Long randomized crash-safety runs (issue 9, point 2): kill -9 the daemon
# at random moments of a mixed load, N rounds, and check the state after
# each restart (tests/it/crash_mixed.rs; CI runs its bounded default of 20).
#
#   scripts/crash-rounds.sh [ROUNDS [SEED]]     e.g. scripts/crash-rounds.sh 500 42
#
# Without SEED the test picks one from the clock and prints it; rerun a
# failure with the printed CRASH_SEED (timing still varies between runs).
# CRASH_KEEP=1 keeps the root and the daemon logs of the run. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
export CRASH_ROUNDS="${1:-200}"
if [[ -n "${2:-}" ]]; then export CRASH_SEED="$2"; fi
exec cargo test -p rstargz --features system --test it crash_mixed:: -- --nocapture
