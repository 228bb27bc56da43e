#!/usr/bin/env bash
# A real single-node Apache Kafka (KRaft: broker + controller in one JVM) for tests and local runs.
# Jars come from Maven Central through the machine's mvn and are cached; the JVM is the machine's Java 17.
#
#   deploy/kafka.sh install   fetch Kafka and its runtime dependencies into the cache (idempotent)
#   deploy/kafka.sh start     install if needed, format storage if new, start, wait until it serves metadata
#   deploy/kafka.sh stop      SIGTERM, wait, SIGKILL if it will not go (the data stays for the next start)
#   deploy/kafka.sh status    exit 0 when running
#
# Environment: KAFKA_PORT (19092), KAFKA_CONTROLLER_PORT (KAFKA_PORT+1), KAFKA_STATE (/tmp/shadowtap-kafka),
# SHADOWTAP_CACHE (~/.cache/shadowtap), KAFKA_VERSION (3.9.1), KAFKA_HEAP (-Xmx512m),
# KAFKA_START_TIMEOUT (60 seconds), PYTHON (python3, with kafka-python: checks that the broker is ready).
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-3.9.1}"
SLF4J_VERSION="1.7.36"
CACHE="${SHADOWTAP_CACHE:-$HOME/.cache/shadowtap}"
HOME_DIR="$CACHE/kafka-$KAFKA_VERSION"
LIBS="$HOME_DIR/libs"
PORT="${KAFKA_PORT:-19092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
STATE="${KAFKA_STATE:-/tmp/shadowtap-kafka}"
PIDFILE="$STATE/kafka.pid"
STDOUT_LOG="$STATE/kafka.out"
SERVER_LOG="$STATE/server.log"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-60}"
PYTHON="${PYTHON:-python3}"

say() { echo "kafka.sh: $*" >&2; }
die() { say "$*"; exit 1; }

install() {
  if [ -f "$LIBS/.complete" ]; then return 0; fi
  command -v java >/dev/null || die "java not found: Kafka needs a Java 17 runtime (apt-get install openjdk-17-jre-headless)"
  command -v mvn >/dev/null || die "mvn not found: Maven fetches Kafka from Maven Central (apt-get install maven)"
  mkdir -p "$HOME_DIR"
  # Two installs at once (parallel test sessions) must not interleave.
  exec 9>"$HOME_DIR/.install.lock"
  if command -v flock >/dev/null; then flock 9; fi
  if [ -f "$LIBS/.complete" ]; then return 0; fi
  cat >"$HOME_DIR/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.shadowtap</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>$SLF4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
  cat >"$HOME_DIR/log4j.properties" <<'L4J'
log4j.rootLogger=INFO, file
log4j.logger.org.apache.kafka=WARN
log4j.logger.org.apache.kafka.raft=WARN
log4j.logger.kafka.request.logger=WARN
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=${kafka.logs.dir}/server.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
L4J
  say "fetching Apache Kafka $KAFKA_VERSION from Maven Central into $LIBS"
  local staging="$HOME_DIR/libs.partial"
  rm -rf "$staging" "$LIBS"
  if ! mvn -q -B -Dstyle.color=never -f "$HOME_DIR/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$staging" -DincludeScope=runtime >"$HOME_DIR/mvn.log" 2>&1; then
    tail -n 40 "$HOME_DIR/mvn.log" >&2
    die "mvn could not fetch Kafka $KAFKA_VERSION from Maven Central (is it, or a Maven mirror, reachable?); see $HOME_DIR/mvn.log"
  fi
  [ -f "$staging/kafka_2.13-$KAFKA_VERSION.jar" ] || die "kafka_2.13-$KAFKA_VERSION.jar missing after mvn"
  touch "$staging/.complete"
  mv "$staging" "$LIBS"
}

