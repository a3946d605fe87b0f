#!/usr/bin/env bash
# Installs the peer sandboxes that node-api/bench/peers.mjs compares us with
# (quickjs-emscripten, isolated-vm) into node-api/bench/peers/node_modules.
#
#   bash node-api/bench/peers/install.sh      # or: npm run bench:peers:install in node-api/
#
# Why a package of its own rather than devDependencies of @hyperlight/js-host-api:
# isolated-vm is a native V8 addon. Its prebuilt binaries are GitHub release assets,
# which this project's machines (and CI) cannot reach, so it compiles from source
# with node-gyp: minutes of C++ on 2 cores, and a build that depends on the Node
# headers being there. Inside the main package's `npm ci` (run by node-api/ci.sh and
# scripts/test-all.sh) that would slow every CI run down and make it fail whenever
# the compile does. Only the peer benchmark needs these packages, so only it installs
# them, on demand; the main package's package.json and lock file are unchanged.
#
# What this script does:
# - skips the install when node_modules already holds this lock file's packages,
#   built for this Node (a stamp file records both);
# - otherwise finds Node's C++ headers on this machine and points node-gyp at them
#   (npm_config_nodedir), since node-gyp would otherwise download them from
#   nodejs.org, which is unreachable here, and tells prebuild-install not to try
#   GitHub (npm_config_build_from_source);
# - runs `npm ci` (or `npm install` when there is no lock file yet) and checks that
#   both packages load.
# Exits non-zero, saying why, on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

fail() { echo "bench/peers/install.sh: $*" >&2; exit 1; }

command -v node >/dev/null || fail "node is not installed"
command -v npm >/dev/null || fail "npm is not installed"
node_version="$(node -p process.versions.node)"

# The stamp: what was installed (the lock file's hash) and for which Node (the ABI
# isolated-vm was compiled against).
stamp_file="node_modules/.hljs-peers-stamp"
want_stamp="node=$node_version modules=$(node -p process.versions.modules)"
if [ -f package-lock.json ]; then
  want_stamp="$want_stamp lock=$(sha256sum package-lock.json | cut -d' ' -f1)"
fi
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$want_stamp" ]; then
  echo "bench/peers: already installed for node $node_version" >&2
  exit 0
fi

# Node's headers for node-gyp, in order: an explicit npm_config_nodedir; the
# headers installed beside this node binary (<prefix>/include/node, as the official
# tarballs, nodesource's packages and Debian's nodejs-dev/libnode-dev lay them out);
# node-gyp's own cache of downloaded headers for this exact version.
headers_version() { # DIR -> "major.minor.patch" from DIR/include/node/node_version.h
  sed -n 's/^#define NODE_\(MAJOR\|MINOR\|PATCH\)_VERSION \([0-9]*\)$/\2/p' \
    "$1/include/node/node_version.h" 2>/dev/null | paste -sd. || true
}
if [ -z "${npm_config_nodedir:-}" ]; then
  prefix="$(dirname "$(dirname "$(node -p process.execPath)")")"
  gyp_cache="${XDG_CACHE_HOME:-$HOME/.cache}/node-gyp/$node_version"
  if [ "$(headers_version "$prefix")" = "$node_version" ]; then
    export npm_config_nodedir="$prefix"
  elif [ -f "$gyp_cache/include/node/node_version.h" ]; then
    export npm_config_nodedir="$gyp_cache"
  else
    fail "no Node.js $node_version headers found (looked for $prefix/include/node and $gyp_cache).
  isolated-vm compiles from source and node-gyp cannot download headers from nodejs.org here.
  Install the headers that match this node (e.g. Debian's nodejs-dev or libnode-dev, or the
  headers tarball of the same version), or set npm_config_nodedir to a directory holding
  include/node/node_version.h for Node.js $node_version."
  fi
fi
found="$(headers_version "$npm_config_nodedir")"
[ "$found" = "$node_version" ] ||
  fail "the headers in $npm_config_nodedir are Node.js ${found:-?}, this node is $node_version: a V8 addon built against them would not load"
echo "bench/peers: building isolated-vm against the headers in $npm_config_nodedir (Node.js $found)" >&2

# No prebuilt binary download (GitHub): prebuild-install gives up at once and the
# package's install script falls back to node-gyp. (npm warns that it does not know
# this setting: it is prebuild-install's, read from the environment, not npm's.)
export npm_config_build_from_source=true

rm -f "$stamp_file"
if [ -f package-lock.json ]; then npm ci; else npm install; fi

# Both must load in this node, or the benchmark would fail later with a worse message.
node -e 'require("isolated-vm"); require("quickjs-emscripten");' ||
  fail "the peers were installed but do not load in node $node_version"

# Recompute: `npm install` may just have written the lock file.
want_stamp="node=$node_version modules=$(node -p process.versions.modules) lock=$(sha256sum package-lock.json | cut -d' ' -f1)"
echo "$want_stamp" >"$stamp_file"
echo "bench/peers: installed" >&2
