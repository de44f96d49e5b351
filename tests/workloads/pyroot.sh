#!/usr/bin/env bash
# Debian testing's CPython 3.14 and 3.15 (with Flask) in a root filesystem made by mmdebstrap, for the
# analyzer's tests: each workload runs chrooted into it, as a container's process would, so this
# host's bookworm libraries never meet them. Cached under ~/.cache/leakhunt/pyroot/testing; rebuilt
# only when the package list below changes. Prints the directory.
#
#   tests/workloads/pyroot.sh          build it (about 30 s, 70 MB of packages) unless it is there
#
# Debian testing ships no free-threaded (nogil) build of either; the analyzer's refusal of one is
# tested with the debug-offsets flag instead (analyzer/src/python/layout.rs).
set -euo pipefail
die() { echo "pyroot: $*" >&2; exit 1; }
ROOT=${LEAKHUNT_PYROOT:-$HOME/.cache/leakhunt/pyroot/testing}
PACKAGES=python3.14,python3.15,python3-flask
STAMP="testing minbase $PACKAGES v1"
if [ -f "$ROOT/.leakhunt-stamp" ] && [ "$(cat "$ROOT/.leakhunt-stamp")" = "$STAMP" ]; then
  echo "$ROOT"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "mmdebstrap needs root here (or use a prebuilt LEAKHUNT_PYROOT)"
command -v mmdebstrap >/dev/null || die "mmdebstrap missing (Debian package mmdebstrap; .ci/install)"
tmp=$ROOT.tmp.$$
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$(dirname "$ROOT")"
echo "pyroot: mmdebstrap testing ($PACKAGES) -> $ROOT" >&2
# Testing's Release file carries a Valid-Until that a mirror snapshot may be past.
mmdebstrap --quiet --variant=minbase --aptopt='Acquire::Check-Valid-Until "false"' \
  --include="$PACKAGES" testing "$tmp" http://deb.debian.org/debian >"$tmp.log" 2>&1 \
  || { tail -20 "$tmp.log" >&2; rm -f "$tmp.log"; die "mmdebstrap failed"; }
rm -f "$tmp.log"
for py in python3.14 python3.15; do
  chroot "$tmp" "$py" -c 'import flask, ctypes' || die "$py in the new root cannot import flask"
done
echo "$STAMP" >"$tmp/.leakhunt-stamp"
rm -rf "$ROOT"
mv "$tmp" "$ROOT"
trap - EXIT
echo "$ROOT"
