# syntax=docker/dockerfile:1
# The poolkeeper image for users with Docker (or any BuildKit/Buildah builder):
#   docker build -t ghcr.io/poolkeeper/poolkeeper:0.1.0 .
# The same image as `make image` builds without a daemon (hack/build-image.sh): a static binary
# (glibc static-pie, no `dev` feature) alone in an empty image, owned by root and run as
# 65532:65532. Name and tag: deploy/kustomization.yaml (`images:`).

# Pinned toolchain (bump it with the crate's rust-version when needed); bookworm's glibc gives
# the static libc.a.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The host triple of the build stage: x86_64 or aarch64, whichever platform is being built.
# --target keeps the static flag off build scripts and proc macros.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target/image \
    target="$(rustc -vV | sed -n 's/^host: //p')" \
 && RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR=target/image \
    cargo build --release --locked --no-default-features --target "$target" --bin poolkeeper \
 && install -D -m 0755 "target/image/$target/release/poolkeeper" /out/poolkeeper \
 && /out/poolkeeper --version

FROM scratch
COPY --from=build /out/poolkeeper /poolkeeper
USER 65532:65532
ENTRYPOINT ["/poolkeeper"]
LABEL org.opencontainers.image.title="poolkeeper" \
      org.opencontainers.image.licenses="Apache-2.0"
