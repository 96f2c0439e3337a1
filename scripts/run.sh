#!/usr/bin/env bash
# Quick start: install what rstargz needs, build it, and run the daemon on its
# embedded defaults (root /var/lib/rstargz, socket /run/rstargz/rstargz.sock).
# Extra arguments go to `rstargz serve` (e.g. --log-level debug). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p rstargz --bin rstargz
exec "${CARGO_TARGET_DIR:-target}/release/rstargz" serve "$@"
