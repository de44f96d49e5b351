#!/usr/bin/env bash
# Debian testing's OpenJDK 21 and 25 runtimes in a root filesystem made by mmdebstrap, for the
# analyzer's JVM tests: Shapes (compiled by this host's javac for Java 17) runs chrooted into it on
# HotSpot 21 and 25, as a container's JVM would, and leakhunt dumps it from outside. Cached under
# ~/.cache/leakhunt/jvmroot/testing; rebuilt only when the package list below changes. Prints the
# directory.
#
#   tests/workloads/jvmroot.sh          build it unless it is there
set -euo pipefail
die() { echo "jvmroot: $*" >&2; exit 1; }
ROOT=${LEAKHUNT_JVMROOT:-$HOME/.cache/leakhunt/jvmroot/testing}
PACKAGES=openjdk-21-jre-headless,openjdk-25-jre-headless
STAMP="testing minbase $PACKAGES v1"
if [ -f "$ROOT/.leakhunt-stamp" ] && [ "$(cat "$ROOT/.leakhunt-stamp")" = "$STAMP" ]; then
  echo "$ROOT"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "mmdebstrap needs root here (or use a prebuilt LEAKHUNT_JVMROOT)"
command -v mmdebstrap >/dev/null || die "mmdebstrap missing (Debian package mmdebstrap; .ci/install)"
tmp=$ROOT.tmp.$$
trap 'rm -rf "$tmp" "$tmp.log"' EXIT
mkdir -p "$(dirname "$ROOT")"
echo "jvmroot: mmdebstrap testing ($PACKAGES) -> $ROOT" >&2
# Testing's Release file carries a Valid-Until that a mirror snapshot may be past.
mmdebstrap --quiet --variant=minbase --aptopt='Acquire::Check-Valid-Until "false"' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
  --include="$PACKAGES" testing "$tmp" http://deb.debian.org/debian >"$tmp.log" 2>&1 \
  || { tail -20 "$tmp.log" >&2; die "mmdebstrap failed"; }
# The launcher finds libjli.so through $ORIGIN, which needs /proc: the tests mount one in a mount
# namespace of the JVM's own, as here.
for v in 21 25; do
  unshare --mount --propagation private -- sh -c 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"' \
    "$tmp" "/usr/lib/jvm/java-$v-openjdk-amd64/bin/java" -version >/dev/null 2>&1 \
    || die "java $v does not run in the new root"
done
echo "$STAMP" >"$tmp/.leakhunt-stamp"
rm -rf "$ROOT"
mv "$tmp" "$ROOT"
trap - EXIT
rm -f "$tmp.log"
echo "$ROOT"
