#!/usr/bin/env bash
# Builds the images the real test node runs, with buildah and no registry: base images are made
# from Debian packages (mmdebstrap) and tagged under leakhunt.local/, the leakhunt image is the
# repository's Dockerfile built with those bases as build arguments. Each image is written as an
# oci-archive into OUT (default ~/.cache/leakhunt/images/oci), which tests/node/node.sh imports
# into containerd. An image whose inputs have not changed is not built again.
#
#   tests/node/images/build.sh [IMAGE...]    pause busybox python python314 java kubectl leakhunt (default: all)
set -euo pipefail
cd "$(dirname "$0")/../../.."
ROOT=$(pwd)
CACHE=${LEAKHUNT_CACHE:-$HOME/.cache/leakhunt}
OUT=${NODE_IMAGES:-$CACHE/images/oci}
WORK=$CACHE/images/work
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$OUT" "$WORK"
BUILDAH=(buildah --root "$CACHE/containers/storage" --runroot /run/leakhunt-buildah --storage-driver vfs)

die() { echo "images: $*" >&2; exit 1; }
log() { echo "images: $*" >&2; }
command -v buildah >/dev/null || die "buildah missing (Debian package buildah; .ci/install)"
command -v mmdebstrap >/dev/null || die "mmdebstrap missing (Debian package mmdebstrap; .ci/install)"

# A stamp of what an image is made of: rebuilt when it changes.
fresh() {
  local name=$1 stamp=$2
  [ -f "$OUT/$name.tar" ] && [ "$(cat "$OUT/$name.stamp" 2>/dev/null)" = "$stamp" ]
}
done_image() {
  local name=$1 ref=$2 stamp=$3
  rm -f "$OUT/$name.tar"
  "${BUILDAH[@]}" push -q "$ref" "oci-archive:$OUT/$name.tar:$ref" >/dev/null
  chmod 0644 "$OUT/$name.tar"
  echo "$stamp" >"$OUT/$name.stamp"
  log "$ref -> $OUT/$name.tar ($(du -h "$OUT/$name.tar" | cut -f1))"
}

# A Debian root filesystem as a tarball (cached by its package list).
rootfs() {
  local name=$1; shift
  local tar=$WORK/$name.tar key
  key="$SUITE $* v1"
  if [ -f "$tar" ] && [ "$(cat "$tar.key" 2>/dev/null)" = "$key" ]; then
    echo "$tar"; return
  fi
  log "mmdebstrap $SUITE ($*) -> $tar"
  local include
  include=$(IFS=,; echo "$*")
  mmdebstrap --quiet --variant=minbase --format=tar ${include:+--include="$include"} \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    "$SUITE" "$tar.part" "$MIRROR" >&2
  mv "$tar.part" "$tar"
  echo "$key" >"$tar.key"
  echo "$tar"
}

# An image FROM scratch holding a root filesystem tarball.
from_rootfs() {
  local ref=$1 tar=$2; shift 2
  local c
  c=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" add "$c" "$tar" / >/dev/null
  "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@" "$c"
  "${BUILDAH[@]}" commit -q --rm "$c" "$ref" >/dev/null
}

image_pause() {
  local src=tests/node/images/pause.c stamp
  stamp=$(sha256sum "$src" | cut -c1-16)
  fresh pause "$stamp" && return
  local ctx=$WORK/pause
  rm -rf "$ctx" && mkdir -p "$ctx"
  gcc -static -O2 -s -o "$ctx/pause" "$src"
  local c
  c=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" copy "$c" "$ctx/pause" /pause >/dev/null
  "${BUILDAH[@]}" config --entrypoint '["/pause"]' --user 65535:65535 "$c"
  "${BUILDAH[@]}" commit -q --rm "$c" leakhunt.local/pause:1 >/dev/null
  done_image pause leakhunt.local/pause:1 "$stamp"
}

