# The single leakhunt image: `leakhunt operator`, `leakhunt agent` and `leakhunt analyze-job` (charts/leakhunt).
#   docker build -t leakhunt:0.1.0 .
# The base images, as build arguments so that a machine without a registry can name local ones
# (tests/node/images/build.sh does).
ARG RUST_IMAGE=rust:1.89-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
# Build stage: the whole workspace is needed (Cargo resolves every member), only leakhunt-operator is built.
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds; the binary is copied out of the cached
# target dir in the same step, so the runtime stage sees it. COPY keeps the context's mtimes, which
# may be older than what the cached target built from another checkout: cargo would take those
# sources for unchanged, so our two crates are touched and always rebuilt (their dependencies not).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    find analyzer/src operator/src -type f -exec touch {} + \
    && cargo build --release -p leakhunt-operator --locked \
    && install -D -m 0755 target/release/leakhunt /out/leakhunt

# Runtime: glibc and the CA certificates the webhook and Alertmanager clients trust (rustls, native roots).
FROM ${RUNTIME_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/leakhunt /usr/local/bin/leakhunt
# Non-root by default (the operator and the analyzer); the agent's pod spec runs it as root.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/leakhunt"]
