# Test control plane (tests/kube-testenv), the real nodes (tests/node: kubelet, containerd, runc, on this
# machine and in a cgroup v2 VM) and their images, kubectl/helm, smoke and end-to-end tests.
# Included by the root Makefile. Go downloads and builds are cached outside the repo, like Cargo's.
LEAKHUNT_CACHE ?= $(HOME)/.cache/leakhunt
TOOLS_BIN ?= $(LEAKHUNT_CACHE)/tools/bin
HELM_VERSION ?= v3.22.0
ALERTMANAGER_VERSION ?= v0.35.0
# Prometheus 3.16.0: the Go module's version for release 3.MM.P is v0.3MM.P.
PROMETHEUS_VERSION ?= v0.316.0
PROMETHEUS_RELEASE ?= 3.16.0
GO ?= go
# Our kubectl first: the machine's /usr/bin/kubectl is another build.
export PATH := $(TOOLS_BIN):$(PATH)
TESTENV_GO = GOMODCACHE=$(LEAKHUNT_CACHE)/go/mod GOCACHE=$(LEAKHUNT_CACHE)/go/build GOTOOLCHAIN=local GOFLAGS=-buildvcs=false nice -n 10 $(GO)
# The Kubernetes version, from go.mod; stamped into the binaries as a release build does (helm parses the
# server's version, and kubectl reports its own).
KUBE_VERSION := $(shell sed -n 's|^[[:space:]]*k8s.io/kubernetes \(v[0-9.]*\).*|\1|p' tests/kube-testenv/go.mod)
KUBE_MINOR := $(word 2,$(subst ., ,$(KUBE_VERSION)))
KUBE_LDFLAGS := $(foreach p,k8s.io/component-base/version k8s.io/client-go/pkg/version,\
  -X $(p).gitVersion=$(KUBE_VERSION) -X $(p).gitMajor=1 -X $(p).gitMinor=$(KUBE_MINOR) -X $(p).gitTreeState=clean)
