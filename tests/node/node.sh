#!/usr/bin/env bash
# A real Kubernetes node on this machine: containerd 2 + runc + the CNI bridge plugin + kubelet,
# joined to the control plane whose admin kubeconfig is given. Cgroup v1 (or v2) under the
# node's own subtree, the cgroupfs driver (no systemd here).
#
#   tests/node/node.sh up DIR KUBECONFIG   start containerd and the kubelet, state under DIR/node;
#                                          wait for the Node to be Ready
#   tests/node/node.sh down DIR            stop both, remove every pod process, mount, network
#                                          interface, iptables rule and cgroup the node made
#   tests/node/node.sh restart DIR containerd|kubelet|node   (node: both stopped, then both started)
#                                          stop one and start it again as `up` did (the pods' shims
#                                          and containers live on, as on a real node)
#
# Binaries: NODE_BIN (default ~/.cache/leakhunt/tools/node: containerd, containerd-shim-runc-v2,
# ctr, kubelet; `make node-tools`), runc and the CNI plugins from Debian (.ci/install). Images
# are imported from NODE_IMAGES (oci-archive files; `make node-images`).
#
# Network: pods live on a bridge with an address range no interface of this machine uses. They
# reach the host's loopback API server through one DNAT rule for the `kubernetes` Service (the
# part of kube-proxy the tests need), and nothing else: the node does not forward
# (net.ipv4.ip_forward stays as it is, 0 here), so no pod packet leaves the machine.
set -euo pipefail
# shellcheck source=tests/procs.sh
. "$(dirname "$0")/../procs.sh"
# shellcheck source=tests/node/host.sh
. "$(dirname "$0")/host.sh"

die() { echo "node: $*" >&2; exit 1; }

NODE_BIN=${NODE_BIN:-$HOME/.cache/leakhunt/tools/node}
NODE_NAME=${NODE_NAME:-node-1}
# The pod range and the bridge's address in it (the pods' way to the host).
POD_CIDR=${NODE_POD_CIDR:-10.213.0.0/24}
BRIDGE_IP=${NODE_BRIDGE_IP:-10.213.0.1}
# Pods the kubelet admits (NODE_MAX_PODS; a benchmark runs 100): within the /24 pod range.
CNI_PLUGINS=${CNI_PLUGINS:-/usr/lib/cni}
# runc built from its module (make node-tools): Debian bookworm's 1.1 cannot run containerd 2's
# specs.
RUNC=${RUNC:-$NODE_BIN/runc}

