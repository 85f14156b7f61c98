# syntax=docker/dockerfile:1
#
# fondo-bridge container image.
#
#   docker build -t fondo-bridge:0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" .
#   docker run --rm --read-only \
#       -v "$PWD/my-config.yaml:/etc/fondo-bridge/config.yaml:ro" \
#       -v fondo-bridge-data:/var/lib/fondo-bridge \
#       -p 8080:8080 -p 9090:9090 fondo-bridge:0.1.0
#
# The image holds no config: mount one at /etc/fondo-bridge/config.yaml (or pass other arguments,
# e.g. `check --config F`). It runs as uid/gid 10001 and writes only to /var/lib/fondo-bridge (the
# spool, the dead-letter fallback file, file sinks), so the root filesystem can be read-only.
# No HEALTHCHECK: orchestrators probe /healthz and /readyz on the admin port (9090).

ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

# ---------------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# rdkafka-sys builds the bundled librdkafka with its own configure script and make (no cmake) and
# links OpenSSL (feature "ssl") and zlib dynamically, found through pkg-config. Versions follow the
# bookworm base image; pin the base images by digest for byte-for-byte reproducible builds.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential \
        binutils \
        libssl-dev \
        pkg-config \
        zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# Dependencies first, built against stand-in sources: this layer stays cached until a manifest or
# Cargo.lock changes. Cargo.toml declares each `[[bench]]` by name and cargo looks for its file
# when it reads the manifest, so each gets a stand-in too. Its `[[bin]]`s with a declared path
# (the test helper under tests/bin/) are built by plain `cargo build`, so they get stand-ins as
# well, and theirs stay: the manifest is read again below, and the helper is never built there. The workspace's other member, the benchmark harness (bench/), needs only its manifest:
# its binary's path is declared, so its source is looked for only when it is built, and plain
# `cargo build` builds the root package alone (default-members).
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml ./bench/
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && sed -n '/^\[\[bench\]\]/,/^name/s/^name = "\(.*\)"$/\1/p' Cargo.toml \
        | while read -r bench; do echo 'fn main() {}' > "benches/$bench.rs"; done \
    && sed -n '/^\[\[bin\]\]/,/^path/s/^path = "\(.*\)"$/\1/p' Cargo.toml \
        | while read -r bin; do mkdir -p "$(dirname "$bin")" && echo 'fn main() {}' > "$bin"; done \
    && cargo build --release --locked \
    && rm -rf src benches

# The real sources, and the files they compile in (src/demo.rs embeds config/demo.yaml with
# include_str!; each such file must be copied here and let through by .dockerignore). Touch the
# crate roots so cargo rebuilds the crate instead of trusting the stand-ins' fingerprints (COPY
# keeps the files' original, possibly older, modification times).
COPY src ./src
COPY config/demo.yaml ./config/demo.yaml
COPY benches ./benches
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin fondo-bridge \
    && objcopy --compress-debug-sections=zlib target/release/fondo-bridge /usr/local/bin/fondo-bridge

# ---------------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Runtime libraries: OpenSSL 3 (librdkafka's TLS) and CA certificates (rustls' native roots, Kafka
# TLS); zlib and glibc are already in the base image. Then the service user and its one writable
# directory. Versions follow the bookworm base image (see above).
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates \
        libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 fondo \
    && useradd --system --uid 10001 --gid fondo --no-create-home \
        --home-dir /var/lib/fondo-bridge --shell /usr/sbin/nologin fondo \
    && install -d -o fondo -g fondo -m 0750 /var/lib/fondo-bridge \
    && install -d -m 0755 /etc/fondo-bridge

COPY --from=build /usr/local/bin/fondo-bridge /usr/local/bin/fondo-bridge
COPY config/production.yaml /usr/share/doc/fondo-bridge/config.example.yaml

# Fail the build here, not in production, when a shared library is missing from this stage.
RUN if ldd /usr/local/bin/fondo-bridge | grep 'not found'; then \
        echo "fondo-bridge: missing shared libraries in the runtime image" >&2; exit 1; \
    fi \
    && fondo-bridge --version

# The binary already keeps mimalloc from asking for transparent huge pages (its `no_thp` feature);
# on a node whose THP setting is `always`, this has mimalloc turn THP off for the process, else each
# 2 MiB page it touches is resident whole (19 MiB at idle becomes 34 MiB).
ENV MIMALLOC_ALLOW_THP=0

# Numeric ids, so Kubernetes' runAsNonRoot can verify them without reading /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/fondo-bridge
VOLUME ["/var/lib/fondo-bridge"]

# 8080: webhooks (sources.webhook.listen); 9090: /metrics, /healthz, /readyz (admin.listen).
EXPOSE 8080 9090

ENTRYPOINT ["fondo-bridge"]
CMD ["run", "--config", "/etc/fondo-bridge/config.yaml"]

# Last, so that a new revision (a build argument every RUN above would see) rebuilds only this
# metadata, not the cached layers above.
ARG VERSION=0.1.0
ARG REVISION=unknown

LABEL org.opencontainers.image.title="fondo-bridge" \
      org.opencontainers.image.description="Carries Fondo Partner API events (WebSocket stream and signed webhooks) into Kafka, RabbitMQ or NATS, at least once." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
