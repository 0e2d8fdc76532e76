# One image with every Substrate binary, for config/ (kubectl apply -k config/default):
#   docker build -t ghcr.io/ate-dev/substrate:v0.1.0 .
# substrate-apiserver, -operator, -nodeagent, -executor, -router and -supervise (the node
# agent's in-pod supervisor) on PATH, and gVisor's runsc (/usr/bin/runsc, the executor's
# default) from gVisor's own apt repository. No ENTRYPOINT: each manifest names its command.

# --- build ------------------------------------------------------------------------------
FROM rust:1.91-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler pkg-config cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      --bin substrate-apiserver --bin substrate-operator --bin substrate-nodeagent \
      --bin substrate-executor --bin substrate-router --bin substrate-supervise \
 && mkdir -p /out \
 && cp target/release/substrate-apiserver target/release/substrate-operator \
       target/release/substrate-nodeagent target/release/substrate-executor \
       target/release/substrate-router target/release/substrate-supervise /out/

# --- runtime ----------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gnupg \
 && curl -fsSL https://gvisor.dev/archive.key \
    | gpg --dearmor -o /usr/share/keyrings/gvisor-archive-keyring.gpg \
 && echo "deb [arch=$(dpkg --print-architecture) signed-by=/usr/share/keyrings/gvisor-archive-keyring.gpg] https://storage.googleapis.com/gvisor/releases release main" \
    > /etc/apt/sources.list.d/gvisor.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends runsc \
 && apt-get purge -y curl gnupg && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# The apiserver, operator and router run as 65532 (config/); the node agent as root
# (privileged).
USER 65532:65532