KUBE_TESTENV_SRC := $(wildcard tests/kube-testenv/*.go) tests/kube-testenv/go.mod tests/kube-testenv/go.sum
# Rebuilt when its sources' content changes, not their mtime: another checkout may share the cache.
KUBE_TESTENV_STAMP := $(TOOLS_BIN)/.kube-testenv-$(shell cat $(KUBE_TESTENV_SRC) | cksum | cut -d' ' -f1)
# The local build, for what the e2e runs outside the cluster (two operator processes for leader election).
LEAKHUNT_BIN ?= $(CARGO_TARGET_DIR)/release/leakhunt
export LEAKHUNT_BIN
# Where `make testenv-up` keeps its state (etcd data, kubeconfig, logs, pids).
TESTENV_DIR ?= $(LEAKHUNT_CACHE)/testenv

.PHONY: tools alertmanager prometheus node-tools node-images image testenv-up testenv-down smoke vm-smoke e2e

# The real node's programs, built from their Go modules: containerd 2 (the 1.36 kubelet needs 2.x;
# Debian bookworm has 1.6), runc (bookworm's 1.1 cannot run containerd 2's specs), and the kubelet
# of the control plane's Kubernetes version (tests/node/go.mod). The CNI plugins are Debian's.
CONTAINERD_VERSION ?= v2.4.2
RUNC_VERSION ?= v1.5.3
NODE_BIN ?= $(LEAKHUNT_CACHE)/tools/node
export NODE_BIN
NODE_IMAGES ?= $(LEAKHUNT_CACHE)/images/oci
export NODE_IMAGES
node-tools: $(NODE_BIN)/kubelet $(NODE_BIN)/.containerd-$(CONTAINERD_VERSION) $(NODE_BIN)/.runc-$(RUNC_VERSION)
$(NODE_BIN)/kubelet: tests/node/go.mod tests/node/go.sum
	@mkdir -p $(NODE_BIN)
	cd tests/node && $(TESTENV_GO) build -ldflags '$(KUBE_LDFLAGS)' -o $@ k8s.io/kubernetes/cmd/kubelet
$(NODE_BIN)/.containerd-$(CONTAINERD_VERSION):
	@mkdir -p $(NODE_BIN)
	GOBIN=$(NODE_BIN) $(TESTENV_GO) install -tags no_btrfs,no_devmapper,no_zfs \
	  $(foreach c,containerd containerd-shim-runc-v2 ctr,github.com/containerd/containerd/v2/cmd/$(c)@$(CONTAINERD_VERSION))
	@rm -f $(NODE_BIN)/.containerd-* && touch $@
$(NODE_BIN)/.runc-$(RUNC_VERSION):
	@mkdir -p $(NODE_BIN)
	GOBIN=$(NODE_BIN) $(TESTENV_GO) install -tags seccomp github.com/opencontainers/runc@$(RUNC_VERSION)
	@rm -f $(NODE_BIN)/.runc-* && touch $@

# The images the real node's tests run (sandbox, busybox, Python with Flask and uWSGI, kubectl), as
# oci-archives in NODE_IMAGES; `make image` adds leakhunt's own. The script skips an image whose inputs
# are unchanged.
node-images: $(TOOLS_BIN)/kubectl
	tests/node/images/build.sh pause busybox python python314 java kubectl

# The leakhunt image alone, built from the Dockerfile by buildah.
image:
	tests/node/images/build.sh leakhunt

tools: $(KUBE_TESTENV_STAMP) $(TOOLS_BIN)/kubectl $(TOOLS_BIN)/helm $(TOOLS_BIN)/alertmanager $(TOOLS_BIN)/prometheus

$(KUBE_TESTENV_STAMP): $(KUBE_TESTENV_SRC)
	@mkdir -p $(TOOLS_BIN)
	@command -v $(GO) >/dev/null || { echo "testenv: Go is required to build kube-testenv (see .ci/install)" >&2; exit 1; }
	cd tests/kube-testenv && $(TESTENV_GO) test -c -ldflags '$(KUBE_LDFLAGS)' -o $(TOOLS_BIN)/kube-testenv .
	@rm -f $(TOOLS_BIN)/.kube-testenv-* && touch $@

$(TOOLS_BIN)/kubectl: tests/kube-testenv/go.mod tests/kube-testenv/go.sum
	@mkdir -p $(TOOLS_BIN)
	cd tests/kube-testenv && $(TESTENV_GO) build -ldflags '$(KUBE_LDFLAGS)' -o $@ k8s.io/kubernetes/cmd/kubectl

$(TOOLS_BIN)/helm: $(TOOLS_BIN)/.helm-$(HELM_VERSION)
	@test -x $@
$(TOOLS_BIN)/.helm-$(HELM_VERSION):
	@mkdir -p $(TOOLS_BIN)
	GOBIN=$(TOOLS_BIN) $(TESTENV_GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	@rm -f $(TOOLS_BIN)/.helm-* && touch $@

# A real Alertmanager for operator/tests/alerts.rs, which finds it through ALERTMANAGER_BIN.
# Not `go install ...@version`: the module embeds its web UI from ui/app/dist, a build output the module zip
# lacks, so the build runs on a copy of the module with a stand-in page there (the tests use only the API).
ALERTMANAGER_SRC = $(LEAKHUNT_CACHE)/go/src/alertmanager-$(ALERTMANAGER_VERSION)
export ALERTMANAGER_BIN ?= $(TOOLS_BIN)/alertmanager
alertmanager: $(TOOLS_BIN)/alertmanager
$(TOOLS_BIN)/alertmanager: $(TOOLS_BIN)/.alertmanager-$(ALERTMANAGER_VERSION)
	@test -x $@
$(TOOLS_BIN)/.alertmanager-$(ALERTMANAGER_VERSION):
	@mkdir -p $(TOOLS_BIN)
	@command -v $(GO) >/dev/null || { echo "testenv: Go is required to build alertmanager (see .ci/install)" >&2; exit 1; }
	rm -rf $(ALERTMANAGER_SRC) && mkdir -p $(dir $(ALERTMANAGER_SRC))
	dir=$$(cd / && $(TESTENV_GO) mod download -json github.com/prometheus/alertmanager@$(ALERTMANAGER_VERSION) \
	  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",*$$/\1/p') && test -n "$$dir" && cp -R "$$dir" $(ALERTMANAGER_SRC)
	chmod -R u+w $(ALERTMANAGER_SRC)
	for ui in elm mantine; do mkdir -p $(ALERTMANAGER_SRC)/ui/app/dist/$$ui && \
	  echo '<!doctype html><title>Alertmanager</title><p>UI not built (leakhunt test build).' > $(ALERTMANAGER_SRC)/ui/app/dist/$$ui/index.html; done
	cd $(ALERTMANAGER_SRC) && $(TESTENV_GO) build -ldflags '-X github.com/prometheus/common/version.Version=$(ALERTMANAGER_VERSION:v%=%)' \
	  -o $(TOOLS_BIN)/alertmanager ./cmd/alertmanager
	@rm -f $(TOOLS_BIN)/.alertmanager-* && touch $@

# A real Prometheus and promtool: chart-check runs `promtool check rules` / `promtool test rules` on the
# chart's PrometheusRule and parses the dashboard's queries; the e2e's Prometheus scrapes the operator
# and agent, evaluates the rules and sends to the real Alertmanager. Built in the module cache's copy
# (read-only, nothing written there): without the go.work the module ships, whose members the zip lacks,
# and without the service discoveries of clouds (remove_all_sd; static and file discovery stay).
PROMETHEUS_SRC = $(LEAKHUNT_CACHE)/go/mod/github.com/prometheus/prometheus@$(PROMETHEUS_VERSION)
prometheus: $(TOOLS_BIN)/prometheus
$(TOOLS_BIN)/prometheus $(TOOLS_BIN)/promtool: $(TOOLS_BIN)/.prometheus-$(PROMETHEUS_VERSION)
	@test -x $@
$(TOOLS_BIN)/.prometheus-$(PROMETHEUS_VERSION):
	@mkdir -p $(TOOLS_BIN)
	@command -v $(GO) >/dev/null || { echo "testenv: Go is required to build prometheus (see .ci/install)" >&2; exit 1; }
	cd / && $(TESTENV_GO) mod download github.com/prometheus/prometheus@$(PROMETHEUS_VERSION)
	cd $(PROMETHEUS_SRC) && GOWORK=off $(TESTENV_GO) build -tags remove_all_sd \
	  -ldflags '-X github.com/prometheus/common/version.Version=$(PROMETHEUS_RELEASE)' \
	  -o $(TOOLS_BIN)/ ./cmd/prometheus ./cmd/promtool
	@rm -f $(TOOLS_BIN)/.prometheus-* && touch $@

# Starts the control plane and one real node in the background; prints how to use them.
# (TESTENV_NODE=vm starts the cgroup v2 VM node instead.)
TESTENV_NODE ?= real
export TESTENV_NODE
testenv-up: tools node-tools node-images image
	@tests/testenv.sh up $(TESTENV_DIR)

testenv-down:
	@tests/testenv.sh down $(TESTENV_DIR)

# The smoke test on the real node: real OOM kill, Job, DaemonSet, RBAC, helm, logs, exec, probes.
smoke: tools node-tools node-images
	tests/smoke/smoke.sh

# The cgroup v2 node in a VM (tests/node/vm.sh): cgroup v2, an OOM kill by the guest's kernel, systemd
# slices with memory.oom.group 1, logs and exec; then leakhunt from the chart on it: a whole-container
# kill naming its worker, a leak captured and analysed. The guest's disk is built once and cached.
# Exit 75 means the emulated guest itself died under the suite (QEMU exited or hung, or the guest went
# silent with its node NotReady: seen once in CI, before leakhunt was even scheduled on it): the suite
# runs once more on a fresh VM, and says so. Any other failure is not retried.
vm-smoke: tools node-tools node-images image
	@tests/node/vm-smoke.sh; rc=$$?; \
	if [ $$rc -eq 75 ]; then \
	  echo "vm-smoke: the guest died under the suite (above); running it once more on a fresh VM"; \
	  tests/node/vm-smoke.sh; rc=$$?; \
	fi; exit $$rc

# The end-to-end test on the real node: helm install charts/leakhunt with the image built from the
# Dockerfile, the leaky Flask Deployment with a LeakWatch, snapshots, the analyzer Job, real OOM kills,
# webhook + Alertmanager alerts, RBAC, cleanup. (The leader-election check runs the binary locally.)
e2e: tools node-tools node-images image
	$(CARGO) build --release -p leakhunt-operator
	tests/e2e/e2e.sh
