# Sourced by scripts: start and stop a private containerd (own root, state,
# sockets and config) with rstargz registered as a proxy snapshotter.
# Nothing here touches the machine's own /etc/containerd or /var/lib/containerd.

# containerd_start DIR RSTARGZ_SOCKET [GO_SOCKET]: writes DIR/config.toml,
# starts containerd with its socket at DIR/containerd.sock (and the Go
# reference as the snapshotter `stargz` when GO_SOCKET is given), waits
# (bounded) until it answers, and sets CONTAINERD_PID and CONTAINERD_ADDRESS.
containerd_start() {
  local dir=$1 rstargz_sock=$2 go_sock=${3:-}
  mkdir -p "$dir"
  cat >"$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[debug]
  address = "$dir/debug.sock"
[proxy_plugins.rstargz]
  type = "snapshot"
  address = "$rstargz_sock"
TOML
  [ -z "$go_sock" ] || printf '[proxy_plugins.stargz]\n  type = "snapshot"\n  address = "%s"\n' "$go_sock" >>"$dir/config.toml"
  containerd --config "$dir/config.toml" >"$dir/containerd.log" 2>&1 &
  CONTAINERD_PID=$!
  CONTAINERD_ADDRESS=$dir/containerd.sock
  local i
  for i in $(seq 1 100); do
    if ctr --address "$CONTAINERD_ADDRESS" version >/dev/null 2>&1; then return 0; fi
    kill -0 "$CONTAINERD_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "containerd did not come up; log:" >&2
  tail -20 "$dir/containerd.log" >&2
  return 1
}

# containerd_stop: stops the containerd started by containerd_start.
containerd_stop() {
  if [ -n "${CONTAINERD_PID:-}" ]; then
    kill "$CONTAINERD_PID" 2>/dev/null || true
    wait "$CONTAINERD_PID" 2>/dev/null || true
    CONTAINERD_PID=
  fi
}
