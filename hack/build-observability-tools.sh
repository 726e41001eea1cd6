#!/usr/bin/env bash
# Builds the tools the observability tests run, from their upstream Go modules, into
# ~/.cache/poolkeeper/<tool>-<version>/ (outside the checkout, so a fresh CI clone on the same
# machine reuses them). Rebuilt only when missing or when the pinned version changes.
#
#   promtool            github.com/prometheus/prometheus/cmd/promtool  (checks and unit-tests the alert rules)
#   kube-state-metrics  k8s.io/kube-state-metrics/v2                   (serves deploy/observability's CustomResourceStateMetrics)
#
# Usage: build-observability-tools.sh [--print-dir TOOL] [TOOL...]   (default: every tool)
# Progress goes to stderr (`go install -v` names each package as it compiles: a cold build of
# either takes a few minutes on 2 cores); the binary's path goes to stdout.
set -euo pipefail

PROMTOOL_VERSION="${PROMTOOL_VERSION:-v0.316.0}"          # Prometheus 3.x's Go module version
KSM_VERSION="${KSM_VERSION:-v2.16.0}"
root="${POOLKEEPER_CACHE_DIR:-$HOME/.cache/poolkeeper}"

dir_of() {
  case "$1" in
    promtool) echo "$root/promtool-$PROMTOOL_VERSION" ;;
    kube-state-metrics) echo "$root/kube-state-metrics-$KSM_VERSION" ;;
    *) echo "unknown tool $1 (promtool, kube-state-metrics)" >&2; exit 2 ;;
  esac
}

if [ "${1:-}" = "--print-dir" ]; then dir_of "${2:?tool}"; exit 0; fi

command -v go >/dev/null || {
  echo "error: Go is not installed; the observability tests build promtool and kube-state-metrics from Go modules (Go 1.24 or later)" >&2
  exit 1
}

build() {
  local tool="$1" pkg="$2" version="$3" dir
  dir="$(dir_of "$tool")"
  if [ -x "$dir/$tool" ]; then echo "$dir/$tool"; return 0; fi
  mkdir -p "$dir"
  echo ">> building $tool $version from $pkg (a cold build takes a few minutes on 2 cores)" >&2
  # `go install pkg@version` builds with the module's own go.mod and go.sum; no wrapper needed
  # (promtool's module has no replace directives). -v shows each package as it compiles.
  env -u GOFLAGS CGO_ENABLED=0 GOBIN="$dir/.tmp" go install -v -trimpath -ldflags "-s -w" "$pkg@$version" 2>&1 \
    | awk '/ / { print; fflush(); next } { n++; if (n % 50 == 0) { printf ">> %s: %d packages compiled (%s)\n", tool, n, $0; fflush() } }' tool="$tool" >&2
  mv "$dir/.tmp/$(basename "${pkg%/v[0-9]*}")" "$dir/$tool"
  rmdir "$dir/.tmp" 2>/dev/null || true
  echo ">> $tool ready: $dir/$tool" >&2
  echo "$dir/$tool"
}

# kube-state-metrics: the module proxy serves its versions but not its version list, which
# `go install pkg@version` reads (for deprecations), so it is built in a wrapper module (as
# hack/build-control-plane.sh builds the API server) seeded with kube-state-metrics' own go.sum:
# every dependency is checked against the sums its maintainers committed.
build_ksm() {
  local dir work
  dir="$(dir_of kube-state-metrics)"
  if [ -x "$dir/kube-state-metrics" ]; then echo "$dir/kube-state-metrics"; return 0; fi
  work="$root/wrappers/ksm-$KSM_VERSION"
  mkdir -p "$dir" "$work"
  echo ">> building kube-state-metrics $KSM_VERSION (a cold build takes a few minutes on 2 cores)" >&2
  (
    cd "$work"
    export GOFLAGS=-mod=mod CGO_ENABLED=0
    if ! grep -q '^tool k8s.io/kube-state-metrics/v2' go.mod 2>/dev/null; then
      rm -f go.mod go.sum
      go mod init poolkeeper.local/ksm-wrapper >/dev/null 2>&1
      local src
      src="$(go mod download -json "k8s.io/kube-state-metrics/v2@$KSM_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
      [ -f "$src/go.sum" ] || { echo "cannot download k8s.io/kube-state-metrics/v2@$KSM_VERSION" >&2; exit 1; }
      cp "$src/go.sum" go.sum && chmod u+w go.sum
      go get -tool "k8s.io/kube-state-metrics/v2@$KSM_VERSION" >/dev/null
    fi
    go build -v -trimpath -ldflags "-s -w" -o "$dir/kube-state-metrics.tmp" k8s.io/kube-state-metrics/v2 2>&1 \
      | awk '/ / { print; fflush(); next } { n++; if (n % 50 == 0) { printf ">> kube-state-metrics: %d packages compiled (%s)\n", n, $0; fflush() } }' >&2
  )
  mv "$dir/kube-state-metrics.tmp" "$dir/kube-state-metrics"
  echo ">> kube-state-metrics ready: $dir/kube-state-metrics" >&2
  echo "$dir/kube-state-metrics"
}

tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(promtool kube-state-metrics)
for t in "${tools[@]}"; do
  case "$t" in
    promtool) build promtool github.com/prometheus/prometheus/cmd/promtool "$PROMTOOL_VERSION" ;;
    kube-state-metrics) build_ksm ;;
    *) dir_of "$t" >/dev/null ;;
  esac
done
