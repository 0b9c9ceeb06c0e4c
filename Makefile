# hector-operator — every set-up step lives behind these targets.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
CLUSTER := tests/cluster/cluster
CARGO ?= cargo

.DEFAULT_GOAL := help
.PHONY: help deps check build test unit e2e crds demo bench bench-operator bench-scale images cluster-up cluster-down

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

deps: ## Install what tests need (Debian packages, Python grpcio, Go modules)
	tests/setup/deps

check: ## Formatting and lints (warnings are errors)
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --features hector-operator/e2e -- -D warnings

build: ## Build every crate
	$(CARGO) build --workspace --all-targets

crds: ## Regenerate crds/ and its copies in deploy/crd/ and the chart's crds/ from the Rust types
	$(CARGO) run --quiet --bin hector-operator -- crd > crds/hectorplugin.yaml
	deploy/deploy crds

images: ## Build the OCI image archives (operator, launcher, example plugins); PLATFORMS="amd64 arm64" for both
	tests/images/build-all

cluster-up: ## Start the local single-node cluster (builds Kubernetes once, then cached)
	$(CLUSTER) up

cluster-down: ## Stop the local cluster and clean up after it
	$(CLUSTER) down

unit: deps ## Unit and protocol tests (no cluster needed)
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

test: deps check cluster-up images ## The whole suite: lints, unit, protocol and live-cluster tests
	KUBECONFIG="$$($(CLUSTER) kubeconfig)" deploy/deploy apply
	$(CARGO) build --workspace --bins
	KUBECONFIG="$$($(CLUSTER) kubeconfig)" $(CARGO) test --workspace --no-fail-fast --features hector-operator/e2e

bench: ## Benchmarks: launcher overhead, direct vs proxied (prints figures)
	$(CARGO) build --release --workspace --bins
	$(CARGO) bench -p hector-plugin-launcher --bench overhead
	$(CARGO) bench -p hector-plugin-launcher --bench secure
	$(CARGO) bench -p hector-plugin-remote --bench overhead
	$(CARGO) bench -p hector-plugin-client --bench faults

bench-operator: ## Publication latency vs the endpoint controller, idle writes, memory (needs make deploy)
	KUBECONFIG="$${KUBECONFIG:-$$($(CLUSTER) kubeconfig)}" $(CARGO) bench -p hector-operator --bench operator

bench-scale: ## Operator cost and publication with 100, 1,000, 10,000 plugins (needs make deploy; BENCH_SCALE_SIZES, BENCH_SCALE_IDLE_SECS, BENCH_SCALE_ROUNDS)
	KUBECONFIG="$${KUBECONFIG:-$$($(CLUSTER) kubeconfig)}" $(CARGO) bench -p hector-operator --bench scale

demo: deps $(if $(filter-out $(shell $(CLUSTER) kubeconfig),$(KUBECONFIG)),,cluster-up) images ## Helm-install the operator (local cluster, or KUBECONFIG's) + example plugin, ending with a remote call
	tests/demo/run

# --- installing the operator (deploy/, charts/) ---------------------------------------------
HELM_BIN = $$(tests/setup/deps.d/40-helm path)
.PHONY: deploy undeploy manifests helm-lint docker-images

deploy: $(if $(or $(LOAD_IMAGE),$(filter-out $(shell $(CLUSTER) kubeconfig),$(KUBECONFIG))),,cluster-up) images ## Build and load the images, install the operator with Helm (IMAGE_TAG), replacing a deploy/ install
	deploy/deploy helm

undeploy: ## Remove the operator (Helm release or deploy/ install); the CRD stays unless UNDEPLOY_CRDS=1
	deploy/deploy delete

manifests: crds ## Same as crds (kept for habit)

helm-lint: ## helm lint --strict the chart (Helm is built from its Go module once)
	tests/setup/deps.d/40-helm
	$(HELM_BIN) lint --strict charts/hector-operator

docker-images: ## Build the same images with Docker from images/*Dockerfile (tagged IMAGE_TAG and the version)
	version=$$(tests/images/workspace-package version); tag=$${IMAGE_TAG:-dev}; \
	for target in hector-operator echo-llm hash-embedder memory-db; do \
	  docker build -f images/Dockerfile --target $$target --build-arg VERSION=$$version -t hector.dev/$$target:$$tag -t hector.dev/$$target:$$version .; \
	done; \
	docker build -f images/go-llm.Dockerfile --build-arg VERSION=$$version -t hector.dev/go-llm:$$tag -t hector.dev/go-llm:$$version .
