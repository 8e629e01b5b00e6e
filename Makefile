# Liquid: the one entry point. `make help` lists the targets; every target echoes what it runs.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/liquid/target
export PATH := $(HOME)/.cache/liquid/bin:$(PATH)
export LIQUID_TEST_POSTGRES_URL ?= postgres://liquid:liquid@127.0.0.1:5432/postgres
export LIQUID_TEST_REDIS_URL ?= redis://127.0.0.1:6379
export LIQUID_TEST_NATS_URL ?= nats://127.0.0.1:4222
NEXTEST_PROFILE ?= default

.DEFAULT_GOAL := help
.PHONY: help run test lint bench images helm-lint deps dev-up dev-down

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

run: ## start the whole platform in one process on embedded defaults (needs only Rust)
	cargo run -p liquid -- up

deps: ## install what the tests need (idempotent)
	bash scripts/deps.sh

dev-up: ## start PostgreSQL, Redis and NATS JetStream on loopback
	bash scripts/dev-up.sh

dev-down: ## stop them
	bash scripts/dev-down.sh

test: deps dev-up ## install, start the backing services, run every test
	cargo build --workspace --bins
	cargo nextest run --workspace --profile $(NEXTEST_PROFILE)

lint: ## rustfmt check and clippy with warnings denied
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

bench: ## run the benchmarks (figures go to BENCHMARKS.md)
	cargo bench -p liquid-kit --bench host_overhead

images: ## build one image per service locally, without pulling
	bash scripts/images.sh

helm-lint: ## lint, render and validate every chart offline
	bash scripts/helm-lint.sh
