#!/usr/bin/env bash
# Prometheus and Alertmanager for tests and local runs: Debian's packages, run as plain processes.
#
#   deploy/observability.sh install   apt-get install prometheus prometheus-alertmanager (idempotent);
#                                     the packages' system services are neither enabled nor started
#   deploy/observability.sh start     start both on loopback with the given configs; wait until ready
#   deploy/observability.sh stop      stop what `start` started
#   deploy/observability.sh check     promtool check config + rules, promtool test rules, amtool check-config
#
# Environment (all optional):
#   PROMETHEUS_CONFIG     config for `start` (default deploy/prometheus/prometheus.yml)
#   ALERTMANAGER_CONFIG   config for `start` (default deploy/alertmanager/alertmanager.yml)
#   PROMETHEUS_PORT       default 9090
#   ALERTMANAGER_PORT     default 9093
#   OBS_HOST              interface both listen on (default 127.0.0.1)
#   OBS_STATE_DIR         pid files, logs, the TSDB and Alertmanager's state (default .cache/observability)
#   OBS_READY_TIMEOUT_S   how long `start` waits for /-/ready (default 60)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PROMETHEUS_CONFIG="${PROMETHEUS_CONFIG:-$ROOT/deploy/prometheus/prometheus.yml}"
ALERTMANAGER_CONFIG="${ALERTMANAGER_CONFIG:-$ROOT/deploy/alertmanager/alertmanager.yml}"
PROMETHEUS_PORT="${PROMETHEUS_PORT:-9090}"
ALERTMANAGER_PORT="${ALERTMANAGER_PORT:-9093}"
OBS_HOST="${OBS_HOST:-127.0.0.1}"
OBS_STATE_DIR="${OBS_STATE_DIR:-$ROOT/.cache/observability}"
OBS_READY_TIMEOUT_S="${OBS_READY_TIMEOUT_S:-60}"

PACKAGES=(prometheus prometheus-alertmanager)
BINARIES=(prometheus promtool prometheus-alertmanager amtool)

log() { echo "observability: $*" >&2; }
die() { log "$*"; exit 1; }

