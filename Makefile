# leakhunt — build, test, demo.
# Build caches live outside the repo so CI reuses them; everything still builds from empty caches.
# Tests read CARGO_MANIFEST_DIR at run time, not env!(): cargo does not rebuild a binary of this
# shared target dir for a clone at another path, so a compiled-in path may name a deleted checkout.
CARGO_TARGET_DIR ?= $(HOME)/.cache/leakhunt/target
export CARGO_TARGET_DIR
CARGO ?= cargo
BIN := $(CARGO_TARGET_DIR)/release

.PHONY: all build test lint fmt unit bench fuzz clean demo demo-cluster crds chart-check pyroot jvmroot

all: build

build:
	$(CARGO) build --release --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Unit and integration tests: real processes, real cores, gdb and pystack as consumers, a real
# Alertmanager (built by tests/testenv.mk) as the alerts' receiver.
unit: alertmanager pyroot jvmroot
	$(CARGO) test --workspace --release
	# Fuzz regressions and the walks of real heaps again with overflow checks on (debug), as the
	# fuzzer builds them: a release build wraps an overflow silently.
	$(CARGO) test -p leakhunt-analyzer --lib --test fuzz_regressions --test python --test jvm

test: lint unit chart-check smoke vm-smoke e2e

# Debian testing's CPython 3.14 and 3.15 with Flask in a root filesystem (mmdebstrap, cached), where
# the analyzer's tests run them chrooted.
pyroot:
	tests/workloads/pyroot.sh >/dev/null

# Debian testing's OpenJDK 21 and 25 runtimes in a root filesystem (mmdebstrap, cached), where the
# analyzer's JVM tests run Shapes chrooted.
jvmroot:
	tests/workloads/jvmroot.sh >/dev/null

# Fuzz the core reader and the CPython walker (nightly; cargo-fuzz installed on first use),
# FUZZ_SECONDS per target (default 120).
fuzz:
	analyzer/fuzz/run.sh

# The whole hunt on this host: the leaky Flask example under a memory limit, snapshotted,
# analysed and OOM-killed (needs root for the memory cgroup; Python venv set up on first run).
demo:
	$(CARGO) build --release -p leakhunt-operator
	LEAKHUNT=$(BIN)/leakhunt examples/demo.sh

# The cluster user's main job on a test cluster on this host (real kube-apiserver, kubelet, containerd):
# helm install charts/leakhunt with the image built from the Dockerfile, the leaky Flask service with a
# LeakWatch, load, the LeakReport. The cluster stays up (make testenv-down TESTENV_DIR=... tears it down).
demo-cluster: tools node-tools node-images image
	examples/demo-cluster.sh

# Regenerate the committed CRDs from the Rust types (a test fails when they drift), and the chart's copy
# (chart-check fails when it differs).
crds:
	$(CARGO) run -q -p leakhunt-operator -- crdgen > crds/leakhunt.dev.yaml
	cp crds/leakhunt.dev.yaml charts/leakhunt/crds/leakhunt.dev.yaml

clean:
	$(CARGO) clean

# Test control plane, real nodes (this machine and a cgroup v2 VM), kubectl/helm, smoke and e2e tests.
include tests/testenv.mk

# The Helm chart without a cluster: CRDs in sync with crds/, lint, RBAC and security facts, schema rejections.
# (After the include: it needs helm from $(TOOLS_BIN).)
chart-check: $(TOOLS_BIN)/helm $(TOOLS_BIN)/promtool
	tests/chart/check.sh
