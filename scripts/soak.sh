#!/usr/bin/env bash
# The soak run of issue 18 (tests/it/soak.rs): mixed registry faults, cache
# eviction pressure, live restarts and containers coming and going, then the
# daemon's threads, fds and RSS against their baseline and no mount left.
# CI runs it for 2 minutes as part of scripts/test.sh; this runs it for
# SECONDS (default 3600). Root, after scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-3600}"
RSTARGZ_SOAK_SECS="$secs" cargo test -p rstargz --features rstargz/system --test it \
    soak::soak_faults_eviction_live_restarts_and_containers -- --exact --nocapture