installed() {
  local bin
  for bin in "${BINARIES[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || return 1
  done
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install() {
  if installed; then
    log "prometheus $(prometheus --version 2>&1 | awk 'NR==1{print $3}'), alertmanager $(prometheus-alertmanager --version 2>&1 | awk 'NR==1{print $3}') already installed"
    return
  fi
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found: install ${PACKAGES[*]} (Debian/Ubuntu packages) by hand"
  # A policy-rc.d that answers 101 keeps the packages' postinst from starting their services.
  local policy=/usr/sbin/policy-rc.d added_policy=0
  if [ ! -e "$policy" ]; then
    as_root sh -c "printf '#!/bin/sh\nexit 101\n' > $policy && chmod 755 $policy"
    added_policy=1
  fi
  local status=0
  as_root apt-get update -q || status=$?
  if [ "$status" -eq 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${PACKAGES[@]}" || status=$?
  fi
  if [ "$added_policy" -eq 1 ]; then as_root rm -f "$policy"; fi
  [ "$status" -eq 0 ] || die "apt-get failed (exit $status)"
  # On a machine booted with systemd the packages enable their units; the tests run the binaries
  # themselves, so the units are switched off again.
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    as_root systemctl disable --now prometheus.service prometheus-alertmanager.service >/dev/null 2>&1 || true
  fi
  installed || die "the packages installed but ${BINARIES[*]} are not all on PATH"
  log "installed ${PACKAGES[*]}"
}

pid_of() {
  local file="$OBS_STATE_DIR/$1.pid"
  [ -s "$file" ] || return 1
  local pid
  pid="$(cat "$file")"
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

# http_ok URL: 0 when URL answers 200 within a second.
http_ok() {
  python3 - "$1" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=1) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

wait_ready() {
  local name="$1" url="$2" deadline=$((SECONDS + OBS_READY_TIMEOUT_S))
  until http_ok "$url"; do
    if ! pid_of "$name" >/dev/null; then
      tail -n 30 "$OBS_STATE_DIR/$name.log" >&2 || true
      die "$name exited before it was ready (log: $OBS_STATE_DIR/$name.log)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 30 "$OBS_STATE_DIR/$name.log" >&2 || true
      die "$name not ready at $url after ${OBS_READY_TIMEOUT_S}s (log: $OBS_STATE_DIR/$name.log)"
    fi
    sleep 0.2
  done
  log "$name ready on ${url%/-/ready}"
}

launch() {
  local name="$1"
  shift
  if pid_of "$name" >/dev/null; then
    die "$name already running (pid $(pid_of "$name")); run '$0 stop' first"
  fi
  nohup "$@" >"$OBS_STATE_DIR/$name.log" 2>&1 &
  echo $! >"$OBS_STATE_DIR/$name.pid"
}

start() {
  installed || die "not installed: run '$0 install' first"
  [ -f "$PROMETHEUS_CONFIG" ] || die "PROMETHEUS_CONFIG: no such file: $PROMETHEUS_CONFIG"
  [ -f "$ALERTMANAGER_CONFIG" ] || die "ALERTMANAGER_CONFIG: no such file: $ALERTMANAGER_CONFIG"
  mkdir -p "$OBS_STATE_DIR/prometheus-data" "$OBS_STATE_DIR/alertmanager-data"
  # --cluster.listen-address= turns off Alertmanager's gossip port (a single instance needs none).
  launch alertmanager prometheus-alertmanager \
    --config.file="$ALERTMANAGER_CONFIG" \
    --storage.path="$OBS_STATE_DIR/alertmanager-data" \
    --web.listen-address="$OBS_HOST:$ALERTMANAGER_PORT" \
    --cluster.listen-address= \
    --log.level=info
  launch prometheus prometheus \
    --config.file="$PROMETHEUS_CONFIG" \
    --storage.tsdb.path="$OBS_STATE_DIR/prometheus-data" \
    --storage.tsdb.retention.time=1d \
    --web.listen-address="$OBS_HOST:$PROMETHEUS_PORT" \
    --web.enable-lifecycle \
    --log.level=info
  wait_ready alertmanager "http://$OBS_HOST:$ALERTMANAGER_PORT/-/ready"
  wait_ready prometheus "http://$OBS_HOST:$PROMETHEUS_PORT/-/ready"
}

stop_one() {
  local name="$1" pid
  if ! pid="$(pid_of "$name")"; then
    rm -f "$OBS_STATE_DIR/$name.pid"
    return
  fi
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 15))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$name (pid $pid) ignored SIGTERM for 15s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
  done
  rm -f "$OBS_STATE_DIR/$name.pid"
  log "$name stopped"
}

stop() {
  stop_one prometheus
  stop_one alertmanager
}

check() {
  installed || die "not installed: run '$0 install' first"
  local prom="$ROOT/deploy/prometheus" am="$ROOT/deploy/alertmanager/alertmanager.yml"
  echo "== promtool check config"
  promtool check config "$prom/prometheus.yml"
  echo "== promtool check rules"
  promtool check rules "$prom"/rules/*.yml
  echo "== promtool test rules"
  # One promtool per test file, side by side (each evaluates every rule at every step of its longest
  # eval_time, which takes the better part of a minute for some); their outputs in file order.
  local logs status=0 pids=() file pid
  logs="$(mktemp -d)"
  for file in "$prom"/tests/*.yml; do
    (cd "$prom/tests" && promtool test rules "./$(basename "$file")") >"$logs/$(basename "$file").log" 2>&1 &
    pids+=("$!")
  done
  for pid in "${pids[@]}"; do
    wait "$pid" || status=1
  done
  cat "$logs"/*.log
  rm -rf "$logs"
  [ "$status" -eq 0 ] || die "promtool test rules failed (above)"
  echo "== amtool check-config"
  amtool check-config "$am"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  check) check ;;
  *)
    echo "usage: $0 install|start|stop|check" >&2
    exit 2
    ;;
esac