running() {
  [ -f "$PIDFILE" ] || return 1
  local pid; pid="$(cat "$PIDFILE")"
  kill -0 "$pid" 2>/dev/null || return 1
  # A stale pid file may name a process that has nothing to do with this broker.
  if [ -r "/proc/$pid/cmdline" ]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "kafka.Kafka $STATE/server.properties" || return 1
  fi
}

port_in_use() {
  "$PYTHON" - "$1" <<'PY'
import socket, sys
with socket.socket() as s:
    s.settimeout(1)
    sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
PY
}

# Exit 0 once the broker answers a metadata request with itself in it; 1 if the JVM died; 2 on timeout.
wait_ready() {
  "$PYTHON" - "$PORT" "$(cat "$PIDFILE")" "$START_TIMEOUT" <<'PY'
import logging, os, socket, sys, time

logging.disable(logging.CRITICAL)  # kafka-python logs every refused connection at ERROR
from kafka import KafkaAdminClient

port, pid, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(1)
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        time.sleep(0.2)
        continue
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=3000, api_version_auto_timeout_ms=3000
        )
        try:
            if admin.describe_cluster().get("brokers"):
                sys.exit(0)
        finally:
            admin.close()
    except Exception:
        pass
    time.sleep(0.2)
sys.exit(2)
PY
}

start() {
  install
  if running; then say "already running (pid $(cat "$PIDFILE")) on 127.0.0.1:$PORT"; return 0; fi
  "$PYTHON" -c "import kafka" 2>/dev/null || die "$PYTHON cannot import kafka (kafka-python): pip install -e . first"
  for p in "$PORT" "$CONTROLLER_PORT"; do
    if port_in_use "$p"; then die "port $p on 127.0.0.1 is already in use (another broker? set KAFKA_PORT)"; fi
  done
  mkdir -p "$STATE/data"
  cat >"$STATE/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$STATE/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
auto.create.topics.enable=true
group.initial.rebalance.delay.ms=0
PROPS
  local classpath="$LIBS/*"
  if [ ! -f "$STATE/data/meta.properties" ]; then
    java -cp "$classpath" kafka.tools.StorageTool format -t "shadowtap-local-cluster-01" \
      -c "$STATE/server.properties" >"$STATE/format.log" 2>&1 \
      || { say "storage format failed:"; cat "$STATE/format.log" >&2; exit 1; }
  fi
  # shellcheck disable=SC2086  # KAFKA_HEAP may hold several JVM options
  nohup java -Xms128m ${KAFKA_HEAP:--Xmx512m} -XX:+UseSerialGC -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$HOME_DIR/log4j.properties" -Dkafka.logs.dir="$STATE" \
    -cp "$classpath" kafka.Kafka "$STATE/server.properties" >"$STDOUT_LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  local rc=0
  wait_ready || rc=$?
  if [ "$rc" -ne 0 ]; then
    if [ "$rc" -eq 1 ]; then
      say "Kafka exited during start-up; last lines of $STDOUT_LOG and $SERVER_LOG:"
    else
      say "Kafka not ready after ${START_TIMEOUT}s; last lines of $STDOUT_LOG and $SERVER_LOG:"
    fi
    tail -n 30 "$STDOUT_LOG" "$SERVER_LOG" >&2 2>/dev/null || true
    stop
    exit 1
  fi
  say "Kafka $KAFKA_VERSION ready on 127.0.0.1:$PORT (pid $(cat "$PIDFILE")); logs: $SERVER_LOG, $STDOUT_LOG"
}

stop() {
  if ! running; then rm -f "$PIDFILE"; return 0; fi
  local pid; pid="$(cat "$PIDFILE")"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 30)) killed=0
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      if [ "$killed" -eq 1 ]; then die "Kafka (pid $pid) survived SIGKILL"; fi
      say "Kafka (pid $pid) did not stop within 30s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      killed=1
      deadline=$((SECONDS + 5))
    fi
    sleep 0.1
  done
  rm -f "$PIDFILE"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) running ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