# A short name per state directory: bridges and chains have length limits.
cgroup_v2() { [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; }

# The v1 controllers the kubelet and runc use, each mounted on its own here, and the hybrid
# layout's v2 tree (unified), where runc makes a cgroup too.
v1_controllers() {
  local c
  for c in cpu cpuacct cpuset memory pids blkio devices freezer hugetlb systemd unified; do
    [ -d "/sys/fs/cgroup/$c" ] && echo "$c"
  done
}

check_prereqs() {
  [ "$(id -u)" = 0 ] || die "a node runs as root"
  local b
  for b in containerd containerd-shim-runc-v2 ctr kubelet runc; do
    [ -x "$NODE_BIN/$b" ] || die "$NODE_BIN/$b missing (run: make node-tools)"
  done
  for b in bridge host-local loopback; do
    [ -x "$CNI_PLUGINS/$b" ] || die "CNI plugin $CNI_PLUGINS/$b missing (Debian package containernetworking-plugins)"
  done
  command -v iptables >/dev/null || die "iptables missing"
  # The pod range must be ours alone: no other interface may hold an address in it.
  local br
  br=$(bridge_name "$STATE")
  addresses_free "$br" NODE_POD_CIDR "$POD_CIDR" || die "pod range in use"
}

bridge_name() { echo "lhbr$(state_id "$1")"; }
chain_name() { echo "LEAKHUNT-NODE-$(state_id "$1")"; }

# The node's cgroup subtree: the kubelet's cgroupRoot, and where containerd and the kubelet
# themselves run.
cgroup_root() { echo "/leakhunt-node-$(state_id "$1")"; }

make_cgroups() {
  local root=$1 c
  if cgroup_v2; then
    mkdir -p "/sys/fs/cgroup$root"
    return
  fi
  for c in $(v1_controllers); do
    mkdir -p "/sys/fs/cgroup/$c$root" "/sys/fs/cgroup/$c$root/system"
    if [ "$c" = cpuset ]; then
      # A new cpuset has no CPUs or memory nodes until given its parent's.
      cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset$root/cpuset.cpus"
      cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset$root/cpuset.mems"
      cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset$root/system/cpuset.cpus"
      cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset$root/system/cpuset.mems"
    fi
  done
}

# Moves a process into the node's `system` cgroup (containerd, the kubelet).
enter_cgroup() {
  local root=$1 pid=$2 c
  if cgroup_v2; then
    mkdir -p "/sys/fs/cgroup$root/system"
    echo "$pid" >"/sys/fs/cgroup$root/system/cgroup.procs"
    return
  fi
  for c in $(v1_controllers); do
    echo "$pid" >"/sys/fs/cgroup/$c$root/system/cgroup.procs"
  done
}

sweep_cgroups() {
  local root=$1 c dirs=()
  if cgroup_v2; then dirs=("/sys/fs/cgroup$root"); else
    for c in $(v1_controllers); do dirs+=("/sys/fs/cgroup/$c$root"); done
  fi
  local d sub
  for _ in 1 2 3 4 5 6; do
    local left=0
    for d in "${dirs[@]}"; do
      [ -d "$d" ] || continue
      while IFS= read -r sub; do
        xargs -r kill -9 <"$sub/cgroup.procs" 2>/dev/null || true
        rmdir "$sub" 2>/dev/null || true
      done < <(find "$d" -depth -type d 2>/dev/null)
      [ -d "$d" ] && left=1
    done
    [ "$left" = 0 ] && return 0
    sleep 0.5
  done
  echo "node: warning: could not remove cgroup $root" >&2
}

write_configs() {
  local dir=$1 kubeconfig=$2 root=$3 br=$4
  mkdir -p "$dir/containerd" "$dir/cni/net.d" "$dir/kubelet" "$dir/logs"
  cat >"$dir/containerd/config.toml" <<EOF
version = 3
root = "$dir/containerd/root"
state = "$dir/containerd/state"
[grpc]
  address = "$dir/containerd/containerd.sock"
[ttrpc]
  address = "$dir/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "leakhunt.local/pause:1"
[plugins."io.containerd.cri.v1.runtime"]
  # This machine withholds CAP_SYS_RESOURCE: no score below containerd's own (the kubelet asks
  # -998 for sandboxes, -997 for Guaranteed pods).
  restrict_oom_score_adj = true
  # Pod network namespaces under this node's state directory, not /run/netns (shared with every
  # other node of the machine): node.sh down removes what is under the node's directory.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$RUNC"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$CNI_PLUGINS"]
    conf_dir = "$dir/cni/net.d"
EOF
  # No masquerade and no default route: a pod reaches other pods and the bridge (the host), no
  # further.
  cat >"$dir/cni/net.d/10-leakhunt.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "leakhunt",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$br",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$BRIDGE_IP"}]],
        "routes": [{"dst": "$SERVICE_IP/32"}]
      }
    },
    {"type": "loopback"}
  ]
}
EOF
  cat >"$dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: $root
cgroupsPerQOS: true
# This machine's memory controller is cgroup v1, which 1.35+ refuses unless told.
failCgroupV1: false
failSwapOn: false
# Not below 0 (the default is -999): lowering a score needs CAP_SYS_RESOURCE, withheld here.
oomScoreAdj: 0
containerRuntimeEndpoint: unix://$dir/containerd/containerd.sock
address: $BRIDGE_IP
port: ${KUBELET_PORT}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${KUBELET_HEALTHZ_PORT}
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  # The API server's client certificate (kube-testenv) for logs, exec and port-forward.
  x509: {clientCAFile: $KUBELET_CLIENT_CA}
authorization:
  mode: Webhook
# The images are imported, never pulled: keep them whatever the disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 200Mi
  nodefs.available: 2%
  imagefs.available: 2%
maxPods: ${NODE_MAX_PODS:-60}
podCIDR: $POD_CIDR
resolvConf: /etc/resolv.conf
serializeImagePulls: false
registerNode: true
EOF
  cp "$kubeconfig" "$dir/kubelet/kubeconfig"
}


