# syntax=docker/dockerfile:1
# The `cpis` binary in a minimal, non-root runtime image. One image runs every
# service: `cpis serve registry|attendance|notification`, `cpis migrate ...`
# and the `cpis probe` health checks (see k8s/README.md).
#
#   docker build -t cpis:dev .
#
# The build needs no protoc: cpis-proto compiles proto/ with protox (pure
# Rust). TLS is rustls with ring, so the binary needs only glibc and libgcc,
# which the distroless "cc" image has.

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the crate registry and the target directory between
# builds; the binary is copied out of the (cached) target directory.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin cpis \
    && install -D -m 0755 target/release/cpis /out/cpis

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/cpis /usr/local/bin/cpis
# 65532 is distroless's "nonroot" user; the Kubernetes manifests run as it too.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cpis"]
CMD ["--help"]
