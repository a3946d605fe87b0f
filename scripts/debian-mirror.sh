# Sourced by the scripts that debootstrap Debian roots (broker-images.sh, runtime-base.sh).
# mirror: prints the Debian mirror to debootstrap from: DEBIAN_MIRROR, else the machine's own
# (/etc/apt/sources.list or sources.list.d/*.sources, without -security).
mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then
    echo "$DEBIAN_MIRROR"
    return
  fi
  local m=""
  if [ -f /etc/apt/sources.list ]; then
    # deb [options] URI suite components
    m="$(sed -nE 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([a-z]+:\/\/[^[:space:]]+)[[:space:]].*/\2/p' \
      /etc/apt/sources.list | grep -v -- '-security' | head -n 1 || true)"
  fi
  if [ -z "$m" ]; then
    m="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
      sed -nE 's/^URIs:[[:space:]]*([^[:space:]]+).*/\1/p' | grep -v -- '-security' | head -n 1 || true)"
  fi
  if [ -z "$m" ]; then
    echo "$(basename "$0"): no Debian mirror in the apt sources; set DEBIAN_MIRROR" >&2
    return 1
  fi
  echo "$m"
}