# The `kubernetes` Service's address and the API server's: pods reach the one at the other.
api_dnat() {
  local chain=$1 br=$2 kubeconfig=$3
  local server host port cluster_ip=$SERVICE_IP
  server=$(sed -n 's|^[[:space:]]*server: https://\(.*\)$|\1|p' "$kubeconfig" | head -1)
  host=${server%:*}; port=${server##*:}
  iptables -t nat -N "$chain" 2>/dev/null || iptables -t nat -F "$chain"
  iptables -t nat -A "$chain" -i "$br" -d "$cluster_ip" -p tcp --dport 443 -j DNAT --to-destination "$host:$port"
  iptables -t nat -C PREROUTING -j "$chain" 2>/dev/null || iptables -t nat -A PREROUTING -j "$chain"
  # Loopback as a DNAT target from the bridge only.
  sysctl -qw "net.ipv4.conf.$br.route_localnet=1"
}

up() {
  local top=$1 kubeconfig=$2
  mkdir -p "$top"
  top=$(cd "$top" && pwd)
  STATE=$top
  local dir=$top/node
  reap_stale_nodes
  check_prereqs
  KUBECTL=${KUBECTL:-$(command -v kubectl)}
  if [ -f "$dir/kubelet.pid" ] && kill -0 "$(cat "$dir/kubelet.pid")" 2>/dev/null; then
    die "a node is already running for $top (tests/node/node.sh down $top)"
  fi
  local root br chain
  root=$(cgroup_root "$top"); br=$(bridge_name "$top"); chain=$(chain_name "$top")
  KUBELET_PORT=$(free_port); KUBELET_HEALTHZ_PORT=$(free_port)
  SERVICE_IP=$(KUBECONFIG=$kubeconfig "$KUBECTL" get service kubernetes -n default -o jsonpath='{.spec.clusterIP}')
  [ -n "$SERVICE_IP" ] || die "no kubernetes Service in the control plane"
  KUBELET_CLIENT_CA=${KUBELET_CLIENT_CA:-$top/pki/kubelet-client-ca.crt}
  [ -f "$KUBELET_CLIENT_CA" ] || die "no $KUBELET_CLIENT_CA: the control plane's CA for its kubelet client certificate"
  write_configs "$dir" "$kubeconfig" "$root" "$br"
  register_node node "$top"
  echo "$root" >"$dir/cgroup-root"
  # Where the pods' memory cgroups are, for the tests that read them.
  if cgroup_v2; then echo "/sys/fs/cgroup$root"; else echo "/sys/fs/cgroup/memory$root"; fi >"$dir/memory-cgroup"
  make_cgroups "$root"
  local t0
  t0=$(date +%s.%N)

  # The bridge first: the kubelet serves on its address, and the API server's DNAT needs it.
  ip link show "$br" >/dev/null 2>&1 || ip link add "$br" type bridge
  ip addr replace "$BRIDGE_IP/${POD_CIDR#*/}" dev "$br"
  ip link set "$br" up
  api_dnat "$chain" "$br" "$kubeconfig"

  start_containerd "$dir" "$root"
  import_images "$dir/containerd/containerd.sock"
  start_kubelet "$dir" "$root"
  for _ in $(seq 1 300); do
    KUBECONFIG=$kubeconfig "$KUBECTL" get node "$NODE_NAME" >/dev/null 2>&1 && break
    kill -0 "$(cat "$dir/kubelet.pid")" 2>/dev/null || { tail -40 "$dir/logs/kubelet.log" >&2; die "kubelet exited (log: $dir/logs/kubelet.log)"; }
    sleep 0.2
  done
  KUBECONFIG=$kubeconfig "$KUBECTL" wait --for=condition=Ready "node/$NODE_NAME" --timeout=120s >/dev/null \
    || { tail -40 "$dir/logs/kubelet.log" >&2; die "node $NODE_NAME not Ready (log: $dir/logs/kubelet.log)"; }
  awk -v a="$t0" -v b="$(date +%s.%N)" -v n="$NODE_NAME" \
    'BEGIN { printf "node: %s Ready in %.1fs (containerd + kubelet)\n", n, b-a }'
}

# start_containerd DIR ROOT: containerd in the node's cgroup, serving once this returns.
start_containerd() {
  local dir=$1 root=$2
  PATH=$NODE_BIN:$PATH setsid "$NODE_BIN/containerd" --config "$dir/containerd/config.toml" \
    >>"$dir/logs/containerd.log" 2>&1 </dev/null &
  echo $! >"$dir/containerd.pid"
  enter_cgroup "$root" "$(cat "$dir/containerd.pid")"
  local sock=$dir/containerd/containerd.sock
  for _ in $(seq 1 150); do
    [ -S "$sock" ] && "$NODE_BIN/ctr" --address "$sock" version >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$dir/containerd.pid")" 2>/dev/null || { tail -30 "$dir/logs/containerd.log" >&2; die "containerd exited"; }
    sleep 0.2
  done
  die "containerd did not serve on $sock in 30s"
}

# start_kubelet DIR ROOT: the kubelet in the node's cgroup (its config, certificates and pods'
# state under DIR survive a restart).
start_kubelet() {
  local dir=$1 root=$2
  PATH=$NODE_BIN:$PATH setsid "$NODE_BIN/kubelet" --config "$dir/kubelet/config.yaml" \
    --kubeconfig "$dir/kubelet/kubeconfig" --root-dir "$dir/kubelet/root" \
    --cert-dir "$dir/kubelet/pki" --hostname-override "$NODE_NAME" --node-ip "$BRIDGE_IP" \
    -v="${KUBELET_VERBOSITY:-1}" >>"$dir/logs/kubelet.log" 2>&1 </dev/null &
  echo $! >"$dir/kubelet.pid"
  enter_cgroup "$root" "$(cat "$dir/kubelet.pid")"
}

restart() {
  local top=$1 what=$2
  [ -f "$top/node/cgroup-root" ] || die "no node in $top"
  top=$(cd "$top" && pwd)
  local dir=$top/node root
  root=$(cat "$dir/cgroup-root")
  case "$what" in
    containerd) stop_pid "$dir/containerd.pid" containerd; start_containerd "$dir" "$root" ;;
    kubelet) stop_pid "$dir/kubelet.pid" kubelet; start_kubelet "$dir" "$root" ;;
    node)
      stop_pid "$dir/kubelet.pid" kubelet
      stop_pid "$dir/containerd.pid" containerd
      start_containerd "$dir" "$root"
      start_kubelet "$dir" "$root"
      echo "node: kubelet and containerd stopped and started again (pids $(cat "$dir/kubelet.pid"), $(cat "$dir/containerd.pid"))"
      return
      ;;
    *) die "restart what? containerd, kubelet or node, not $what" ;;
  esac
  echo "node: $what restarted (pid $(cat "$dir/$what.pid"))"
}