# busybox for the hogs and probes: Debian's static build, its applets as symlinks.
image_busybox() {
  local stamp="busybox-static $SUITE v1"
  fresh busybox "$stamp" && return
  local ctx=$WORK/busybox
  rm -rf "$ctx" && mkdir -p "$ctx/deb" "$ctx/root/bin" "$ctx/root/tmp"
  (cd "$ctx/deb" && apt-get download -q busybox-static >/dev/null) || die "cannot download busybox-static"
  dpkg-deb -x "$ctx"/deb/busybox-static_*.deb "$ctx/x"
  cp "$ctx/x/bin/busybox" "$ctx/root/bin/busybox"
  local applet
  for applet in $("$ctx/root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$ctx/root/bin/$applet"
  done
  chmod 1777 "$ctx/root/tmp"
  tar -C "$ctx/root" -cf "$ctx/root.tar" .
  from_rootfs leakhunt.local/busybox:1 "$ctx/root.tar"
  done_image busybox leakhunt.local/busybox:1 "$stamp"
}

# Python with Flask (the seed's app) and uWSGI (the seed's server), from Debian.
image_python() {
  local tar stamp
  tar=$(rootfs python python3 python3-flask uwsgi-core uwsgi-plugin-python3)
  stamp=$(cat "$tar.key")
  fresh python "$stamp" && return
  from_rootfs leakhunt.local/python:3-flask "$tar"
  done_image python leakhunt.local/python:3-flask "$stamp"
}

# CPython 3.14 with Flask, from Debian testing (the analyzer tests' root filesystem, made by
# tests/workloads/pyroot.sh): the e2e's allocation sites need PEP 768, which bookworm's 3.11 lacks.
# Its 3.15 stays out of the image.
image_python314() {
  local root stamp
  root=$(tests/workloads/pyroot.sh)
  stamp="$(cat "$root/.leakhunt-stamp") image v1"
  fresh python314 "$stamp" && return
  tar -C "$root" --exclude=./.leakhunt-stamp --exclude='./usr/lib/python3.15' \
    --exclude='./usr/bin/python3.15*' --exclude='./usr/lib/x86_64-linux-gnu/libpython3.15*' \
    -cf "$WORK/python314.tar" .
  from_rootfs leakhunt.local/python:3.14-flask "$WORK/python314.tar"
  rm -f "$WORK/python314.tar"
  done_image python314 leakhunt.local/python:3.14-flask "$stamp"
}

# A Java service: Debian's OpenJDK 17 runtime (no JDK tools: leakhunt must need none in the image)
# and tests/workloads/Shapes.java compiled by this host's javac into /app.
image_java() {
  local tar stamp src=tests/workloads/Shapes.java
  command -v javac >/dev/null || die "javac missing (Debian package openjdk-17-jdk-headless; .ci/install)"
  tar=$(rootfs java openjdk-17-jre-headless)
  stamp="$(cat "$tar.key") $(sha256sum "$src" | cut -c1-16) $(javac -version 2>&1)"
  fresh java "$stamp" && return
  local ctx=$WORK/java-app
  rm -rf "$ctx" && mkdir -p "$ctx"
  javac --release 17 -d "$ctx" "$src"
  from_rootfs leakhunt.local/java:17 "$tar"
  local c
  c=$("${BUILDAH[@]}" from leakhunt.local/java:17)
  "${BUILDAH[@]}" copy "$c" "$ctx" /app >/dev/null
  "${BUILDAH[@]}" commit -q --rm "$c" leakhunt.local/java:17 >/dev/null
  rm -rf "$ctx"
  done_image java leakhunt.local/java:17 "$stamp"
}

# Debian slim as the runtime base (the Dockerfile's `debian:bookworm-slim`, the kubectl image's).
base_image() {
  local tar
  tar=$(rootfs runtime ca-certificates)
  if [ "$(cat "$WORK/base.key" 2>/dev/null)" != "$(cat "$tar.key")" ] \
    || ! "${BUILDAH[@]}" inspect leakhunt.local/debian:"$SUITE"-slim >/dev/null 2>&1; then
    from_rootfs leakhunt.local/debian:"$SUITE"-slim "$tar"
    cat "$tar.key" >"$WORK/base.key"
  fi
  echo "$(cat "$tar.key")"
}

# kubectl (the one make tools built) for pods that talk to the API as their ServiceAccount.
image_kubectl() {
  local kubectl=${KUBECTL_BIN:-$CACHE/tools/bin/kubectl} base_key version stamp
  [ -x "$kubectl" ] || die "no kubectl at $kubectl (make tools)"
  base_key=$(base_image)
  version=$("$kubectl" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')
  stamp="$base_key $(sha256sum "$kubectl" | cut -c1-16)"
  fresh kubectl "$stamp" && return
  local c
  c=$("${BUILDAH[@]}" from leakhunt.local/debian:"$SUITE"-slim)
  "${BUILDAH[@]}" copy --chmod 0755 "$c" "$kubectl" /usr/local/bin/kubectl >/dev/null
  "${BUILDAH[@]}" config --entrypoint '["/usr/local/bin/kubectl"]' --user 65532:65532 "$c"
  "${BUILDAH[@]}" commit -q --rm "$c" leakhunt.local/kubectl:"$version" >/dev/null
  done_image kubectl leakhunt.local/kubectl:"$version" "$stamp"
}

# The leakhunt image: the Dockerfile as a user builds it, with local bases for its FROM lines.
# The build stage's base is Debian with a C toolchain and this machine's Rust toolchain (the
# rust image is the same thing: Debian plus rustup's toolchain).
image_leakhunt() {
  local toolchain
  toolchain=$(rustc --print sysroot)
  local rust_ver
  rust_ver=$(rustc --version | awk '{print $2}')
  local base_key build_tar rust_key
  base_key=$(base_image)
  build_tar=$(rootfs build ca-certificates gcc libc6-dev)
  # This machine's trust store: cargo reaches crates.io through whatever CA this host trusts.
  local cas=/etc/ssl/certs/ca-certificates.crt
  rust_key="$(cat "$build_tar.key") rust $rust_ver ca $(sha256sum "$cas" | cut -c1-16)"
  if [ "$(cat "$WORK/bases.key" 2>/dev/null)" != "$base_key|$rust_key" ] \
    || ! "${BUILDAH[@]}" inspect leakhunt.local/rust:"$rust_ver"-"$SUITE" >/dev/null 2>&1; then
    local c
    c=$("${BUILDAH[@]}" from leakhunt.local/debian:"$SUITE"-slim)
    "${BUILDAH[@]}" add "$c" "$build_tar" / >/dev/null
    # The toolchain without its documentation and sources.
    tar -C "$toolchain" --exclude=share/doc --exclude=lib/rustlib/src --exclude='lib/rustlib/*/analysis' \
      -cf "$WORK/toolchain.tar" bin lib
    "${BUILDAH[@]}" copy "$c" "$cas" /etc/ssl/certs/ca-certificates.crt >/dev/null
    # chroot isolation, as for the build: the OCI runtime refuses this host's hybrid cgroup layout
    # ("cgroups in hybrid mode not supported").
    "${BUILDAH[@]}" run --isolation chroot "$c" mkdir -p /usr/local/rust /usr/local/cargo
    "${BUILDAH[@]}" add "$c" "$WORK/toolchain.tar" /usr/local/rust >/dev/null
    rm -f "$WORK/toolchain.tar"
    "${BUILDAH[@]}" config --env CARGO_HOME=/usr/local/cargo \
      --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$c"
    "${BUILDAH[@]}" commit -q --rm "$c" leakhunt.local/rust:"$rust_ver"-"$SUITE" >/dev/null
    echo "$base_key|$rust_key" >"$WORK/bases.key"
  fi
  local version stamp
  # The chart's appVersion: the tag `helm install charts/leakhunt` asks for.
  version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/leakhunt/Chart.yaml)
  [ -n "$version" ] || die "no appVersion in charts/leakhunt/Chart.yaml"
  # What the binary is built from (a test or chart edit does not rebuild it): committed, changed and
  # new files.
  local src=(Dockerfile Cargo.toml Cargo.lock analyzer operator)
  stamp="$(git -C "$ROOT" ls-files -s -- "${src[@]}" | sha256sum | cut -c1-16)"
  stamp+=" $(git -C "$ROOT" diff HEAD -- "${src[@]}" | sha256sum | cut -c1-16)"
  stamp+=" $(git -C "$ROOT" ls-files -o --exclude-standard -z -- "${src[@]}" | (cd "$ROOT" && xargs -0r sha256sum) | sha256sum | cut -c1-16)"
  stamp+=" $base_key $rust_key"
  fresh leakhunt "$stamp" && return
  local t0
  t0=$(date +%s)
  "${BUILDAH[@]}" bud --quiet --isolation chroot --layers \
    --build-arg RUST_IMAGE=leakhunt.local/rust:"$rust_ver"-"$SUITE" \
    --build-arg RUNTIME_IMAGE=leakhunt.local/debian:"$SUITE"-slim \
    -t leakhunt.local/leakhunt:"$version" -f Dockerfile . >&2
  log "Dockerfile built in $(( $(date +%s) - t0 ))s"
  done_image leakhunt leakhunt.local/leakhunt:"$version" "$stamp"
  # The previous build's images, untagged now: with vfs storage each holds a full copy of its layers
  # (over 1 GB), and the next build starts again from the sources' layer anyway.
  "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
}

images=("$@")
[ ${#images[@]} -gt 0 ] || images=(pause busybox python python314 java kubectl leakhunt)
for i in "${images[@]}"; do
  case "$i" in
    pause|busybox|python|python314|java|kubectl|leakhunt) "image_$i" ;;
    *) die "unknown image $i (pause busybox python python314 java kubectl leakhunt)" ;;
  esac
done
