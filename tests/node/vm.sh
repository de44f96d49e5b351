#!/usr/bin/env bash
# A real Kubernetes node in a virtual machine: a Debian guest (its own kernel, systemd as init, cgroup
# v2) under QEMU's software emulation, with containerd 2 + runc + the kubelet configured as kubeadm
# does (cgroupDriver: systemd, the default singleProcessOOMKill, so memory.oom.group=1 on container
# cgroups), joined to the host's control plane.
#
#   tests/node/vm.sh image                 build the guest's disk once (cached; prints its path)
#   tests/node/vm.sh up DIR KUBECONFIG     boot the guest, state under DIR/vm; wait for its Node to be Ready
#   tests/node/vm.sh status DIR            is the guest alive (QEMU's monitor, the console's last write)
#   tests/node/vm.sh down DIR              stop the guest and remove what `up` made on the host
#
# Why QEMU/TCG: this host's memory controller is cgroup v1 and its /dev/kvm runs only PVM guests, so a
# stock kernel with cgroup v2 runs only emulated. It is several times slower than the host.
#
# Network: QEMU user networking with restrict=on: the guest reaches nothing but what is forwarded.
#   guest 10.0.2.100:6443  -> the host's API server on 127.0.0.1 (guestfwd, one socat per connection)
#   host  NODE_IP:10250    -> socat -> 127.0.0.1:PORT -> the guest's kubelet (hostfwd). The API server
#                             dials the node's InternalIP, which the kubelet refuses to be a loopback
#                             address: NODE_IP sits on a port-less bridge of the host (this kernel has no
#                             dummy driver) and on a dummy interface in the guest. The relay makes the
#                             guest see its peer as QEMU's 10.0.2.2: dialled directly, QEMU would pass on
#                             the peer's address, NODE_IP, which is the guest's own (a martian, dropped).
# Pods in the guest reach the `kubernetes` Service through one DNAT rule in the guest, nothing else.
set -euo pipefail

die() { echo "vm: $*" >&2; exit 1; }
# shellcheck source=tests/node/host.sh
. "$(dirname "$0")/host.sh"

HERE=$(cd "$(dirname "$0")" && pwd)
LEAKHUNT_CACHE=${LEAKHUNT_CACHE:-$HOME/.cache/leakhunt}
NODE_BIN=${NODE_BIN:-$LEAKHUNT_CACHE/tools/node}
VM_CACHE=${VM_CACHE:-$LEAKHUNT_CACHE/vm}
VM_NODE_NAME=${VM_NODE_NAME:-vm-1}
# The node's address as the API server sees it (a dummy interface on the host and in the guest), and
# the guest's pod range: neither may be used by any interface of this machine.
VM_NODE_IP=${VM_NODE_IP:-10.213.9.2}
VM_POD_CIDR=${VM_POD_CIDR:-10.213.10.0/24}
VM_BRIDGE_IP=${VM_BRIDGE_IP:-10.213.10.1}
VM_MEMORY=${VM_MEMORY:-3072}
VM_CPUS=${VM_CPUS:-2}
VM_READY_TIMEOUT=${VM_READY_TIMEOUT:-600}
NODE_IMAGES=${NODE_IMAGES:-$LEAKHUNT_CACHE/images/oci}
# What the guest imports: the sandbox and the workloads the VM's tests run.
VM_IMAGES=${VM_IMAGES:-pause busybox python}
SUITE=${DEBIAN_SUITE:-bookworm}
PACKAGES=linux-image-amd64,systemd,systemd-sysv,dbus,udev,kmod,iproute2,iptables,procps,containernetworking-plugins,e2fsprogs

