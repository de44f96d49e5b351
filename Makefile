# leakhunt — build, test, demo.
# Build caches live outside the repo so CI reuses them; everything still builds from empty caches.
CARGO_TARGET_DIR ?= $(HOME)/.cache/leakhunt/target
export CARGO_TARGET_DIR
CARGO ?= cargo
BIN := $(CARGO_TARGET_DIR)/release

.PHONY: all build test lint fmt unit bench fuzz clean

all: build

build:
	$(CARGO) build --release --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Unit and integration tests: real processes, real cores, gdb and pystack as consumers.
unit:
	$(CARGO) test --workspace --release

test: lint unit smoke

clean:
	$(CARGO) clean

# Test control plane, node simulator, kubectl/helm and the smoke test.
include tests/testenv.mk
