#!/usr/bin/env bash
# @hyperlight/js-host-api from a fresh clone, non-interactively:
#   npm install (npm ci), release build, the test suite, every example in
#   examples/node, and the README's Quick Start run verbatim as an .mjs file.
# Exits non-zero on the first failure.
#
#   bash node-api/ci.sh                  # everything
#   bash node-api/ci.sh build [release|debug]
#   bash node-api/ci.sh test | examples | quickstart | bench
#   bash node-api/ci.sh bench-peers      # the peers benchmark (not part of "all": it installs
#                                        # and compiles isolated-vm, minutes on 2 cores)
#
# Needs Node.js >= 18 with npm, Rust (see scripts/setup.sh) and a usable /dev/kvm.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
examples_dir="$root/examples/node"
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

step() { printf '\n=== node-api: %s (%s)\n' "$*" "$(date +%T)" >&2; }
fail() { echo "node-api/ci.sh: $*" >&2; exit 1; }

check_node() {
  command -v node >/dev/null || fail "node is not installed"
  command -v npm >/dev/null || fail "npm is not installed"
  local major
  major="$(node -p 'process.versions.node.split(".")[0]')"
  [ "$major" -ge 18 ] || fail "Node.js >= 18 is required, found $(node --version)"
}

install() {
  step "npm install"
  cd "$here"
  if [ -f package-lock.json ]; then npm ci; else npm install; fi
}

build() {
  local profile="${1:-release}"
  step "build ($profile)"
  cd "$here"
  [ -x node_modules/.bin/napi ] || install
  case "$profile" in
    release) npm run build ;;
    debug) npm run build:debug ;;
    *) fail "unknown profile '$profile' (release or debug)" ;;
  esac
  ls "$here"/js-host-api.*.node >/dev/null 2>&1 || fail "the build produced no .node file"
}

run_tests() {
  step "npm test"
  cd "$here"
  npm test
}

run_examples() {
  step "examples/node"
  cd "$examples_dir"
  if [ -f package-lock.json ]; then npm ci; else npm install; fi
  local f
  for f in simple calculator unload interrupt cpu-timeout host-functions; do
    echo "--- examples/node/$f.js" >&2
    node "$f.js" || fail "examples/node/$f.js exited with $?"
  done
}

quickstart() {
  step "Quick Start, verbatim from the README, as an .mjs file"
  local dir expected out spec
  dir="$(mktemp -d)"
  trap 'rm -rf "$dir"' RETURN
  node -e '
    const fs = require("fs");
    const text = fs.readFileSync(process.argv[1], "utf8");
    const m = text.split("## Quick Start")[1].match(/```javascript\n([\s\S]*?)```/);
    if (!m) { console.error("no Quick Start block in " + process.argv[1]); process.exit(1); }
    fs.writeFileSync(process.argv[2], m[1]);
  ' "$here/README.md" "$dir/quickstart.mjs"
  # The spec, when present beside the clone, must have the same Quick Start.
  for spec in "$root/../shared/spec/js-host-api.md" "$root/shared/spec/js-host-api.md"; do
    if [ -f "$spec" ]; then
      node -e '
        const fs = require("fs");
        const block = (f) => fs.readFileSync(f, "utf8").split("## Quick Start")[1].match(/```javascript\n([\s\S]*?)```/)[1];
        if (block(process.argv[1]) !== block(process.argv[2])) { console.error("README Quick Start differs from " + process.argv[1]); process.exit(1); }
      ' "$spec" "$here/README.md"
      echo "README Quick Start is identical to $spec" >&2
      break
    fi
  done
  mkdir -p "$dir/node_modules/@hyperlight"
  ln -s "$here" "$dir/node_modules/@hyperlight/js-host-api"
  expected="{ name: 'World', message: 'Hello, World!' }"
  out="$(cd "$dir" && node quickstart.mjs)"
  echo "$out"
  [ "$out" = "$expected" ] || fail "Quick Start printed '$out', expected '$expected'"
}

bench() {
  step "benchmark"
  cd "$here"
  node bench/bench.mjs
}

# quickjs-emscripten and isolated-vm side by side with this package (issue 12). They live in
# bench/peers/, a package of their own, so that `npm ci` above never builds isolated-vm.
bench_peers() {
  step "peers benchmark"
  cd "$here"
  bash bench/peers/install.sh
  node bench/peers.mjs
}

check_node
case "${1:-all}" in
  all)
    install
    build release
    run_tests
    run_examples
    quickstart
    step "all green"
    ;;
  install) install ;;
  build) build "${2:-release}" ;;
  test) run_tests ;;
  examples) run_examples ;;
  quickstart) quickstart ;;
  bench) bench ;;
  bench-peers) install; build release; bench_peers ;;
  *) fail "unknown step '$1' (all, install, build, test, examples, quickstart, bench, bench-peers)" ;;
esac