# Every oci-archive in NODE_IMAGES into containerd's Kubernetes namespace.
import_images() {
  local sock=$1 f
  [ -n "${NODE_IMAGES:-}" ] || return 0
  for f in "$NODE_IMAGES"/*.tar; do
    [ -f "$f" ] || continue
    "$NODE_BIN/ctr" --address "$sock" -n k8s.io images import --all-platforms "$f" >/dev/null \
      || die "cannot import image $f"
  done
}

down() {
  local top=$1
  [ -d "$top/node" ] || return 0
  top=$(cd "$top" && pwd)
  local dir=$top/node
  stop_pid "$dir/kubelet.pid" kubelet
  # The shims (one per pod) outlive containerd by design: they are in the node's cgroups, as are
  # the containers.
  stop_pid "$dir/containerd.pid" containerd
  [ -f "$dir/cgroup-root" ] && sweep_cgroups "$(cat "$dir/cgroup-root")"
  # Mounts left by the kubelet (volumes) and containerd (rootfs, shm, pod network namespaces),
  # deepest first.
  local m
  while IFS= read -r m; do
    umount -l "$m" 2>/dev/null || true
  done < <(awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)
  local br chain
  br=$(bridge_name "$top"); chain=$(chain_name "$top")
  ip link del "$br" 2>/dev/null || true
  iptables -t nat -D PREROUTING -j "$chain" 2>/dev/null || true
  iptables -t nat -F "$chain" 2>/dev/null || true
  iptables -t nat -X "$chain" 2>/dev/null || true
  unregister_node "$top"
  echo "node: stopped ($dir)"
}

case "${1:-}" in
  up) up "${2:?usage: node.sh up DIR KUBECONFIG}" "${3:?usage: node.sh up DIR KUBECONFIG}" ;;
  down) down "${2:?usage: node.sh down DIR}" ;;
  restart) restart "${2:?usage: node.sh restart DIR containerd|kubelet|node}" "${3:?usage: node.sh restart DIR containerd|kubelet|node}" ;;
  *) die "usage: node.sh up DIR KUBECONFIG | down DIR | restart DIR containerd|kubelet|node" ;;
esac
