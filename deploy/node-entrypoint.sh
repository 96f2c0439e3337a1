#!/bin/bash
# Node of the dev stack: `rstargz serve`, then containerd with rstargz as its
# `stargz` proxy snapshotter. Both log to the container's output
# (`docker compose logs node`). Stops both on SIGTERM; exits when either dies.
set -euo pipefail

if [ ! -x /usr/local/bin/rstargz ]; then
  echo "node: /usr/local/bin/rstargz is missing: build it on the host (cargo build --release)" \
       "or point RSTARGZ_BIN at it" >&2
  exit 1
fi
mkdir -p /run/rstargz /var/lib/rstargz /var/lib/containerd

# containerd's config with the stack's registry: CRI's pause image comes
# from it, over plain HTTP.
registry=${RSTARGZ_REGISTRY:-127.0.0.1:5000}
sed "s|@RSTARGZ_REGISTRY@|$registry|g" /etc/containerd/config.toml.in >/etc/containerd/config.toml
mkdir -p "/etc/containerd/certs.d/$registry"
cat >"/etc/containerd/certs.d/$registry/hosts.toml" <<EOF
server = "http://$registry"
[host."http://$registry"]
  capabilities = ["pull", "resolve"]
EOF

rstargz serve --config /etc/rstargz/config.toml &
rstargz_pid=$!
# containerd dials the snapshotter lazily, but a Prepare right after start-up
# must not race it: wait (bounded) for the socket.
for _ in $(seq 300); do
  [ -S /run/rstargz/rstargz.sock ] && break
  kill -0 "$rstargz_pid" 2>/dev/null || { echo "node: rstargz serve exited" >&2; exit 1; }
  sleep 0.1
done
[ -S /run/rstargz/rstargz.sock ] || { echo "node: rstargz serve did not start" >&2; exit 1; }

containerd --config /etc/containerd/config.toml &
containerd_pid=$!

stop() {
  kill -TERM "$containerd_pid" 2>/dev/null || true
  wait "$containerd_pid" 2>/dev/null || true
  # SIGTERM does not unmount rstargz's FUSE layers: with live restart on (the
  # default, which deploy/rstargz.toml leaves) rstargz hands them to its fd
  # holder for the next `rstargz serve` (README, Reliability). None follows
  # here: the mounts go away with the container. SIGINT, or `[fuse]
  # live_restart = false` in rstargz.toml, would unmount them.
  kill -TERM "$rstargz_pid" 2>/dev/null || true
  wait "$rstargz_pid" 2>/dev/null || true
}
trap 'stop; exit 0' TERM INT
set +e
wait -n "$rstargz_pid" "$containerd_pid"
status=$?
echo "node: a daemon exited ($status), stopping" >&2
stop
exit "$status"