# The disk depends on the guest's files, its packages and the node binaries it carries (bump
# DISK_FORMAT when image() changes what it writes).
DISK_FORMAT=1
stamp() {
  {
    echo "$DISK_FORMAT"
    cat "$HERE"/vm/*
    echo "$SUITE $PACKAGES"
    for b in containerd containerd-shim-runc-v2 ctr runc kubelet; do cksum <"$NODE_BIN/$b"; done
  } | sha256sum | cut -c1-16
}

image() {
  local b
  for b in containerd containerd-shim-runc-v2 ctr runc kubelet; do
    [ -x "$NODE_BIN/$b" ] || die "$NODE_BIN/$b missing (run: make node-tools)"
  done
  command -v mmdebstrap >/dev/null || die "mmdebstrap missing (Debian package; .ci/install)"
  local out
  out=$VM_CACHE/$(stamp)
  if [ -f "$out/disk.img" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ]; then
    echo "$out"
    return
  fi
  local t0 work
  t0=$(date +%s)
  mkdir -p "$VM_CACHE"
  work=$(mktemp -d "$VM_CACHE/build.XXXXXX")
  # A tarball, not a directory target: nothing is bind-mounted in $work while mmdebstrap runs.
  echo "vm: mmdebstrap $SUITE (kernel, systemd, containerd's and the kubelet's needs) -> $work/rootfs.tar" >&2
  mmdebstrap --variant=apt --include="$PACKAGES" --format=tar \
    --customize-hook='chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer systemd-timesyncd.service getty@tty1.service serial-getty@ttyS0.service' \
    "$SUITE" "$work/rootfs.tar" >"$work/mmdebstrap.log" 2>&1 \
    || { tail -20 "$work/mmdebstrap.log" >&2; die "mmdebstrap failed (log: $work/mmdebstrap.log)"; }
  mkdir "$work/root"
  tar -C "$work/root" -xpf "$work/rootfs.tar"
  rm "$work/rootfs.tar"
  local r=$work/root
  install -m 0755 -t "$r/usr/local/bin" "$NODE_BIN"/{containerd,containerd-shim-runc-v2,ctr,runc,kubelet}
  install -m 0755 "$HERE/vm/node-up" "$r/usr/local/sbin/leakhunt-node-up"
  install -m 0644 -t "$r/etc/systemd/system" "$HERE"/vm/*.service
  ln -sf /etc/systemd/system/leakhunt-node.service "$r/etc/systemd/system/multi-user.target.wants/leakhunt-node.service"
  echo "$VM_NODE_NAME" >"$r/etc/hostname"
  : >"$r/etc/resolv.conf"
  printf '/dev/vda / ext4 rw,noatime 0 1\n' >"$r/etc/fstab"
  cp "$(readlink -f "$r/vmlinuz")" "$work/vmlinuz"
  cp "$(readlink -f "$r/initrd.img")" "$work/initrd.img"
  local size
  size=$(( $(du -sm "$r" | cut -f1) + 3072 ))
  mkfs.ext4 -q -F -L leakhunt-vm -d "$r" "$work/disk.img" "${size}M" >/dev/null
  rm -rf --one-file-system "$r"
  rm -rf "$out"
  mv "$work" "$out"
  echo "vm: disk $out/disk.img built in $(( $(date +%s) - t0 ))s" >&2
  echo "$out"
}

dummy_name() { echo "lhvm$(state_id "$1")"; }

check_prereqs() {
  [ "$(id -u)" = 0 ] || die "the VM node runs as root (a dummy interface on the host)"
  command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing (Debian package qemu-system-x86; .ci/install)"
  command -v socat >/dev/null || die "socat missing (Debian package; .ci/install)"
  local dummy=$1
  addresses_free "$dummy" "VM_NODE_IP / VM_POD_CIDR" "$VM_NODE_IP/32" "$VM_POD_CIDR" || die "address in use"
}

up() {
  local top=$1 kubeconfig=$2
  mkdir -p "$top"
  top=$(cd "$top" && pwd)
  local dir=$top/vm dummy
  dummy=$(dummy_name "$top")
  reap_stale_nodes
  check_prereqs "$dummy"
  KUBECTL=${KUBECTL:-$(command -v kubectl)}
  if [ -f "$dir/qemu.pid" ] && kill -0 "$(cat "$dir/qemu.pid")" 2>/dev/null; then
    die "a VM is already running for $top (tests/node/vm.sh down $top)"
  fi
  local disk t0
  disk=$(image)
  t0=$(date +%s.%N)
  mkdir -p "$dir/config/images" "$dir/logs"
  local server api_port service_ip ca
  server=$(sed -n 's|^[[:space:]]*server: https://\(.*\)$|\1|p' "$kubeconfig" | head -1)
  api_port=${server##*:}
  service_ip=$(KUBECONFIG=$kubeconfig "$KUBECTL" get service kubernetes -n default -o jsonpath='{.spec.clusterIP}')
  [ -n "$service_ip" ] || die "no kubernetes Service in the control plane"
  ca=${KUBELET_CLIENT_CA:-$top/pki/kubelet-client-ca.crt}
  [ -f "$ca" ] || die "no $ca: the control plane's CA for its kubelet client certificate"

  # What this boot needs, on a second disk the guest mounts read-only: the kubelet's kubeconfig (the
  # API server through the guest's forward; its certificate names 127.0.0.1), the CA of the API
  # server's kubelet client certificate, addresses, images.
  KUBECONFIG=$kubeconfig "$KUBECTL" config view --raw --flatten --minify \
    | sed -e 's|^\([[:space:]]*\)server: https://.*|\1server: https://10.0.2.100:6443\n\1tls-server-name: 127.0.0.1|' \
    >"$dir/config/kubeconfig"
  cp "$ca" "$dir/config/kubelet-client-ca.crt"
  cat >"$dir/config/env" <<EOF
NODE_NAME=$VM_NODE_NAME
NODE_IP=$VM_NODE_IP
POD_CIDR=$VM_POD_CIDR
BRIDGE_IP=$VM_BRIDGE_IP
SERVICE_IP=$service_ip
API_GUEST=10.0.2.100
API_PORT=6443
EOF
  local i
  for i in $VM_IMAGES; do
    [ -f "$NODE_IMAGES/$i.tar" ] || die "$NODE_IMAGES/$i.tar missing (run: make node-images)"
    ln -f "$NODE_IMAGES/$i.tar" "$dir/config/images/$i.tar" 2>/dev/null || cp "$NODE_IMAGES/$i.tar" "$dir/config/images/"
  done
  local size
  size=$(( $(du -sm "$dir/config" | cut -f1) + 32 ))
  mkfs.ext4 -q -F -L lhconfig -d "$dir/config" "$dir/config.img" "${size}M" >/dev/null
  chmod 0600 "$dir/config.img"

  register_node vm "$top"
  ip link show "$dummy" >/dev/null 2>&1 || ip link add "$dummy" type bridge
  ip addr replace "$VM_NODE_IP/32" dev "$dummy"
  ip link set "$dummy" up
  echo "$dummy" >"$dir/dummy"

  # TCG: /dev/kvm here runs only PVM kernels. The root disk is used copy-on-write (snapshot=on): the
  # cached image never changes. A guest reboot resets the machine in this QEMU process and keeps the
  # copy-on-write layer: the node reboots with its state, as a real one does.
  local fwd_port
  fwd_port=$(free_port)
  qemu-system-x86_64 -accel tcg,thread=multi -machine q35 -cpu max -smp "$VM_CPUS" -m "$VM_MEMORY" \
    -kernel "$disk/vmlinuz" -initrd "$disk/initrd.img" \
    -append "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1 systemd.unified_cgroup_hierarchy=1 systemd.show_status=0 systemd.journald.forward_to_console=1" \
    -drive "file=$disk/disk.img,if=virtio,format=raw,snapshot=on" \
    -drive "file=$dir/config.img,if=virtio,format=raw,readonly=on" \
    -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$fwd_port-10.0.2.15:10250,guestfwd=tcp:10.0.2.100:6443-cmd:socat - TCP:127.0.0.1:$api_port" \
    -device virtio-net-pci,netdev=n0 \
    -display none -monitor none -serial "file:$dir/logs/console.log" \
    -qmp "unix:$dir/qmp.sock,server=on,wait=off" \
    -daemonize -pidfile "$dir/qemu.pid" || die "qemu did not start"
  setsid socat "TCP-LISTEN:10250,bind=$VM_NODE_IP,reuseaddr,fork" "TCP:127.0.0.1:$fwd_port" \
    >"$dir/logs/relay.log" 2>&1 </dev/null &
  echo $! >"$dir/relay.pid"

  local deadline=$(( $(date +%s) + VM_READY_TIMEOUT ))
  until KUBECONFIG=$kubeconfig "$KUBECTL" get node "$VM_NODE_NAME" >/dev/null 2>&1; do
    kill -0 "$(cat "$dir/qemu.pid")" 2>/dev/null || { tail -30 "$dir/logs/console.log" >&2; die "the VM exited (console: $dir/logs/console.log)"; }
    [ "$(date +%s)" -lt "$deadline" ] || { tail -30 "$dir/logs/console.log" >&2; die "node $VM_NODE_NAME did not register in ${VM_READY_TIMEOUT}s"; }
    sleep 2
  done
  local left=$(( deadline - $(date +%s) ))
  [ "$left" -gt 10 ] || left=10
  KUBECONFIG=$kubeconfig "$KUBECTL" wait --for=condition=Ready "node/$VM_NODE_NAME" --timeout="${left}s" >/dev/null \
    || { tail -30 "$dir/logs/console.log" >&2; die "node $VM_NODE_NAME not Ready (console: $dir/logs/console.log)"; }
  awk -v a="$t0" -v b="$(date +%s.%N)" -v n="$VM_NODE_NAME" \
    'BEGIN { printf "vm: %s Ready in %.1fs (boot + containerd + kubelet, emulated)\n", n, b-a }'
}

down() {
  local top=$1
  [ -d "$top/vm" ] || return 0
  top=$(cd "$top" && pwd)
  local dir=$top/vm
  if [ -f "$dir/qemu.pid" ]; then
    local pid
    pid=$(cat "$dir/qemu.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/qemu.pid"
  fi
  if [ -f "$dir/relay.pid" ]; then
    # The listener and its per-connection children: one process group (setsid).
    kill -TERM -- "-$(cat "$dir/relay.pid")" 2>/dev/null || true
    rm -f "$dir/relay.pid"
  fi
  [ -f "$dir/dummy" ] && { ip link del "$(cat "$dir/dummy")" 2>/dev/null || true; rm -f "$dir/dummy"; }
  # The config disk holds credentials.
  rm -rf "$dir/config" "$dir/config.img" "$dir/qmp.sock"
  unregister_node "$top"
  echo "vm: stopped ($dir)"
}

# status DIR: whether the guest still runs, for a suite to tell a guest that froze (TCG has hung here
# once: console silent from 157 s of uptime, the node NotReady for 40 minutes) from a failure of its own.
# Prints one line; exits 0 when the guest is alive, 1 when QEMU has exited, hangs or stopped the guest,
# 2 when the guest runs but has written nothing on its console for VM_SILENT_LIMIT seconds (600).
status() {
  local dir=$1/vm console=$1/vm/logs/console.log
  [ -f "$dir/qemu.pid" ] && kill -0 "$(cat "$dir/qemu.pid")" 2>/dev/null || { echo "the QEMU process has exited"; return 1; }
  local answer state silent
  # QMP needs its capabilities negotiated before a command; a QEMU whose main loop hangs answers nothing.
  answer=$(printf '%s\n' '{"execute":"qmp_capabilities"}' '{"execute":"query-status"}' \
    | timeout 10 socat -t 5 - "UNIX-CONNECT:$dir/qmp.sock" 2>/dev/null)
  state=$(printf '%s' "$answer" | sed -n 's/.*"status": *"\([a-z-]*\)".*/\1/p' | tail -1)
  silent=$(( $(date +%s) - $(stat -c %Y "$console" 2>/dev/null || echo 0) ))
  if [ -z "$state" ]; then
    echo "QEMU does not answer its monitor (console silent for ${silent}s)"; return 1
  fi
  if [ "$state" != running ]; then
    echo "QEMU says the guest is $state (console silent for ${silent}s)"; return 1
  fi
  # The journal goes to the console: a live node's kubelet writes there every few minutes at least.
  if [ "$silent" -ge "${VM_SILENT_LIMIT:-600}" ]; then
    echo "the guest runs but has written nothing on its console for ${silent}s (last: $(tail -1 "$console" | cut -c1-120))"; return 2
  fi
  echo "the guest is running (console written ${silent}s ago)"
}

case "${1:-}" in
  image) image ;;
  status) status "${2:?usage: vm.sh status DIR}" ;;
  up) up "${2:?usage: vm.sh up DIR KUBECONFIG}" "${3:?usage: vm.sh up DIR KUBECONFIG}" ;;
  down) down "${2:?usage: vm.sh down DIR}" ;;
  *) die "usage: vm.sh image | up DIR KUBECONFIG | status DIR | down DIR" ;;
esac
