#!/usr/bin/env bash
# Builds the poolkeeper container image as an OCI archive, with no container daemon and no
# registry (`make image`; tests/image.rs runs it too, so the image cannot rot).
#
# - The binary: a release build, statically linked (glibc static-pie: `-C target-feature=+crt-static`
#   on the host's gnu target, which needs nothing beyond the toolchain already here; it keeps the
#   glibc allocator the benchmarks were measured with, and its resolver reads /etc/hosts and DNS
#   without NSS modules), without the `dev` feature (no local control plane in production).
#   It is built in ~/.cache/poolkeeper/image-target, a target directory of its own outside the
#   checkout: it never waits on nor invalidates the build the tests use, and a fresh clone (CI)
#   reuses the compiled dependencies instead of a cold release build.
# - The image: scratch-style (the binary alone, owned by root, run as 65532:65532), assembled
#   with umoci, which is built once from its Go module into ~/.cache/poolkeeper/umoci-<version>.
#   Timestamps come from the last commit, so the same sources give the same image digest.
# - Name and tag come from deploy/kustomization.yaml (`images:`), the one place deploy/ reads them
#   from; `make lint` checks that the tag is Cargo.toml's version.
#
# Prints the archive's path on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

UMOCI_VERSION="${UMOCI_VERSION:-v0.6.0}"
root="${POOLKEEPER_CACHE_DIR:-$HOME/.cache/poolkeeper}"
umoci_dir="$root/umoci-$UMOCI_VERSION"
umoci="$umoci_dir/umoci"
out_dir="target/image"
build_dir="$root/image-target"

say() { echo ">> $*" >&2; }

# --- name and tag: deploy/kustomization.yaml, `images:` entry `name: poolkeeper`
kustomization=deploy/kustomization.yaml
name=$(sed -n 's/^ *newName: *\([^ #]*\).*/\1/p' "$kustomization" | head -n1)
tag=$(sed -n 's/^ *newTag: *"\{0,1\}\([^ "#]*\)"\{0,1\}.*/\1/p' "$kustomization" | head -n1)
if [ -z "$name" ] || [ -z "$tag" ]; then
  echo "cannot read newName and newTag of the poolkeeper image from $kustomization" >&2
  exit 1
fi
if [ "${1:-}" = "--print-ref" ]; then echo "$name:$tag"; exit 0; fi

# --- umoci, built once
if [ ! -x "$umoci" ]; then
  command -v go >/dev/null || {
    echo "Go is needed to build umoci (the image tool) once: install Go 1.24 or newer and run again" >&2
    exit 1
  }
  say "building umoci $UMOCI_VERSION from its Go module into $umoci_dir (once, about a minute)"
  src=$(go mod download -json "github.com/opencontainers/umoci@$UMOCI_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -d "$src" ] || { echo "cannot download github.com/opencontainers/umoci@$UMOCI_VERSION" >&2; exit 1; }
  mkdir -p "$umoci_dir"
  # Built inside its own module so its go.mod (and its replace line) applies.
  (cd "$src" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w" -o "$umoci.tmp" ./cmd/umoci)
  mv "$umoci.tmp" "$umoci"
fi

# --- the static binary
target=$(rustc -vV | sed -n 's/^host: //p')
case "$target" in
  *-unknown-linux-gnu) ;;
  *) echo "the image is built on a *-unknown-linux-gnu host (this is $target); see the Dockerfile" >&2; exit 1 ;;
esac
say "building the static poolkeeper binary ($target, release, no dev feature) in $build_dir"
# --target keeps the static flag off build scripts and proc macros (they must stay dynamic).
RUSTFLAGS="-C target-feature=+crt-static" CARGO_TARGET_DIR="$build_dir" "${CARGO:-cargo}" build \
  --release --locked --no-default-features --target "$target" --bin poolkeeper >&2
binary="$build_dir/$target/release/poolkeeper"
mkdir -p "$out_dir"

# --- the image
arch=$(uname -m)
case "$arch" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; esac
epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
archive="$out_dir/poolkeeper-$tag.oci.tar"
work=$(mktemp -d "$out_dir/oci.XXXXXX")
trap 'rm -rf "$work"' EXIT
say "assembling $name:$tag with umoci"
mkdir -p "$work/rootfs"
install -m 0755 "$binary" "$work/rootfs/poolkeeper"
touch -d "@$epoch" "$work/rootfs/poolkeeper"
layout="$work/layout"
"$umoci" init --layout "$layout"
"$umoci" new --image "$layout:$tag"
"$umoci" insert --image "$layout:$tag" --history.created "$created" \
  --history.created_by "poolkeeper binary (hack/build-image.sh)" "$work/rootfs/poolkeeper" /poolkeeper
"$umoci" config --image "$layout:$tag" --created "$created" --history.created "$created" \
  --os linux --architecture "$arch" \
  --config.entrypoint /poolkeeper --config.user 65532:65532 \
  --config.label "org.opencontainers.image.title=poolkeeper" \
  --config.label "org.opencontainers.image.version=$tag" \
  --config.label "org.opencontainers.image.revision=$revision" \
  --config.label "org.opencontainers.image.licenses=Apache-2.0"
"$umoci" gc --layout "$layout"
# containerd (`ctr images import`, `kind load image-archive`) and docker name the image from this
# annotation; podman and skopeo use ref.name (the tag).
ref_name="\"org.opencontainers.image.ref.name\":\"$tag\""
grep -qF "$ref_name" "$layout/index.json" || { echo "unexpected index.json from umoci" >&2; exit 1; }
sed -i "s|$ref_name|\"io.containerd.image.name\":\"$name:$tag\",$ref_name|" "$layout/index.json"
tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
  -C "$layout" -cf "$archive.tmp" oci-layout index.json blobs
mv "$archive.tmp" "$archive"
say "image $name:$tag: $archive ($(du -h "$archive" | cut -f1))"
echo "$archive"
