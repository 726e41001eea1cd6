#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver, kubectl, etcd) from upstream Go modules.
#
# The binaries land in $POOLKEEPER_CP_DIR (default ~/.cache/poolkeeper/control-plane/<versions>),
# outside the checkout so a fresh CI clone on the same machine reuses them. They are rebuilt only
# when missing or when the pinned versions change (the versions are part of the directory name).
#
# Why a wrapper module: k8s.io/kubernetes maps its staging modules with local `replace` lines that
# consumers never see, so `go install k8s.io/kubernetes/cmd/kube-apiserver@v1.36.3` is refused.
# We create a module that requires kubernetes and replaces every staging module with its v0.X.Y tag.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
root="${POOLKEEPER_CACHE_DIR:-$HOME/.cache/poolkeeper}"
bin="${POOLKEEPER_CP_DIR:-$root/control-plane/k8s-$K8S_VERSION-etcd-$ETCD_VERSION}"
if [ "${1:-}" = "--print-dir" ]; then echo "$bin"; exit 0; fi
if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kubectl" ] && [ -x "$bin/etcd" ]; then
  echo "$bin"
  exit 0
fi
if ! command -v go >/dev/null; then
  cat >&2 <<MSG
Go is needed to build the test control plane (etcd $ETCD_VERSION, kube-apiserver and kubectl
$K8S_VERSION) from their Go modules, once, into $bin.
Install Go 1.24 or newer (your distribution's golang package, or https://go.dev/dl), put \`go\` on
PATH, and run make again. A newer toolchain that a module asks for is fetched by Go itself.
MSG
  exit 1
fi
mkdir -p "$bin"

export GOFLAGS="${GOFLAGS:--mod=mod}"
export CGO_ENABLED=0

staging_version="v0.${K8S_VERSION#v1.}"          # v1.36.3 -> v0.36.3
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"  # v1.36.3 -> 36

# `go build` of one command with a progress line every 25 compiled packages (a cold build is
# silent for many minutes otherwise). Compiler errors pass through as they are: package paths,
# the only other lines of `go build -v`, have no spaces or colons.
progress_build() {
  local name=$1 pkg=$2; shift 2
  echo ">> $name: counting packages" >&2
  local total
  total=$(go list -deps "$pkg" 2>/dev/null | wc -l)
  local start=$SECONDS
  go build -v "$@" "$pkg" 2>&1 | {
    n=0
    while IFS= read -r line; do
      case "$line" in
        *" "* | *:*) echo "$line" ;;
        *)
          n=$((n + 1))
          if [ $((n % 25)) -eq 0 ]; then
            echo ">> $name: $n of at most $total packages compiled ($((SECONDS - start)) s)"
          fi
          ;;
      esac
    done
  }
  echo ">> $name: built in $((SECONDS - start)) s"
}

build_kube() {
  local work="$root/wrappers/kube-$K8S_VERSION"
  mkdir -p "$work"
  cd "$work"
  if [ ! -f go.mod ]; then
    echo ">> creating wrapper module for k8s.io/kubernetes $K8S_VERSION in $work"
    go mod init poolkeeper.local/kube-wrapper >/dev/null 2>&1
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    [ -f "$gomod" ] || { echo "cannot find go.mod of k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
    # Every `k8s.io/X => ./staging/src/k8s.io/X` becomes `k8s.io/X => k8s.io/X v0.N.P`.
    grep -oE '^\s*k8s\.io/[A-Za-z0-9._/-]+ => \./staging/src/k8s\.io/[A-Za-z0-9._/-]+' "$gomod" \
      | awk '{print $1}' | sort -u | while read -r m; do
        go mod edit -replace "$m=$m@$staging_version"
      done
    echo ">> $(grep -c '=>' go.mod) staging modules replaced with $staging_version"
    go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION"
    go get -tool "k8s.io/kubernetes/cmd/kubectl@$K8S_VERSION"
  fi
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  for cmd in kube-apiserver kubectl; do
    if [ ! -x "$bin/$cmd" ]; then
      echo ">> building $cmd $K8S_VERSION (a cold build takes 10-20 minutes on 2 cores)"
      progress_build "$cmd" "k8s.io/kubernetes/cmd/$cmd" -trimpath -o "$bin/$cmd.tmp" -ldflags "$ld"
      mv "$bin/$cmd.tmp" "$bin/$cmd"
    fi
  done
}

build_etcd() {
  [ -x "$bin/etcd" ] && return 0
  local work="$root/wrappers/etcd-$ETCD_VERSION"
  mkdir -p "$work"
  cd "$work"
  if [ ! -f go.mod ]; then
    echo ">> creating wrapper module for etcd $ETCD_VERSION in $work"
    go mod init poolkeeper.local/etcd-wrapper >/dev/null 2>&1
    go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  fi
  echo ">> building etcd $ETCD_VERSION"
  progress_build etcd go.etcd.io/etcd/server/v3 -trimpath -o "$bin/etcd.tmp" -ldflags "-s -w"
  mv "$bin/etcd.tmp" "$bin/etcd"
}

echo ">> building the test control plane into $bin (once; progress below)" >&2
( build_etcd ) >&2
( build_kube ) >&2
echo "$bin"
