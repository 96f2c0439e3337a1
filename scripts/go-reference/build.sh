#!/usr/bin/env bash
# Vendored from the project's shared bench kit (../shared/bench/go-reference) so CI can build it.
# Build the Go reference stargz snapshotter daemon (containerd-stargz-grpc) from
# Debian's source packages, for side-by-side benchmarks. Usage: build.sh OUT_BINARY
# Needs (apt): golang-go golang-github-containerd-stargz-snapshotter-dev
#              golang-github-containerd-containerd-dev
# Debian lacks k8s.io/cri-api, which only service/resolver/cri.go needs, so a
# GOPATH overlay in a temp dir shadows service/resolver with registry.go alone.
# Nothing under /usr/share is modified.
set -euo pipefail
OUT=${1:?usage: build.sh OUT_BINARY}
HERE=$(cd "$(dirname "$0")" && pwd)
SRC=/usr/share/gocode/src/github.com/containerd/stargz-snapshotter
[ -d "$SRC/service" ] || { echo "missing $SRC: apt-get install golang-go golang-github-containerd-stargz-snapshotter-dev golang-github-containerd-containerd-dev" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# go/build picks the first GOPATH entry where the package directory exists,
# so the parent package service/ is overlaid too.
OV=$WORK/gopath/src/github.com/containerd/stargz-snapshotter/service
mkdir -p "$OV/resolver" "$WORK/main"
cp "$SRC"/service/*.go "$OV/"
cp "$SRC/service/resolver/registry.go" "$OV/resolver/"
cp "$HERE/main.go" "$WORK/main/"
export GO111MODULE=off GOPATH=$WORK/gopath:/usr/share/gocode GOCACHE=${GOCACHE:-$WORK/gocache} GOFLAGS= CGO_ENABLED=0
cd "$WORK/main"
go build -trimpath -o "$OUT.tmp" ./main.go
mv "$OUT.tmp" "$OUT"
echo "built $OUT"
