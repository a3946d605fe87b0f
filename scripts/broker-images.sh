#!/usr/bin/env bash
# RabbitMQ images for the end-to-end tests, built offline from Debian packages (no image registry).
#
#   bash scripts/broker-images.sh        # builds the images that do not exist yet
#
# Two images, each a debootstrapped Debian root with `rabbitmq-server`, imported with
# `docker import`, whose default command starts a broker like the official image does:
#
#   rabbitmq:4.3   Debian unstable (sid): RabbitMQ 4.3.x; also tagged hljs-rabbitmq:<version>
#   rabbitmq:3.13  Debian bookworm: RabbitMQ 3.10.8, Debian's 3.x; also tagged hljs-rabbitmq:3.10.8
#
# Building the bookworm root also makes the worker's runtime base hljs-runtime-base:bookworm from a
# copy of it, when that image is missing (scripts/runtime-base.sh).
#
# The tags are the ones the tests use on a machine with Docker Hub (HLJS_TEST_BROKER_IMAGE=rabbitmq:4.3
# or rabbitmq:3.13, the official images). The local "3.13" image is really 3.10, the 3.x that Debian
# carries; its label org.hljs.rabbitmq.version and its hljs-rabbitmq tag say so.
#
# The management plugin stays off: it adds to every broker's boot and binds port 15672, which
# brokers sharing the host network would fight over.
#
# The Debian mirror is the machine's own (from /etc/apt/sources.list or sources.list.d/*.sources),
# or DEBIAN_MIRROR. Needs root (debootstrap, chroot) and a running Docker (scripts/docker.sh).
set -euo pipefail

WORK="${BROKER_IMAGES_WORK:-/var/tmp/hljs-broker-images}"
PATH_ENV="PATH=/usr/lib/rabbitmq/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

log() { echo "broker-images.sh: $(date +%T) $*" >&2; }

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

# mirror: the Debian mirror (DEBIAN_MIRROR, else the apt sources).
# shellcheck source=scripts/debian-mirror.sh
. "$(dirname "$0")/debian-mirror.sh"

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# build SUITE TAG: a root of SUITE with rabbitmq-server, imported as TAG (+ hljs-rabbitmq:<version>).
build() {
  local suite="$1" tag="$2" mirror root version
  if have_image "$tag"; then
    log "$tag exists ($(docker image inspect -f '{{index .Config.Labels "org.hljs.rabbitmq.version"}}' "$tag" 2>/dev/null || true)); skipped"
    return 0
  fi
  mirror="$(mirror)"
  root="$WORK/$suite"
  log "$tag: debootstrap $suite from $mirror"
  $sudo rm -rf "$root"
  $sudo mkdir -p "$root"
  # ca-certificates: bookworm's root is also the worker's runtime base (below).
  $sudo debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" "$mirror" \
    >"$WORK/$suite.debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/$suite.debootstrap.log" >&2
    return 1
  }
  if [ "$suite" = bookworm ] && ! have_image hljs-runtime-base:bookworm; then
    # A copy of the bare root, before RabbitMQ goes in: saves runtime-base.sh its own debootstrap.
    bash "$(dirname "$0")/runtime-base.sh" "$root"
  fi
  # Erlang resolves localhost through /etc/hosts (epmd_error ... nxdomain without it).
  $sudo cp /etc/hosts "$root/etc/hosts"
  $sudo cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
  echo "deb $mirror $suite main" | $sudo tee "$root/etc/apt/sources.list" >/dev/null
  # No service starts inside the chroot while packages install.
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$root/usr/sbin/policy-rc.d" >/dev/null
  $sudo chmod +x "$root/usr/sbin/policy-rc.d"
  log "$tag: apt-get install rabbitmq-server"
  # The mirror's Release files are past their Valid-Until date.
  $sudo chroot "$root" env DEBIAN_FRONTEND=noninteractive \
    apt-get -o Acquire::Check-Valid-Until=false -qq update
  $sudo chroot "$root" env DEBIAN_FRONTEND=noninteractive \
    apt-get -o Acquire::Check-Valid-Until=false -y -qq --no-install-recommends install rabbitmq-server \
    >"$WORK/$suite.apt.log" 2>&1 || {
    tail -n 30 "$WORK/$suite.apt.log" >&2
    return 1
  }
  version="$($sudo chroot "$root" dpkg-query -W -f '${Version}' rabbitmq-server)"
  version="${version%%-*}"
  $sudo rm -f "$root/usr/sbin/policy-rc.d"
  $sudo chroot "$root" apt-get clean
  $sudo rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log \
    "$root"/var/lib/rabbitmq/mnesia "$root"/var/log/rabbitmq/*
  log "$tag: docker import (RabbitMQ $version)"
  # /usr/lib/rabbitmq/bin first: its rabbitmq-server and rabbitmqctl run as the calling user
  # (Debian's /usr/sbin wrappers switch to the rabbitmq user and its Erlang cookie).
  $sudo tar -C "$root" -c . | docker import \
    --change "ENV $PATH_ENV" \
    --change 'ENV RABBITMQ_LOGS=-' \
    --change "LABEL org.hljs.rabbitmq.version=$version org.hljs.debian.suite=$suite" \
    --change 'EXPOSE 5672' \
    --change 'CMD ["rabbitmq-server"]' \
    - "$tag" >/dev/null
  docker tag "$tag" "hljs-rabbitmq:$version"
  $sudo rm -rf "$root"
  log "$tag: done (hljs-rabbitmq:$version)"
}

mkdir -p "$WORK"
started=$SECONDS
build sid rabbitmq:4.3
build bookworm rabbitmq:3.13
log "images ready in $((SECONDS - started))s:"
docker images --format '  {{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}' | grep -E 'rabbitmq' >&2
