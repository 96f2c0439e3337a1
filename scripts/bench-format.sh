#!/usr/bin/env bash
# eStargz format benchmark (release build): TOC parse + index time and memory
# for a 100k-entry layer, cold 256 MiB read throughput (gzip, zstd) and
# conversion throughput, each against gzip/zstd CLI baselines from the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p rstargz-fs --bench format "$@"
