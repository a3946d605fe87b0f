# syntax=docker/dockerfile:1
# Image of the hyperlight-js-worker message-queue worker.
#
#   docker build -t hyperlight-js-worker:0.1.0 .
#
# The builder compiles the guest VM image (Rust target x86_64-unknown-none, C through clang and
# llvm-ar-14) and embeds it in the worker binary. The runtime stage holds that one binary on a
# glibc base without shell or package manager, running as the non-root user 65532. At run time
# the worker needs nothing but /dev/kvm (see charts/README.md for how a pod gets it).

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
# Debian's own versions of the bookworm toolchain; pinning them would break on every point release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libclang-dev llvm-14 \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-none \
 && rustup component add rust-src
# C code of the guest (picolibc, QuickJS) is cross-compiled by clang and archived by llvm-ar-14.
ENV CC_x86_64_unknown_none=clang \
    AR_x86_64_unknown_none=llvm-ar-14
WORKDIR /src
COPY . .
# The cache mounts keep crates and build artefacts between builds, so the binary is copied out of
# target/ in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p hyperlight-js-worker \
 && install -D -m 0755 target/release/hyperlight-js-worker /out/hyperlight-js-worker

FROM ${RUNTIME_IMAGE}
COPY --from=builder /out/hyperlight-js-worker /usr/local/bin/hyperlight-js-worker
USER 65532:65532
# /healthz, /readyz and /metrics ([http] listen).
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/hyperlight-js-worker"]
CMD ["--config", "/etc/hyperlight-js-worker/worker.toml"]
