# Switchyard node image: both planes under `switchyard up`, as a non-root user, on a slim
# Debian runtime. docs/operations.md, "Container", says how to run it; in short:
#
#   docker build -t switchyard .
#   docker run -d --name switchyard --network host --stop-timeout 45 switchyard
#   curl -s localhost:8080/health
#
# Host networking: every worker has its own UDP and TCP media port (media.port + i) and relay
# port (relay_port + i), and answers must leave from the address each packet came to; a
# bridge network with port mappings rewrites both, so run the node with --network host.
#
# io_uring: Docker's default seccomp profile (since 25.0) and Podman's refuse io_uring's
# system calls. With media.engine = "auto" (the default) the data plane then runs its
# recvmmsg/sendmmsg engine (`io engine: mmsg` in the log, "engine" in /health); to run
# io_uring, give the container a profile that also allows io_uring_setup, io_uring_enter and
# io_uring_register (docs/operations.md), or force the fallback with SWITCHYARD_ENGINE=mmsg.
#
# Targets: `runtime` (the default) builds the binary in the Rust image; `prebuilt` copies a
# binary built beforehand (--build-arg BINARY=path/in/the/context), which is how CI builds
# and smoke-tests the image without a Rust toolchain image (tests/packaging.rs).

ARG RUST_IMAGE=docker.io/library/rust:1-slim-trixie
ARG RUNTIME_IMAGE=docker.io/library/debian:trixie-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The caches keep the registry and the target directory between builds of this stage; the
# binary is copied out in the same step, since the cache mount is gone afterwards.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin switchyard \
    && install -D -m 0755 target/release/switchyard /out/switchyard

FROM ${RUNTIME_IMAGE} AS base
# A fixed uid/gid, so volumes and Kubernetes' runAsUser can name it.
RUN groupadd --gid 10001 switchyard \
    && useradd --uid 10001 --gid switchyard --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin switchyard
COPY deploy/switchyard.toml /etc/switchyard/switchyard.toml
ENV SWITCHYARD_CONFIG=/etc/switchyard/switchyard.toml \
    RUST_LOG=info
# The API (http.listen, loopback unless configured otherwise), media UDP and ICE-TCP
# (media.port + worker), relays (relay_port + worker). Documentation only: with host
# networking nothing is mapped.
EXPOSE 8080/tcp 10000/udp 10000/tcp 9443/udp
USER 10001:10001
# SIGTERM drains (cluster.shutdown_grace_ms, 30 s by default): stop with a longer timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/switchyard"]
CMD ["up"]

FROM base AS prebuilt
ARG BINARY=target/release/switchyard
COPY ${BINARY} /usr/local/bin/switchyard

FROM base AS runtime
COPY --from=build /out/switchyard /usr/local/bin/switchyard
