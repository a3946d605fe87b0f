#!/usr/bin/env bash
# Installs what a fresh machine lacks to build hyperlight-js. Idempotent and quiet.
#
# - clang, libclang-dev and llvm (llvm-ar): the guest's C parts (QuickJS, picolibc)
#   are compiled for x86_64-unknown-none, and bindgen needs libclang.
# - the Rust target x86_64-unknown-none (soft-float, prebuilt core) and rust-src.
# - a usable /dev/kvm is checked, not installed: tests fail loudly without it.
set -euo pipefail

log() { echo "setup.sh: $*" >&2; }
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

have_llvm_ar() { compgen -c | grep -qE '^llvm-ar(-[0-9]+)?$'; }

missing=()
command -v clang >/dev/null 2>&1 || missing+=(clang)
# libclang for bindgen: any libclang*.so under the usual places.
if ! ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/x86_64-linux-gnu/libclang*.so* >/dev/null 2>&1; then
  missing+=(libclang-dev)
fi
have_llvm_ar || missing+=(llvm)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]} from the Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if command -v rustup >/dev/null 2>&1; then
  rustup target list --installed | grep -qx x86_64-unknown-none || rustup target add x86_64-unknown-none >/dev/null
  rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src >/dev/null
else
  log "rustup not found: install Rust 1.95+ with rustup, then rerun"
  exit 1
fi

if [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
  log "warning: /dev/kvm is missing or not accessible; sandboxes cannot start on this machine"
fi
