#!/usr/bin/env bash
# The base of the worker's runtime image (Dockerfile.runtime), built offline from Debian packages.
#
#   bash scripts/runtime-base.sh          # builds hljs-runtime-base:bookworm unless it exists
#   bash scripts/runtime-base.sh ROOT     # the same from a copy of ROOT, a fresh bookworm minbase
#                                         # root with ca-certificates (broker-images.sh passes its own)
#
# What gcr.io/distroless/cc-debian12:nonroot (the Dockerfile's default base) gives the worker, from
# a debootstrapped Debian bookworm (minbase) imported with `docker import`: bookworm's glibc 2.36
# and libgcc (what the worker binary links), ca-certificates (the system roots amqps:// trusts),
# /etc/passwd and /etc/group with the user and group `nonroot` = 65532, the image's default user.
# Unlike distroless it keeps a shell and coreutils (to `docker exec` into); apt, documentation and
# locales are removed. About 70 MB.
#
# RUNTIME_BASE_IMAGE names the tag; the Debian mirror is the machine's own (or DEBIAN_MIRROR). Needs
# root (debootstrap) and a running Docker (scripts/docker.sh).
set -euo pipefail

TAG="${RUNTIME_BASE_IMAGE:-hljs-runtime-base:bookworm}"
WORK="${RUNTIME_BASE_WORK:-/var/tmp/hljs-runtime-base}"

log() { echo "runtime-base.sh: $(date +%T) $*" >&2; }

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

# shellcheck source=scripts/debian-mirror.sh
. "$(dirname "$0")/debian-mirror.sh"

if docker image inspect "$TAG" >/dev/null 2>&1; then
  log "$TAG exists; skipped"
  exit 0
fi
started=$SECONDS
root="$WORK/bookworm"
$sudo rm -rf "$root"
$sudo mkdir -p "$WORK"
if [ -n "${1:-}" ]; then
  # A debootstrap costs ~100 s here, mostly downloads: reuse one made for something else.
  log "$TAG: from a copy of $1"
  $sudo cp -a "$1" "$root"
else
  mirror="$(mirror)"
  $sudo mkdir -p "$root"
  log "$TAG: debootstrap bookworm (minbase, ca-certificates) from $mirror"
  $sudo debootstrap --variant=minbase --include=ca-certificates bookworm "$root" "$mirror" \
    >"$WORK/debootstrap.log" 2>&1 || {
    tail -n 30 "$WORK/debootstrap.log" >&2
    exit 1
  }
fi
$sudo test -d "$root/etc/ssl/certs" || {
  log "$root has no ca-certificates"
  exit 1
}
# The image's user, as in distroless: uid and gid 65532, named nonroot, no login shell.
if ! grep -q '^nonroot:' "$root/etc/passwd"; then
  echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin' | $sudo tee -a "$root/etc/passwd" >/dev/null
  echo 'nonroot:x:65532:' | $sudo tee -a "$root/etc/group" >/dev/null
fi
$sudo install -d -o 65532 -g 65532 -m 0750 "$root/home/nonroot"
# No package manager at run time; nothing else the worker would miss.
$sudo chroot "$root" dpkg --purge --force-remove-essential --force-depends apt >/dev/null 2>&1 || true
$sudo rm -rf "$root"/var/lib/apt "$root"/var/cache/apt "$root"/etc/apt "$root"/var/log/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
glibc="$($sudo chroot "$root" dpkg-query -W -f '${Version}' libc6)"
log "$TAG: docker import (glibc $glibc)"
$sudo tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV SSL_CERT_DIR=/etc/ssl/certs' \
  --change 'USER 65532:65532' \
  --change 'WORKDIR /home/nonroot' \
  --change "LABEL org.hljs.debian.suite=bookworm org.hljs.glibc.version=$glibc" \
  - "$TAG" >/dev/null
$sudo rm -rf "$root"
log "$TAG ready in $((SECONDS - started))s ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%d MB", $1/1e6}'))"
