#!/usr/bin/env bash
# Runs containerd's snapshotter conformance suite against a scratch
# `rstargz serve` (debug build): own root and socket under a temp dir.
#   usage: scripts/conformance.sh [extra run.sh test flags...]
# Env: CONFORMANCE_DIR (default ../shared/conformance from the repo root),
#      CARGO_TARGET_DIR (as for cargo).
# Exit status: the suite's; also fails if the daemon does not exit cleanly
# on SIGTERM. Must run as root (the suite mounts what we return).
set -euo pipefail
cd "$(dirname "$0")/.."

conformance_dir=${CONFORMANCE_DIR:-../shared/conformance}
runner=$conformance_dir/run.sh
[ -x "$runner" ] || { echo "conformance: $runner not found (set CONFORMANCE_DIR)" >&2; exit 1; }

cargo build -q -p rstargz --bin rstargz
bin=${CARGO_TARGET_DIR:-target}/debug/rstargz

work=$(mktemp -d /tmp/rstargz-conformance.XXXXXX)
sock=$work/rstargz.sock
log=$work/serve.log
"$bin" serve --root "$work/root" --address "$sock" --log-level info >"$log" 2>&1 &
pid=$!

stop() {
	if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" 2>/dev/null || true; fi
}
trap stop EXIT

# Wait (bounded) for the socket to appear; fail early if the daemon dies.
for _ in $(seq 1 300); do
	[ -S "$sock" ] && break
	kill -0 "$pid" 2>/dev/null || { echo "conformance: rstargz serve exited early:" >&2; cat "$log" >&2; exit 1; }
	sleep 0.1
done
[ -S "$sock" ] || { echo "conformance: socket $sock never appeared" >&2; cat "$log" >&2; exit 1; }

set +e
"$runner" "$sock" stargz "$@" | tee "$work/suite.log"
suite_rc=${PIPESTATUS[0]}
set -e

kill -TERM "$pid"
daemon_rc=0
wait "$pid" || daemon_rc=$?
trap - EXIT
if [ "$daemon_rc" != 0 ]; then
	echo "conformance: rstargz serve exited with status $daemon_rc after SIGTERM; log:" >&2
	tail -n 50 "$log" >&2
	exit 1
fi
if [ "$suite_rc" != 0 ]; then
	echo "conformance: daemon log kept in $log" >&2
	exit "$suite_rc"
fi
echo "conformance: $(tail -n 1 "$work/suite.log")"
rm -rf "$work"
