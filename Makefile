# Liquid: the one entry point. `make help` lists the targets; every target echoes what it runs.
# CI (.ci/run) calls these same targets, so CI and people run one thing.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

# One build cache outside the clone, shared by `make run`, `make lint`, `make test` and
# `make images` (all in the dev profile: no second full build) and reused by a fresh CI clone.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/liquid/target
# helm and kubectl installed by `make deps`.
LIQUID_TOOLS_DIR ?= $(HOME)/.cache/liquid/bin
export LIQUID_TOOLS_DIR
export PATH := $(LIQUID_TOOLS_DIR):$(PATH)
# Where the tests find the backing services `make dev-up` starts.
export LIQUID_TEST_POSTGRES_URL ?= postgres://liquid:liquid@127.0.0.1:5432/postgres
export LIQUID_TEST_REDIS_URL ?= redis://127.0.0.1:6379
export LIQUID_TEST_NATS_URL ?= nats://127.0.0.1:4222

NEXTEST_PROFILE ?= ci
# Extra arguments: `make test TEST_ARGS='-p liquid-kit'`, `make bench BENCH_ARGS='-p liquid-kit'`.
TEST_ARGS ?= --workspace
BENCH_ARGS ?= --workspace
IMAGES_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help run test lint bench images helm-lint deps dev-up dev-down

help: ## list the targets
	@echo "Liquid: make <target>"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

run: ## start all seven services in one process on embedded backends (needs only Rust)
	cargo run -p liquid -- up

deps: ## install what tests, images and chart checks need (idempotent, fast when present)
	bash scripts/deps.sh

dev-up: ## start PostgreSQL, Redis and NATS JetStream on loopback (idempotent)
	bash scripts/dev-up.sh

dev-down: ## stop the backing services dev-up started
	bash scripts/dev-down.sh

test: deps dev-up ## install, start the backing services, build the binaries and images, run every test (nextest)
	cargo build $(TEST_ARGS) --bins
	bash scripts/images.sh --no-build
	cargo nextest run $(TEST_ARGS) --profile $(NEXTEST_PROFILE)

lint: ## rustfmt check and clippy on every target with warnings denied
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

bench: ## run the benchmarks (record the figures in BENCHMARKS.md)
	cargo bench $(BENCH_ARGS) --bench '*'

images: ## build one image per service and the pool base image, locally, pulling nothing
	bash scripts/images.sh $(IMAGES_ARGS)

helm-lint: ## lint, render and validate every Helm chart offline
	bash scripts/helm-lint.sh
