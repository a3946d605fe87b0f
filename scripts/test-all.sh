#!/usr/bin/env bash
# Every check and test of the project, from a fresh clone: set-up included.
#   bash scripts/test-all.sh
# Needs /dev/kvm (tests fail loudly without it) and network access to the
# Debian, crates.io and npm registries on the first run.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s (%s)\n' "$*" "$(date +%T)" >&2; }

step "set-up: toolchain, clang, RabbitMQ"
bash scripts/setup.sh
bash scripts/rabbitmq.sh start
export AMQP_URL="${AMQP_URL:-$(bash scripts/rabbitmq.sh url)}"

step "format and lints"
cargo fmt --all --check
# HYPERLIGHT_JS_GUEST_LINT: the engine's build script lints the guest too.
HYPERLIGHT_JS_GUEST_LINT=1 cargo clippy --workspace --all-targets --locked -- -D warnings

step "Rust tests: engine on real micro-VMs (guest user mode), worker end-to-end against RabbitMQ"
cargo test --workspace --locked --no-fail-fast

step "engine tests again with the guest in kernel mode"
HYPERLIGHT_JS_GUEST_MODE=kernel cargo test -p hyperlight-js-engine --locked --no-fail-fast

step "Node.js package @hyperlight/js-host-api"
bash node-api/ci.sh

step "Helm chart"
bash charts/ci-check.sh

step "all green"
