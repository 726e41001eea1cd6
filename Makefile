# poolkeeper tasks. Nothing to install by hand: `make test` builds what the tests need.
SHELL := bash
CARGO ?= cargo

.PHONY: test lint crds control-plane observability-tools interop image demo bench fmt

## test: build the control plane, the observability tools and the engine-client check if missing, then run every test
test: control-plane observability-tools interop
	$(CARGO) test

## lint: formatting, clippy with warnings denied, plan and api pure, no import circle, generated CRDs current
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --no-default-features -- -D warnings  # the image's build (no dev feature)
	$(CARGO) test --test layering
	$(CARGO) run --quiet -- crds | diff -u crds/poolkeeper.yaml - || { echo "crds/ is stale: run make crds"; exit 1; }
	@version=$$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1); ref=$$(./hack/build-image.sh --print-ref); \
	  [ "$${ref##*:}" = "$$version" ] || { echo "deploy/kustomization.yaml tags the image $${ref##*:}, Cargo.toml's version is $$version: make them equal"; exit 1; }

## crds: regenerate crds/ from the types
crds:
	$(CARGO) run --quiet -- crds > crds/poolkeeper.yaml

## control-plane: build kube-apiserver, kubectl (v1.36.3) and etcd (v3.6.x) from Go modules, once
control-plane:
	@./hack/build-control-plane.sh >/dev/null

## observability-tools: build promtool and kube-state-metrics from Go modules, once (tests/observability_*.rs run them)
observability-tools:
	@./hack/build-observability-tools.sh >/dev/null

## interop: build the oVirt engine-client check (Java, Maven; cached in ~/.cache/poolkeeper), once (tests/interop.rs runs it)
interop:
	@./hack/build-interop.sh >/dev/null

## image: the container image as an OCI archive in target/image (no Docker daemon, no registry; see hack/build-image.sh)
image:
	@CARGO=$(CARGO) ./hack/build-image.sh >/dev/null

## demo: a local control plane, the controller and simulated hosts; Ctrl-C stops everything
demo: control-plane
	$(CARGO) run -- dev --hosts 10 --kubeconfig .cache/kubeconfig

## bench: planner benchmarks (criterion), in-process convergence, and the deployed shape (tables; need the control plane)
bench: control-plane
	$(CARGO) bench --bench plan
	$(CARGO) bench --bench convergence
	$(CARGO) bench --bench deployed

fmt:
	$(CARGO) fmt
