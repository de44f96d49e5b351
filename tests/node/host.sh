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
