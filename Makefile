# hector-operator — every set-up step lives behind these targets.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
CLUSTER := tests/cluster/cluster
CARGO ?= cargo

.DEFAULT_GOAL := help
.PHONY: help deps check build test unit e2e crds demo bench images cluster-up cluster-down

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

deps: ## Install what tests need (Debian packages, Python grpcio, Go modules)
	tests/setup/deps

check: ## Formatting and lints (warnings are errors)
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --features hector-operator/e2e -- -D warnings

build: ## Build every crate
	$(CARGO) build --workspace --all-targets

crds: ## Regenerate crds/ from the Rust types
	$(CARGO) run --quiet --bin hector-operator -- crd > crds/hectorplugin.yaml

images: ## Build the OCI image archives (operator, launcher, example plugins)
	tests/images/build-all

cluster-up: ## Start the local single-node cluster (builds Kubernetes once, then cached)
	$(CLUSTER) up

cluster-down: ## Stop the local cluster and clean up after it
	$(CLUSTER) down

unit: deps ## Unit and protocol tests (no cluster needed)
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

test: deps check cluster-up images ## The whole suite: lints, unit, protocol and live-cluster tests
	$(CARGO) build --workspace --bins
	KUBECONFIG="$$($(CLUSTER) kubeconfig)" $(CARGO) test --workspace --no-fail-fast --features hector-operator/e2e

bench: ## Benchmarks: launcher overhead, direct vs proxied (prints figures)
	$(CARGO) build --release --workspace --bins
	$(CARGO) bench -p hector-plugin-launcher --bench overhead

demo: deps cluster-up images ## Local cluster + example plugin, ending with a remote call
	tests/demo/run
