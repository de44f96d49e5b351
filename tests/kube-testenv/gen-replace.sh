#!/usr/bin/env bash
# Regenerates go.mod's `replace` block for k8s.io/kubernetes.
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/client-go, ...) at v0.0.0 and
# resolves them with `replace => ./staging/...` lines that only apply inside its own repository. A module
# that imports k8s.io/kubernetes must therefore replace each staging module with its published tag, which
# for Kubernetes v1.X.Y is v0.X.Y. The list is taken from the downloaded go.mod, never typed by hand, so a
# version bump is: edit KUBE_VERSION below (or pass it), run this script, `go mod tidy`.
set -euo pipefail
cd "$(dirname "$0")"
KUBE_VERSION=${1:-${KUBE_VERSION:-v1.36.3}}
staging_version="v0.${KUBE_VERSION#v1.}"

gomod=$(go mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
[ -f "$gomod" ] || { echo "gen-replace: cannot download go.mod of k8s.io/kubernetes@${KUBE_VERSION}" >&2; exit 1; }

mods=$(sed -n 's|^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*|\1|p' "$gomod" | sort -u)
[ -n "$mods" ] || { echo "gen-replace: no staging replace lines found in $gomod" >&2; exit 1; }

# Drop every existing k8s.io replace, then add one per staging module.
for old in $(go mod edit -json | sed -n 's/^[[:space:]]*"Path": "\(k8s.io\/[^"]*\)",\{0,1\}$/\1/p' | sort -u); do
  go mod edit -dropreplace="$old" 2>/dev/null || true
done
go mod edit -require="k8s.io/kubernetes@${KUBE_VERSION}"
n=0
for m in $mods; do
  go mod edit -replace="${m}=${m}@${staging_version}"
  n=$((n + 1))
done
echo "gen-replace: k8s.io/kubernetes ${KUBE_VERSION}, ${n} staging modules at ${staging_version}"
