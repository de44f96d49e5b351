#!/usr/bin/env bash
# make demo-cluster: leakhunt as a cluster user runs it, on a test cluster on this host (a real
# kube-apiserver and a real node: kubelet, containerd, runc). Installs charts/leakhunt with the
# image built from the Dockerfile, deploys the seed's leaky Flask service with a LeakWatch, drives
# load at it, and waits for the LeakReport. The cluster stays up afterwards; the last lines say
# how to reach it and how to tear it down.
#
# Needs root (the node makes cgroups, a bridge and an iptables rule) and what `make demo-cluster`
# builds first: tools, node-tools, node-images, image.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${DEMO_CLUSTER_DIR:-$HOME/.cache/leakhunt/demo-cluster}
NS=shop
LH=leakhunt
WAIT=${DEMO_WAIT:-900}
export TESTENV_NODE=real
export NODE_IMAGES=${NODE_IMAGES:-$HOME/.cache/leakhunt/images/oci}

say() { echo "demo-cluster: $*" >&2; }
die() { say "$*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (the test node's cgroups, bridge and iptables rule)"
[ -f "$NODE_IMAGES/leakhunt.tar" ] || die "no leakhunt image in $NODE_IMAGES (make image)"

say "starting the test cluster in $DIR"
tests/testenv.sh down "$DIR" >/dev/null 2>&1 || true
tests/testenv.sh up "$DIR" >&2 || die "the test cluster did not start"
export KUBECONFIG=$DIR/admin.kubeconfig
VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/leakhunt/Chart.yaml)

say "helm install charts/leakhunt (image leakhunt.local/leakhunt:$VERSION)"
helm upgrade --install leakhunt charts/leakhunt -n $LH --create-namespace --wait --timeout 180s \
  --set image.repository=leakhunt.local/leakhunt --set image.pullPolicy=Never >&2 \
  || { kubectl -n $LH get pods -o wide >&2; die "helm install failed"; }

say "deploying the leaky Flask service with a LeakWatch"
kubectl create namespace $NS --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n $NS create configmap leaky-flask --from-file=app.py=examples/leaky-flask/app.py \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n $NS apply -f examples/leaky-flask/leakwatch.yaml >/dev/null
kubectl -n $NS rollout status deployment/leaky-flask --timeout=120s >&2 || die "the service did not start"
IP=$(kubectl -n $NS get pod -l app=leaky-flask -o jsonpath='{.items[0].status.podIP}')

say "driving load at $IP:8000; waiting up to ${WAIT}s for the LeakReport"
python3 examples/leaky-flask/load.py --host "$IP" --port 8000 --threads 4 --seconds "$WAIT" --give-up 300 \
  >"$DIR/load.log" 2>&1 &
LOAD=$!
trap 'kill $LOAD 2>/dev/null || true' EXIT
REPORT=deployment-leaky-flask
deadline=$((SECONDS + WAIT))
phase=""
until [ $SECONDS -ge $deadline ]; do
  phase=$(kubectl -n $NS get leakreport $REPORT -o jsonpath='{.status.phase}' 2>/dev/null || true)
  case "$phase" in Analysed|Failed) break ;; esac
  sleep 5
done

echo
kubectl get leakreports -A
echo
kubectl -n $NS describe leakreport $REPORT 2>/dev/null || true
echo
case "$phase" in
  Analysed) say "analysed: $(kubectl -n $NS get leakreport $REPORT -o jsonpath='{.status.summary}')" ;;
  *) say "no analysed report after ${WAIT}s (phase: ${phase:-none}); agent log: kubectl -n $LH logs ds/leakhunt-agent" ;;
esac
say "the cluster is still up:  export KUBECONFIG=$KUBECONFIG"
say "tear it down:             make testenv-down TESTENV_DIR=$DIR"
[ "$phase" = Analysed ]
