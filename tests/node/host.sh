# Sourced by tests/node/node.sh and tests/node/vm.sh: what both test nodes need on the host.

# state_id DIR: a short id of a state directory, for the host objects a node makes (bridge, chain,
# cgroup).
state_id() { printf '%s' "$1" | cksum | cut -d' ' -f1 | cut -c1-6; }

# free_port: a free loopback TCP port.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# addresses_free IFACE HINT NETWORK...: no interface but IFACE (the node's own) holds an address in
# any NETWORK; otherwise says which clash and what to set (HINT), and fails.
addresses_free() {
  local own=$1 hint=$2
  shift 2
  ip -o -4 addr show | awk -v d="$own" '$2 != d {print $4}' | python3 -c '
import ipaddress, sys
ours = [ipaddress.ip_network(n) for n in sys.argv[2:]]
clash = [a for a in sys.stdin.read().split() if any(ipaddress.ip_interface(a).network.overlaps(n) for n in ours)]
sys.exit(f"{[str(n) for n in ours]} overlap {clash} on this machine (set {sys.argv[1]})" if clash else 0)
' "$hint" "$@"
}

# Every node up on this machine is registered under NODE_REGISTRY (one file per state directory:
# its kind and path) until its `down`. A test run killed outright (SIGKILL, a lost session) leaves
# its bridge, chain, cgroups and mounts behind, and the next run's pod range then clashes; `up`
# first takes down every registered node none of whose processes is alive.
NODE_REGISTRY=${NODE_REGISTRY:-/run/leakhunt-test-nodes}

# register_node KIND DIR / unregister_node DIR. The registering script's pid counts as alive too:
# its node's processes are not started yet.
register_node() {
  mkdir -p "$NODE_REGISTRY"
  printf '%s %s %s\n' "$1" "$$" "$2" >"$NODE_REGISTRY/$(state_id "$2")"
}
unregister_node() { rm -f "$NODE_REGISTRY/$(state_id "$1")"; }

# alive PIDFILE...: one of the processes named is running.
alive() {
  local f
  for f in "$@"; do
    [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && return 0
  done
  return 1
}

# reap_stale_nodes: `down` for every registered node that no longer runs.
reap_stale_nodes() {
  local here f kind pid dir
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  [ -d "$NODE_REGISTRY" ] || return 0
  for f in "$NODE_REGISTRY"/*; do
    [ -f "$f" ] || continue
    read -r kind pid dir <"$f" || continue
    kill -0 "$pid" 2>/dev/null && continue
    case $kind in
      node) alive "$dir/node/kubelet.pid" "$dir/node/containerd.pid" && continue
            mkdir -p "$dir/node" ;;
      vm) alive "$dir/vm/qemu.pid" && continue
          mkdir -p "$dir/vm" ;;
      *) rm -f "$f"; continue ;;
    esac
    echo "$kind: taking down a node left by a run that was killed ($dir)" >&2
    "$here/$kind.sh" down "$dir" >&2 || true
    rm -f "$f"
  done
}
