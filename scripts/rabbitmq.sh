#!/usr/bin/env bash
# Local RabbitMQ for the worker's end-to-end tests and benchmark (no Docker, no systemd).
#
#   scripts/rabbitmq.sh install   # apt-get install rabbitmq-server if it is missing
#   scripts/rabbitmq.sh start     # install if needed, start detached, wait until it serves AMQP
#   scripts/rabbitmq.sh status    # exit 0 when the broker is up
#   scripts/rabbitmq.sh stop      # stop the broker and epmd
#   scripts/rabbitmq.sh url       # print the AMQP URL the tests use
#
# Every command is idempotent: `start` on a running broker only checks that it is ready, `stop` on a
# stopped one does nothing. The broker listens on 127.0.0.1:5672 with the default guest account,
# which RabbitMQ only accepts from loopback.
set -euo pipefail

PORT="${RABBITMQ_NODE_PORT:-5672}"
URL="amqp://guest:guest@127.0.0.1:${PORT}/%2f"
START_TIMEOUT="${RABBITMQ_START_TIMEOUT:-90}"

log() { echo "rabbitmq.sh: $*" >&2; }

installed() { command -v rabbitmq-server >/dev/null 2>&1 && command -v rabbitmqctl >/dev/null 2>&1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/${PORT}") 2>/dev/null; }

install() {
  if installed; then
    return 0
  fi
  log "installing rabbitmq-server from the Debian packages"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # The package's postinst tries to start the service; without systemd that fails harmlessly.
  $sudo apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null || installed
  # Debian's package may have started a broker through its init script; leave it to `start`.
}

running() { port_open && rabbitmqctl -q status >/dev/null 2>&1; }

start() {
  install
  if ! port_open; then
    log "starting rabbitmq-server"
    # A stale epmd or node from an unclean stop makes the start fail; detached start is async.
    RABBITMQ_NODE_PORT="$PORT" rabbitmq-server -detached >/dev/null 2>&1 || true
  fi
  local waited=0
  until port_open; do
    if [ "$waited" -ge "$START_TIMEOUT" ]; then
      log "port ${PORT} did not open within ${START_TIMEOUT}s"
      tail -n 50 /var/log/rabbitmq/*.log 2>/dev/null >&2 || true
      return 1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  # await_startup fails when called before the port is open, hence the loop above.
  rabbitmqctl -q await_startup --timeout 60 >/dev/null
  log "ready on 127.0.0.1:${PORT} (AMQP_URL=${URL})"
}

stop() {
  if installed && port_open; then
    log "stopping rabbitmq-server"
    rabbitmqctl -q shutdown >/dev/null 2>&1 || rabbitmqctl -q stop >/dev/null 2>&1 || true
  fi
  if command -v epmd >/dev/null 2>&1; then epmd -kill >/dev/null 2>&1 || true; fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) running ;;
  url) echo "$URL" ;;
  *)
    echo "usage: $0 install|start|stop|status|url" >&2
    exit 2
    ;;
esac
