#!/usr/bin/env bash
# Every check and test of the project, from a fresh clone: set-up included.
#   bash scripts/test-all.sh
# Needs /dev/kvm (tests fail loudly without it), root (Docker Engine, debootstrap) and network access to the
# Debian, crates.io and npm registries on the first run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step is announced with the time of day; the previous one's elapsed time is printed when the
# next starts, and every step's at the end.
STEP_NAME=""
STEP_START=$SECONDS
TIMES=()
step_done() {
  if [ -n "$STEP_NAME" ]; then
    local took=$((SECONDS - STEP_START))
    printf '=== %s took %ds\n' "$STEP_NAME" "$took" >&2
    TIMES+=("$(printf '%5ds  %s' "$took" "$STEP_NAME")")
  fi
}
step() {
  step_done
  STEP_NAME="$*"
  STEP_START=$SECONDS
  printf '\n=== %s (%s)\n' "$*" "$(date +%T)" >&2
}

step "set-up: toolchain, clang"
bash scripts/setup.sh

# The end-to-end tests run the worker against RabbitMQ containers, one per test
# (HLJS_TEST_BROKER_IMAGE; tests/src/broker.rs); nothing here uses the machine's own broker
# (scripts/rabbitmq.sh, for the worker benchmark and for running the tests against AMQP_URL).
step "set-up: Docker Engine, the RabbitMQ images (rabbitmq:3.13 = Debian's 3.10.8, rabbitmq:4.3), the runtime base"
bash scripts/docker.sh
bash scripts/broker-images.sh
# hljs-runtime-base:bookworm, the base of Dockerfile.runtime (no registry for distroless here).
bash scripts/runtime-base.sh

step "format and lints"
cargo fmt --all --check
# HYPERLIGHT_JS_GUEST_LINT: the engine's build script lints the guest too.
HYPERLIGHT_JS_GUEST_LINT=1 cargo clippy --workspace --all-targets --locked -- -D warnings

step "Rust tests but the end-to-end crate: engine on real micro-VMs (guest user mode), worker"
cargo test --workspace --exclude hyperlight-js-e2e --locked --no-fail-fast

step "worker image: Dockerfile.runtime with the debug binary the end-to-end tests run"
# The same build the tests' worker_bin() does (so nothing is compiled twice); tests/tests/image.rs
# runs this image the way the chart does.
cargo build -p hyperlight-js-worker --bin hyperlight-js-worker --locked
bash scripts/worker-image.sh "${CARGO_TARGET_DIR:-target}/debug/hyperlight-js-worker" hyperlight-js-worker:ci
export HLJS_TEST_WORKER_IMAGE=hyperlight-js-worker:ci

step "end-to-end tests against RabbitMQ 3.x (image rabbitmq:3.13)"
# Every test but two that run on 4.3 only: cluster.rs needs RabbitMQ 4.x (three nodes; with a 3.x
# image it would start rabbitmq:4.3 itself, a second identical run), and image.rs tests the worker's
# image rather than the broker.
tests_313=(--lib --bins)
for t in tests/tests/*.rs; do
  name=$(basename "$t" .rs)
  case "$name" in cluster | image) ;; *) tests_313+=(--test "$name") ;; esac
done
HLJS_TEST_BROKER_IMAGE=rabbitmq:3.13 cargo test -p hyperlight-js-e2e --locked --no-fail-fast "${tests_313[@]}"

step "end-to-end tests against RabbitMQ 4.3 (image rabbitmq:4.3)"
# Every broker test again (cluster.rs and image.rs only here); cli.rs, snapshot_cache.rs and
# memory.rs need no broker and ran above.
broker_tests=()
for t in tests/tests/*.rs; do
  name=$(basename "$t" .rs)
  case "$name" in cli | snapshot_cache | memory) ;; *) broker_tests+=(--test "$name") ;; esac
done
HLJS_TEST_BROKER_IMAGE=rabbitmq:4.3 cargo test -p hyperlight-js-e2e --locked --no-fail-fast "${broker_tests[@]}"

step "engine tests again with the guest in kernel mode"
HYPERLIGHT_JS_GUEST_MODE=kernel cargo test -p hyperlight-js-engine --locked --no-fail-fast

step "Node.js package @hyperlight/js-host-api"
bash node-api/ci.sh

step "Helm chart"
bash charts/ci-check.sh

step_done
printf '\n=== all green; step times:\n' >&2
printf '%s\n' "${TIMES[@]}" >&2
