# Recipes for hyperlight-js. A fresh machine: `bash scripts/setup.sh` first
# (or just use the two README commands, which need no `just`).

default:
    @just --list

# Install clang, libclang, llvm-ar and the x86_64-unknown-none target.
setup:
    bash scripts/setup.sh

# Build everything (the engine build also builds and embeds the guest).
build:
    cargo build --workspace

# Engine tests only (real micro-VMs).
test-engine:
    cargo test -p hyperlight-js-engine

# Worker end-to-end tests against a local RabbitMQ.
test-worker:
    bash scripts/rabbitmq.sh start
    AMQP_URL=$(bash scripts/rabbitmq.sh url) cargo test -p hyperlight-js-worker -p hyperlight-js-e2e

# The Node.js package @hyperlight/js-host-api (profile: release or debug).
build-js-host-api profile="release":
    bash node-api/ci.sh build {{profile}}

# Run every example in examples/node against the built package.
run-js-host-api-examples profile="release":
    bash node-api/ci.sh build {{profile}}
    bash node-api/ci.sh examples

# The package's test suite.
test-js-host-api profile="release":
    bash node-api/ci.sh build {{profile}}
    bash node-api/ci.sh test

# Build everything, all runtimes and targets.
build-all:
    cargo build --workspace
    bash node-api/ci.sh build release

# Test everything (the profile applies to the Node.js package).
test-all profile="release":
    bash scripts/test-all.sh

# Helm chart render, lint, schema validation and tests.
test-chart:
    bash charts/ci-check.sh

# Engine benchmark table.
bench-engine:
    cargo bench -p hyperlight-js-engine --bench engine

# This project against quickjs-emscripten and isolated-vm, one Node process (node-api/bench/peers.mjs;
# installs the peers into node-api/bench/peers/ on first use).
bench-peers:
    bash node-api/ci.sh build release
    bash node-api/ci.sh bench-peers

# Run the worker on the example events with no broker (stdin mode).
run-example:
    cargo run --release -p hyperlight-js-worker -- --config examples/worker.toml --stdin < examples/events.jsonl

fmt:
    cargo fmt --all

lint:
    HYPERLIGHT_JS_GUEST_LINT=1 cargo clippy --workspace --all-targets -- -D warnings

rabbitmq-start:
    bash scripts/rabbitmq.sh start

rabbitmq-stop:
    bash scripts/rabbitmq.sh stop
