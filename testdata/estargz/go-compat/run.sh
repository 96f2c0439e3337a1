#!/usr/bin/env bash
# Optional, manual cross-check (not run in CI: it needs Go and the Go sources):
# converts every golden input tar with `rstargz layer convert` (gzip and zstd)
# and opens the results with the Go reference reader (stargz-snapshotter
# v0.12.0 `estargz.Open`), which verifies the TOC digest and every chunk.
#
# Usage: run.sh GOPATH RSTARGZ_BINARY
#   GOPATH must hold src/github.com/containerd/stargz-snapshotter/estargz (v0.12.0),
#   src/github.com/vbatts/tar-split, klauspost/compress and opencontainers/go-digest
#   (Debian: /usr/share/gocode has the last two; GOPATH=$mine:/usr/share/gocode works).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
gopath="$1"; bin="$2"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src/esgzcheck" && cp "$here/main.go" "$work/src/esgzcheck/"
(cd "$work/src/esgzcheck" && GOPATH="$work:$gopath" GO111MODULE=off go build -o "$work/esgzcheck" .)
args=()
while read -r case chunk prio; do
    for comp in gzip zstd; do
        flags=(--compression "$comp" --chunk-size "$chunk")
        for p in $prio; do flags+=(--prioritize "$p"); done
        out="$("$bin" layer convert "$here/../$case.tar" "$work/$case.$comp" "${flags[@]}")"
        args+=("$work/$case.$comp" "$(echo "$out" | sed 's/.*"tocDigest":"\([^"]*\)".*/\1/')")
    done
done < <(python3 -c '
import json, sys
for c in json.load(open(sys.argv[1])):
    print(c["case"], c["chunk_size"] or 4194304, " ".join(c["prefetch"]))' "$here/../cases.json")
"$work/esgzcheck" "${args[@]}"
