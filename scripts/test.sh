#!/usr/bin/env bash
# The project's test command: unit, integration and conformance tests.
# Run as root on a machine prepared by scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test"
cargo test --workspace --all-targets 2>&1
