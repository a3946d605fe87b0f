#!/usr/bin/env bash
# The worker's image from a binary already built (Dockerfile.runtime), offline.
#
#   bash scripts/worker-image.sh [BINARY] [TAG]
#     BINARY  default: ${CARGO_TARGET_DIR:-target}/release/hyperlight-js-worker
#     TAG     default: hyperlight-js-worker:local
#
# Builds the base first when it is missing (scripts/runtime-base.sh; RUNTIME_IMAGE picks another
# base, such as gcr.io/distroless/cc-debian12:nonroot on a machine with a registry). The context
# is a temporary directory with the binary, its debug sections stripped (the image carries no
# debugger), and nothing else. Prints the tag.
set -euo pipefail
cd "$(dirname "$0")/.."

BINARY="${1:-${CARGO_TARGET_DIR:-target}/release/hyperlight-js-worker}"
TAG="${2:-hyperlight-js-worker:local}"
BASE="${RUNTIME_IMAGE:-hljs-runtime-base:bookworm}"

log() { echo "worker-image.sh: $(date +%T) $*" >&2; }

if [ ! -x "$BINARY" ]; then
  log "no worker binary at $BINARY (cargo build -p hyperlight-js-worker --bin hyperlight-js-worker)"
  exit 1
fi
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  if [ "$BASE" = hljs-runtime-base:bookworm ]; then
    bash scripts/runtime-base.sh
  else
    log "the base image $BASE does not exist"
    exit 1
  fi
fi
started=$SECONDS
ctx="$(mktemp -d "${TMPDIR:-/tmp}/hljs-worker-image.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
if command -v objcopy >/dev/null 2>&1; then
  objcopy --strip-debug "$BINARY" "$ctx/hyperlight-js-worker"
else
  cp "$BINARY" "$ctx/hyperlight-js-worker"
fi
chmod 0755 "$ctx/hyperlight-js-worker"
cp Dockerfile.runtime "$ctx/Dockerfile"
# The classic builder: no BuildKit frontend image to pull, the base is resolved locally.
DOCKER_BUILDKIT=0 docker build -q --build-arg "RUNTIME_IMAGE=$BASE" -t "$TAG" "$ctx" >/dev/null
log "$TAG from $BINARY on $BASE in $((SECONDS - started))s"
echo "$TAG"
