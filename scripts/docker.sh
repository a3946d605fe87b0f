#!/usr/bin/env bash
# Docker Engine for the broker containers of the end-to-end tests (no systemd).
#
#   bash scripts/docker.sh
#
# Idempotent: installs Debian's docker.io and debootstrap when missing (one apt-get update),
# starts dockerd detached when no daemon answers, and waits (bounded) until `docker info` works.
# The daemon runs without a bridge or iptables rules (`--bridge=none --iptables=false`): the test
# containers use host networking and talk to 127.0.0.1 only. Its log: $DOCKERD_LOG.
set -euo pipefail

DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"
START_TIMEOUT="${DOCKERD_START_TIMEOUT:-60}"

log() { echo "docker.sh: $*" >&2; }

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]} from the Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A docker CLI may already sit earlier on the PATH (/usr/local/bin/docker) than Debian's
# (/usr/bin/docker); both negotiate the API version with the daemon, checked below.
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (log: ${DOCKERD_LOG})"
  $sudo mkdir -p "$(dirname "$DOCKERD_LOG")"
  # setsid + nohup: the daemon outlives this script and the shell that ran it.
  $sudo setsid nohup dockerd --bridge=none --iptables=false >>"$DOCKERD_LOG" 2>&1 </dev/null &
  waited=0
  until docker info >/dev/null 2>&1; do
    if [ "$waited" -ge "$START_TIMEOUT" ]; then
      log "dockerd did not answer within ${START_TIMEOUT}s; the end of its log:"
      tail -n 40 "$DOCKERD_LOG" >&2 || true
      exit 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
fi

# The CLI and the daemon must agree on an API version: `docker version` fails otherwise.
if ! versions="$(docker version --format 'client {{.Client.Version}} (API {{.Client.APIVersion}}), server {{.Server.Version}} (API {{.Server.APIVersion}})' 2>&1)"; then
  log "the docker CLI ($(command -v docker)) cannot talk to the daemon: ${versions}"
  log "Debian's CLI is /usr/bin/docker; put it first on the PATH or set DOCKER_API_VERSION"
  exit 1
fi
log "ready: ${versions}"
