#!/usr/bin/env bash
# A real single-node Apache Kafka (KRaft: broker + controller in one JVM) for tests and local runs.
# Jars come from Maven Central through the machine's mvn and are cached; the JVM is the machine's Java 17.
#
#   deploy/kafka.sh install        fetch Kafka into the cache (idempotent)
#   deploy/kafka.sh start          format storage if new, start, wait until it serves metadata
#   deploy/kafka.sh stop           SIGTERM, wait, SIGKILL if it will not go
#   deploy/kafka.sh status         exit 0 when running
#
# Environment: KAFKA_PORT (19092), KAFKA_CONTROLLER_PORT (KAFKA_PORT+1), KAFKA_STATE (/tmp/shadowtap-kafka),
# SHADOWTAP_CACHE (~/.cache/shadowtap), KAFKA_VERSION (3.9.1), KAFKA_HEAP (-Xmx512m).
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-3.9.1}"
CACHE="${SHADOWTAP_CACHE:-$HOME/.cache/shadowtap}"
HOME_DIR="$CACHE/kafka-$KAFKA_VERSION"
LIBS="$HOME_DIR/libs"
PORT="${KAFKA_PORT:-19092}"
CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
STATE="${KAFKA_STATE:-/tmp/shadowtap-kafka}"
PIDFILE="$STATE/kafka.pid"
LOG="$STATE/kafka.log"
PYTHON="${PYTHON:-python3}"

install() {
  if [ -f "$LIBS/.complete" ]; then return 0; fi
  command -v java >/dev/null || { echo "kafka.sh: java not found (Java 17 is needed)" >&2; exit 1; }
  command -v mvn >/dev/null || { echo "kafka.sh: mvn not found (Maven fetches Kafka from Maven Central)" >&2; exit 1; }
  mkdir -p "$HOME_DIR"
  cat > "$HOME_DIR/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.shadowtap</groupId><artifactId>kafka-runtime</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId><version>1.7.36</version></dependency>
  </dependencies>
</project>
POM
  echo "kafka.sh: fetching Apache Kafka $KAFKA_VERSION from Maven Central into $LIBS" >&2
  rm -rf "$LIBS"
  mvn -q -B -f "$HOME_DIR/pom.xml" dependency:copy-dependencies -DoutputDirectory="$LIBS" -DincludeScope=runtime
  cat > "$HOME_DIR/log4j.properties" <<'L4J'
log4j.rootLogger=WARN, file
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=WARN
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=${kafka.logs.dir}/server.log
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
L4J
  touch "$LIBS/.complete"
}

running() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

ready() {
  "$PYTHON" - "$PORT" <<'PY' 2>/dev/null
import sys
from kafka import KafkaAdminClient
admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{sys.argv[1]}", request_timeout_ms=3000, api_version_auto_timeout_ms=3000)
admin.describe_cluster()
admin.close()
PY
}

start() {
  install
  if running; then echo "kafka.sh: already running (pid $(cat "$PIDFILE"))" >&2; return 0; fi
  mkdir -p "$STATE/data"
  cat > "$STATE/server.properties" <<PROPS
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
log.flush.interval.messages=1
PROPS
  local cp="$LIBS/*"
  if [ ! -f "$STATE/data/meta.properties" ]; then
    java -cp "$cp" kafka.tools.StorageTool format -t "shadowtap-test-cluster-0001" -c "$STATE/server.properties" >"$STATE/format.log" 2>&1 \
      || { echo "kafka.sh: storage format failed:" >&2; cat "$STATE/format.log" >&2; exit 1; }
  fi
  nohup java -Xms128m ${KAFKA_HEAP:--Xmx512m} -XX:+UseSerialGC -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$HOME_DIR/log4j.properties" -Dkafka.logs.dir="$STATE" \
    -cp "$cp" kafka.Kafka "$STATE/server.properties" >"$LOG" 2>&1 &
  echo $! > "$PIDFILE"
  local deadline=$((SECONDS + 90))
  until ready; do
    if ! running; then echo "kafka.sh: Kafka exited during start-up; last lines of $LOG and server.log:" >&2; tail -n 30 "$LOG" "$STATE/server.log" >&2 2>/dev/null; exit 1; fi
    if [ $SECONDS -ge $deadline ]; then echo "kafka.sh: Kafka not ready after 90s; see $STATE/server.log" >&2; tail -n 30 "$STATE/server.log" >&2 2>/dev/null; stop; exit 1; fi
    sleep 0.5
  done
  echo "kafka.sh: Kafka $KAFKA_VERSION ready on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"), logs in $STATE)" >&2
}

stop() {
  if ! running; then rm -f "$PIDFILE"; return 0; fi
  local pid; pid="$(cat "$PIDFILE")"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then kill -KILL "$pid" 2>/dev/null || true; break; fi
    sleep 0.2
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
