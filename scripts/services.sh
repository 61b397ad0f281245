#!/usr/bin/env bash
# Installs and runs the real services that widelog's integration tests use, on 127.0.0.1 only,
# without Docker:
#   redis     Debian's redis-server, our own process, no persistence
#   kafka     Apache Kafka 4.1.1, one KRaft node (broker+controller), jars from Maven Central
#   ferretdb  FerretDB v1.24.2 (MongoDB wire protocol) on SQLite, built from services/ferretdb
#   toxiproxy Toxiproxy v2.12.0 (fault injection: the tests create proxies through its HTTP API),
#             built with `go install` into the cache once
# `up` also installs Debian's chromium (not a service: the dashboard's browser test drives it).
#
# Usage: scripts/services.sh up|down|status|start NAME|stop NAME|path toxiproxy
#                                                   (NAME: redis|kafka|ferretdb|toxiproxy)
#   up / down      start / stop all four (up reuses what is installed and what is running)
#   start NAME     start one service, with the data it had (Kafka keeps its log dir)
#   stop NAME      stop one service: only the process this script started (pid from its pidfile)
#   status         one line per service; exit code 0 whatever the state
#   path toxiproxy build Toxiproxy's server into the cache if missing, print its path (bench/tools.sh)
#
# Environment (all optional):
#   WIDELOG_SERVICES_CACHE   downloads and builds   (default: $HOME/.cache/widelog-services)
#   WIDELOG_SERVICES_STATE   data, logs, pidfiles   (default: /tmp/widelog-services)
#   WIDELOG_SERVICES_REDIS_PORT (6379)  WIDELOG_SERVICES_KAFKA_PORT (9092)  WIDELOG_SERVICES_KAFKA_CONTROLLER_PORT (9093)
#   WIDELOG_SERVICES_MONGO_PORT (27017)  WIDELOG_SERVICES_TOXIPROXY_PORT (8474, Toxiproxy's HTTP API)
#   WIDELOG_SERVICES_KAFKA_PROXIED_PORT (9096)  WIDELOG_SERVICES_KAFKA_PROXY_PORT (9097)
#                                      a third Kafka listener (PLAINTEXT) on the first port that
#                                      advertises the second, where a test's Toxiproxy proxy listens
#                                      (upstream: the first), so every connection a client makes
#                                      after the bootstrap goes through the proxy too; either empty: none
#   WIDELOG_SERVICES_KAFKA_SASL_PORT   a second Kafka listener, SASL_PLAINTEXT with PLAIN, for the
#                                      security-settings tests (default: 9094; empty for none); its one user:
#   WIDELOG_SERVICES_KAFKA_SASL_USER (widelog)  WIDELOG_SERVICES_KAFKA_SASL_PASSWORD (widelog-test-secret)
#   WIDELOG_SERVICES_KAFKA_SSL_PORT    a third Kafka listener, SSL (TLS, no client certificate), for the
#                                      TLS test (default: 9095; empty for none); its self-signed CA and
#                                      broker certificate are made once with openssl, kept in
#                                      $STATE/kafka/tls/ (clients trust ca.pem)
#   WIDELOG_SERVICES_KAFKA_HEAP_OPTS  (default: -Xms128m -Xmx512m)
#   WIDELOG_SERVICES_TIMEOUT seconds to wait for each service to answer (default: 90)
# See docs/services.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${HOME:=$(getent passwd "$(id -u)" | cut -d: -f6)}"
CACHE="${WIDELOG_SERVICES_CACHE:-$HOME/.cache/widelog-services}"
STATE="${WIDELOG_SERVICES_STATE:-/tmp/widelog-services}"
HOST=127.0.0.1
REDIS_PORT="${WIDELOG_SERVICES_REDIS_PORT:-6379}"
KAFKA_PORT="${WIDELOG_SERVICES_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${WIDELOG_SERVICES_KAFKA_CONTROLLER_PORT:-9093}"
MONGO_PORT="${WIDELOG_SERVICES_MONGO_PORT:-27017}"
TOXIPROXY_PORT="${WIDELOG_SERVICES_TOXIPROXY_PORT:-8474}"
KAFKA_PROXIED_PORT="${WIDELOG_SERVICES_KAFKA_PROXIED_PORT-9096}"  # empty: no proxied listener
KAFKA_PROXY_PORT="${WIDELOG_SERVICES_KAFKA_PROXY_PORT-9097}"
KAFKA_SASL_PORT="${WIDELOG_SERVICES_KAFKA_SASL_PORT-9094}"  # set it empty for no SASL listener
KAFKA_SASL_USER="${WIDELOG_SERVICES_KAFKA_SASL_USER:-widelog}"
KAFKA_SASL_PASSWORD="${WIDELOG_SERVICES_KAFKA_SASL_PASSWORD:-widelog-test-secret}"
KAFKA_SSL_PORT="${WIDELOG_SERVICES_KAFKA_SSL_PORT-9095}"  # set it empty for no SSL listener
KAFKA_HEAP_OPTS="${WIDELOG_SERVICES_KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}"
TIMEOUT="${WIDELOG_SERVICES_TIMEOUT:-90}"

KAFKA_VERSION=4.1.1          # keep in step with services/kafka/pom.xml
FERRETDB_VERSION=v1.24.2     # keep in step with services/ferretdb/go.mod
TOXIPROXY_VERSION=v2.12.0
SERVICES=(redis kafka ferretdb toxiproxy)
export DEBIAN_FRONTEND=noninteractive

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s; }

# ---------------------------------------------------------------------------------------------
# small helpers

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else die "need root (or sudo) for: $*"; fi
}

apt_install() {  # apt_install PKG...: install from Debian's archive, 'apt-get update' first if needed
  if ! as_root apt-get install -y -q "$@" </dev/null >&2; then
    as_root apt-get update -q </dev/null >&2
    as_root apt-get install -y -q "$@" </dev/null >&2
  fi
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

hash_files() { cat "$@" | sha256sum | cut -c1-12; }

pidfile() { echo "$STATE/$1/$1.pid"; }
logfile() {
  case "$1" in
    redis) echo "$STATE/redis/redis.log" ;;
    kafka) echo "$STATE/kafka/kafka.log (JVM stdout/stderr: $STATE/kafka/kafka.out)" ;;
    ferretdb) echo "$STATE/ferretdb/ferretdb.log" ;;
    toxiproxy) echo "$STATE/toxiproxy/toxiproxy.log" ;;
  esac
}
port_of() {
  case "$1" in
    redis) echo "$REDIS_PORT" ;; kafka) echo "$KAFKA_PORT" ;; ferretdb) echo "$MONGO_PORT" ;;
    toxiproxy) echo "$TOXIPROXY_PORT" ;;
  esac
}
marker_of() {  # a string that the command line of our process contains (guards against pid reuse)
  case "$1" in
    redis) echo "redis-server" ;; kafka) echo "kafka.Kafka" ;; ferretdb) echo "widelog-ferretdb" ;;
    toxiproxy) echo "toxiproxy-$TOXIPROXY_VERSION/server" ;;
  esac
}

# pid_alive NAME: prints the pid and succeeds when the pidfile names a live process of ours
pid_alive() {
  local f pid st
  f="$(pidfile "$1")"
  [ -s "$f" ] || return 1
  pid="$(tr -dc 0-9 <"$f")"
  [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
  st="$(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
  [ "$st" != Z ] && [ "$st" != X ] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$(marker_of "$1")" || return 1
  echo "$pid"
}

# launch NAME OUTFILE CMD...: start CMD in its own session, detached from our stdio and from every
# other inherited fd (so a caller's pipe or lock is never held open), pid written to the pidfile.
launch() {
  local name="$1" out="$2" pf; shift 2
  pf="$(pidfile "$name")"
  rm -f "$pf"
  # shellcheck disable=SC2016
  setsid bash -c '
    pf="$1"; shift
    for fd in /proc/$$/fd/*; do fd="${fd##*/}"; [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"; done
    echo $$ >"$pf.tmp" && mv "$pf.tmp" "$pf"
    exec "$@"' widelog-launch "$pf" "$@" </dev/null >>"$out" 2>&1 &
  local i
  for i in $(seq 1 100); do [ -s "$pf" ] && return 0; sleep 0.05; done
  die "$name: no pidfile $pf after starting it; see $out"
}

# wait_ready NAME CHECK...: poll CHECK until it succeeds, the process dies, or TIMEOUT passes
wait_ready() {
  local name="$1" t0; shift
  t0="$(now)"
  while :; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! pid_alive "$name" >/dev/null; then
      show_log_tail "$name"
      die "$name exited during start; see $(logfile "$name")"
    fi
    if [ $(( $(now) - t0 )) -ge "$TIMEOUT" ]; then
      show_log_tail "$name"
      stop_one "$name" || true   # leave nothing half-started behind
      die "$name did not answer on $HOST:$(port_of "$name") within ${TIMEOUT}s (stopped it again); see $(logfile "$name")"
    fi
    sleep 0.3
  done
}

show_log_tail() {
  local f
  for f in "$STATE/$1"/*.log "$STATE/$1"/*.out; do
    [ -s "$f" ] || continue
    printf '[services] ---- last lines of %s ----\n' "$f" >&2
    tail -n 25 "$f" >&2
  done
}

# refuse to start when someone else already listens on the port
check_port_free() {
  local name="$1" port="$2"
  if port_open "$port"; then
    die "$name: $HOST:$port is already in use by a process this script did not start (pidfile $(pidfile "$name") names no live $name; a system service such as Debian's redis-server unit?); stop it or set the port variable (see the header of scripts/services.sh)"
  fi
}

# ---------------------------------------------------------------------------------------------
# install (cached under $CACHE, reused)

java_bin() { if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then echo "$JAVA_HOME/bin/java"; else echo java; fi; }

ensure_java_mvn() {
  if ! command -v "$(java_bin)" >/dev/null 2>&1; then log "installing a Java runtime (openjdk-17-jre-headless)"; apt_install openjdk-17-jre-headless; fi
  local v
  v="$("$(java_bin)" -version 2>&1 | sed -nE '1s/.*version "([0-9]+).*/\1/p')"
  if [ -z "$v" ] || [ "$v" -lt 17 ]; then
    die "Kafka 4 needs Java 17 or newer, found: $("$(java_bin)" -version 2>&1 | head -1)"
  fi
  if ! command -v mvn >/dev/null 2>&1; then log "installing Maven"; apt_install maven; fi
}

redis_install() {
  command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 && return 0
  log "installing redis-server from Debian"
  apt_install redis-server
  command -v redis-server >/dev/null 2>&1 || die "redis-server still missing after apt-get install"
}

chromium_install() {  # for tests/e2e/test_dashboard_browser.py; that test skips without it
  command -v chromium >/dev/null 2>&1 && return 0
  log "installing chromium from Debian (the dashboard's browser test)"
  apt_install chromium || log "chromium not installed: the browser test will be skipped"
}

KLIB=""
kafka_install() {
  local pom="$ROOT/services/kafka/pom.xml" key dir tmp
  key="$(hash_files "$pom")"
  dir="$CACHE/kafka-$KAFKA_VERSION-$key"
  KLIB="$dir/klib"
  [ -f "$dir/.complete" ] && return 0
  ensure_java_mvn
  log "resolving Kafka $KAFKA_VERSION jars with Maven into $KLIB"
  mkdir -p "$CACHE"
  tmp="$(mktemp -d "$CACHE/.kafka-tmp.XXXXXX")"
  if ! mvn -B -ntp -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$tmp/klib" </dev/null >"$tmp/mvn.log" 2>&1; then
    cat "$tmp/mvn.log" >&2; rm -rf "$tmp"; die "mvn dependency:copy-dependencies failed"
  fi
  # mvn may leave a target/ dir next to the pom: keep the repo clean
  rm -rf "$ROOT/services/kafka/target"
  ls "$tmp/klib/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null || { rm -rf "$tmp"; die "no kafka_2.13-$KAFKA_VERSION.jar resolved"; }
  touch "$tmp/.complete"
  rm -rf "$dir"; mv "$tmp" "$dir"
}

FERRETDB_BIN=""
ferretdb_install() {
  local src="$ROOT/services/ferretdb" key dir tmp
  key="$(hash_files "$src/go.mod" "$src/go.sum" "$src/main.go")"
  dir="$CACHE/ferretdb-$FERRETDB_VERSION-$key"
  FERRETDB_BIN="$dir/widelog-ferretdb"
  [ -x "$FERRETDB_BIN" ] && return 0
  go_on_path FerretDB
  log "building FerretDB $FERRETDB_VERSION (embedded, SQLite) into $dir (about a minute the first time)"
  mkdir -p "$dir"
  tmp="$dir/.widelog-ferretdb.tmp.$$"
  # -mod=readonly: go.sum is committed, the build must not rewrite go.mod/go.sum in the repo
  if ! (cd "$src" && GOFLAGS="-mod=readonly -buildvcs=false" go build -trimpath -o "$tmp" . ) </dev/null >"$dir/build.log" 2>&1; then
    cat "$dir/build.log" >&2; rm -f "$tmp"; die "go build of services/ferretdb failed (log: $dir/build.log)"
  fi
  mv "$tmp" "$FERRETDB_BIN"
}

go_on_path() {
  command -v go >/dev/null 2>&1 && return 0
  [ -x /usr/local/go/bin/go ] || die "Go (1.24 or newer) is needed to build $1; none on PATH"
  PATH="/usr/local/go/bin:$PATH"
}

TOXIPROXY_BIN="$CACHE/toxiproxy-$TOXIPROXY_VERSION/server"
toxiproxy_install() {  # the only build recipe of Toxiproxy (bench/tools.sh asks `path toxiproxy`)
  local dir tmp
  [ -x "$TOXIPROXY_BIN" ] && return 0
  go_on_path Toxiproxy
  dir="$(dirname "$TOXIPROXY_BIN")"
  log "building Toxiproxy $TOXIPROXY_VERSION (go install, Go module proxy) into $dir"
  mkdir -p "$CACHE"
  tmp="$(mktemp -d "$CACHE/.toxiproxy-tmp.XXXXXX")"
  # outside any module, so the repo's go.mod files play no part; the binary is named `server`
  if ! (cd "$tmp" && GOBIN="$tmp" GOFLAGS="-trimpath -buildvcs=false" \
        go install "github.com/Shopify/toxiproxy/v2/cmd/server@$TOXIPROXY_VERSION") \
        </dev/null >"$tmp/build.log" 2>&1; then
    cat "$tmp/build.log" >&2; rm -rf "$tmp"; die "go install of Toxiproxy $TOXIPROXY_VERSION failed"
  fi
  mkdir -p "$dir"
  mv "$tmp/server" "$TOXIPROXY_BIN.tmp.$$" && mv "$TOXIPROXY_BIN.tmp.$$" "$TOXIPROXY_BIN"
  rm -rf "$tmp"
}

# ---------------------------------------------------------------------------------------------
# start

redis_ready() { [ "$(redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

redis_start() {
  local d="$STATE/redis"
  mkdir -p "$d"
  redis_install
  check_port_free redis "$REDIS_PORT"
  launch redis "$d/redis.out" redis-server --bind "$HOST" --port "$REDIS_PORT" \
    --save '' --appendonly no --dir "$d" --daemonize no --protected-mode yes \
    --logfile "$d/redis.log" --loglevel notice
  wait_ready redis redis_ready
}

kafka_cp() { echo "$KLIB/*"; }

kafka_ready() {
  port_open "$KAFKA_PORT" || return 1
  # a real metadata round trip through the broker
  timeout 30 "$(java_bin)" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp "$(kafka_cp)" \
    -Dlog4j2.configurationFile="$ROOT/services/kafka/log4j2.xml" \
    -Dwidelog.kafka.log="$STATE/kafka/tools.log" \
    org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$KAFKA_PORT" --list
}

kafka_write_config() {
  local d="$STATE/kafka" listeners advertised protocols sasl=""
  listeners="PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT"
  protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  advertised="$listeners"
  if [ -n "$KAFKA_PROXIED_PORT" ] && [ -n "$KAFKA_PROXY_PORT" ]; then
    # Clients connect to the broker address that the metadata advertises: a proxy in front of
    # PLAINTEXT would carry the bootstrap only. This listener advertises the proxy's port.
    listeners="$listeners,PROXIED://$HOST:$KAFKA_PROXIED_PORT"
    advertised="$advertised,PROXIED://$HOST:$KAFKA_PROXY_PORT"
    protocols="$protocols,PROXIED:PLAINTEXT"
  fi
  if [ -n "$KAFKA_SASL_PORT" ]; then
    # Brokers talk to each other on PLAINTEXT; clients may use this listener, which only PLAIN
    # users get through (no authorizer: an authenticated user may do everything).
    listeners="$listeners,SASL_PLAINTEXT://$HOST:$KAFKA_SASL_PORT"
    advertised="$advertised,SASL_PLAINTEXT://$HOST:$KAFKA_SASL_PORT"
    protocols="$protocols,SASL_PLAINTEXT:SASL_PLAINTEXT"
    sasl="sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SASL_USER=\"$KAFKA_SASL_PASSWORD\";"
  fi
  if [ -n "$KAFKA_SSL_PORT" ]; then
    kafka_tls_material
    listeners="$listeners,SSL://$HOST:$KAFKA_SSL_PORT"
    advertised="$advertised,SSL://$HOST:$KAFKA_SSL_PORT"
    protocols="$protocols,SSL:SSL"
    sasl="$sasl
listener.name.ssl.ssl.keystore.type=PKCS12
listener.name.ssl.ssl.keystore.location=$d/tls/broker.p12
listener.name.ssl.ssl.keystore.password=widelog-test-keystore"
  fi
  cat >"$d/server.properties" <<EOF
# written by scripts/services.sh at each start
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$KAFKA_CONTROLLER_PORT
listeners=$listeners
advertised.listeners=$advertised
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=$protocols
$sasl
log.dirs=$d/data
num.partitions=4
auto.create.topics.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# after a SIGKILL the restarted broker waits for its old session to expire (default 9 s, 2 s beats)
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=6000
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
}

# A CA and a broker certificate for 127.0.0.1/localhost, made once (kept in the state dir, so a
# client's ssl.ca.location stays valid across restarts). Test material only: the keys are not
# protected beyond the directory's permissions.
kafka_tls_material() {
  local t="$STATE/kafka/tls"
  [ -s "$t/ca.pem" ] && [ -s "$t/broker.p12" ] && return 0
  command -v openssl >/dev/null 2>&1 || die "openssl is needed for the Kafka SSL listener (or set WIDELOG_SERVICES_KAFKA_SSL_PORT empty)"
  log "making a test CA and a broker certificate in $t"
  mkdir -p "$t" && chmod 700 "$t"
  {
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=widelog test CA" \
      -keyout "$t/ca.key" -out "$t/ca.pem" &&
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
      -keyout "$t/broker.key" -out "$t/broker.csr" &&
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$t/san.ext" &&
    openssl x509 -req -in "$t/broker.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial \
      -days 3650 -extfile "$t/san.ext" -out "$t/broker.pem" &&
    openssl pkcs12 -export -in "$t/broker.pem" -inkey "$t/broker.key" -certfile "$t/ca.pem" \
      -name broker -passout pass:widelog-test-keystore -out "$t/broker.p12"
  } >>"$t/openssl.log" 2>&1 || { rm -f "$t/broker.p12"; die "making the test certificates failed (log: $t/openssl.log)"; }
}

kafka_format() {  # format the log dir once; the controller port is part of the formatted voter set
  local d="$STATE/kafka" cid
  if [ -f "$d/data/meta.properties" ]; then
    if [ -f "$d/controller.port" ] && [ "$(cat "$d/controller.port")" != "$KAFKA_CONTROLLER_PORT" ]; then
      die "kafka: $d/data was formatted with controller port $(cat "$d/controller.port"), now $KAFKA_CONTROLLER_PORT; remove $d to start afresh"
    fi
    return 0
  fi
  [ -s "$d/cluster.id" ] || head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' >"$d/cluster.id"
  cid="$(cat "$d/cluster.id")"
  log "formatting Kafka storage in $d/data (cluster id $cid)"
  mkdir -p "$d/data"
  if ! "$(java_bin)" -Xmx256m -XX:+UseSerialGC -cp "$(kafka_cp)" \
        -Dlog4j2.configurationFile="$ROOT/services/kafka/log4j2.xml" -Dwidelog.kafka.log="$d/tools.log" \
        kafka.tools.StorageTool format -t "$cid" -c "$d/server.properties" --standalone --ignore-formatted \
        </dev/null >>"$d/format.log" 2>&1; then
    cat "$d/format.log" >&2; die "kafka storage format failed (log: $d/format.log)"
  fi
  echo "$KAFKA_CONTROLLER_PORT" >"$d/controller.port"
}

kafka_start() {
  local d="$STATE/kafka"
  mkdir -p "$d"
  kafka_install
  check_port_free kafka "$KAFKA_PORT"
  check_port_free kafka "$KAFKA_CONTROLLER_PORT"
  [ -z "$KAFKA_SASL_PORT" ] || check_port_free kafka "$KAFKA_SASL_PORT"
  [ -z "$KAFKA_SSL_PORT" ] || check_port_free kafka "$KAFKA_SSL_PORT"
  [ -z "$KAFKA_PROXIED_PORT" ] || [ -z "$KAFKA_PROXY_PORT" ] || check_port_free kafka "$KAFKA_PROXIED_PORT"
  kafka_write_config
  kafka_format
  # shellcheck disable=SC2086  # KAFKA_HEAP_OPTS is a list of flags
  launch kafka "$d/kafka.out" "$(java_bin)" $KAFKA_HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$ROOT/services/kafka/log4j2.xml" -Dwidelog.kafka.log="$d/kafka.log" \
    -cp "$(kafka_cp)" kafka.Kafka "$d/server.properties"
  wait_ready kafka kafka_ready
}

# A MongoDB "ping" over OP_MSG with nothing but Python's standard library (no pymongo needed).
mongo_ping() {
  python3 - "$HOST" "$MONGO_PORT" <<'EOF'
import socket, struct, sys
def bson(pairs):
    out = b""
    for k, v in pairs:
        key = k.encode() + b"\0"
        if isinstance(v, int):
            out += b"\x10" + key + struct.pack("<i", v)
        else:
            s = v.encode() + b"\0"
            out += b"\x02" + key + struct.pack("<i", len(s)) + s
    return struct.pack("<i", len(out) + 5) + out + b"\0"
body = struct.pack("<I", 0) + b"\0" + bson([("ping", 1), ("$db", "admin")])
msg = struct.pack("<iiii", 16 + len(body), 1, 0, 2013) + body
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    s.sendall(msg)
    buf = b""
    while len(buf) < 4 or len(buf) < struct.unpack("<i", buf[:4])[0]:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("connection closed")
        buf += chunk
i = buf.find(b"\x01ok\x00")
sys.exit(0 if i >= 0 and struct.unpack("<d", buf[i + 4:i + 12])[0] == 1.0 else "ping not ok")
EOF
}

ferretdb_ready() {
  port_open "$MONGO_PORT" || return 1
  if command -v python3 >/dev/null 2>&1; then mongo_ping; else grep -q 'listening on' "$STATE/ferretdb/ferretdb.log"; fi
}

ferretdb_start() {
  local d="$STATE/ferretdb"
  mkdir -p "$d/data"
  ferretdb_install
  check_port_free ferretdb "$MONGO_PORT"
  launch ferretdb "$d/ferretdb.log" "$FERRETDB_BIN" -listen-addr "$HOST:$MONGO_PORT" \
    -data-dir "$d/data" -log-level warn
  wait_ready ferretdb ferretdb_ready
}

toxiproxy_ready() {
  port_open "$TOXIPROXY_PORT" || return 1
  python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5).read()' \
    "http://$HOST:$TOXIPROXY_PORT/version"
}

toxiproxy_start() {  # no proxies: each test creates its own (tests/toxiproxy.py)
  local d="$STATE/toxiproxy"
  mkdir -p "$d"
  toxiproxy_install
  check_port_free toxiproxy "$TOXIPROXY_PORT"
  launch toxiproxy "$d/toxiproxy.log" "$TOXIPROXY_BIN" -host "$HOST" -port "$TOXIPROXY_PORT"
  wait_ready toxiproxy toxiproxy_ready
}

start_one() {
  local name="$1" pid t0
  if pid="$(pid_alive "$name")"; then
    log "$name already running (pid $pid, port $(port_of "$name"))"
    return 0
  fi
  t0="$(now)"
  "${name}_start"
  log "$name up on $HOST:$(port_of "$name") (pid $(cat "$(pidfile "$name")"), $(( $(now) - t0 ))s)"
}

# ---------------------------------------------------------------------------------------------
# stop: only the pid from our pidfile, SIGTERM, wait, then SIGKILL

stop_one() {
  local name="$1" pid grace i
  if ! pid="$(pid_alive "$name")"; then
    rm -f "$(pidfile "$name")"
    log "$name not running"
    return 0
  fi
  case "$name" in kafka) grace=60 ;; *) grace=15 ;; esac
  kill -TERM "$pid" 2>/dev/null || true
  for (( i = 0; i < grace * 10; i++ )); do
    pid_alive "$name" >/dev/null || break
    sleep 0.1
  done
  if pid_alive "$name" >/dev/null; then
    log "$name (pid $pid) still running ${grace}s after SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for (( i = 0; i < 50; i++ )); do pid_alive "$name" >/dev/null || break; sleep 0.1; done
  fi
  pid_alive "$name" >/dev/null && die "$name (pid $pid) would not stop"
  rm -f "$(pidfile "$name")"
  log "$name stopped (pid $pid)"
}

status_one() {
  local name="$1" pid
  if pid="$(pid_alive "$name")"; then
    printf '%-9s running  pid=%-8s port=%s\n' "$name" "$pid" "$(port_of "$name")"
  else
    printf '%-9s stopped  pid=%-8s port=%s\n' "$name" "-" "$(port_of "$name")"
  fi
}

# ---------------------------------------------------------------------------------------------

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2; }

check_name() {
  case "${1:-}" in redis|kafka|ferretdb|toxiproxy) ;; *) die "unknown service '${1:-}' (redis|kafka|ferretdb|toxiproxy)" ;; esac
}

lock() {  # one invocation at a time per state dir; launch() closes this fd in the services
  mkdir -p "$STATE"
  exec 9>"$STATE/.lock"
  flock -w 600 9 || die "another scripts/services.sh holds $STATE/.lock"
}

cmd_up() {
  local n t0 bpid="" tpid=""
  t0="$(now)"
  # build FerretDB (CPU-bound, about a minute when cold) and Toxiproxy while Maven downloads and
  # the others start
  if ! pid_alive ferretdb >/dev/null; then
    ( ferretdb_install ) &
    bpid=$!
  fi
  if ! pid_alive toxiproxy >/dev/null; then
    ( toxiproxy_install ) &
    tpid=$!
  fi
  start_one redis
  start_one kafka
  chromium_install
  if [ -n "$bpid" ]; then wait "$bpid" || die "FerretDB build failed"; fi
  start_one ferretdb
  if [ -n "$tpid" ]; then wait "$tpid" || die "Toxiproxy build failed"; fi
  start_one toxiproxy
  log "all up in $(( $(now) - t0 ))s"
  for n in "${SERVICES[@]}"; do status_one "$n"; done
}

main() {
  local cmd="${1:-}"
  case "$cmd" in
    up) [ $# -eq 1 ] || usage; lock; cmd_up ;;
    down) [ $# -eq 1 ] || usage; lock; stop_one toxiproxy; stop_one ferretdb; stop_one kafka; stop_one redis ;;
    status) [ $# -eq 1 ] || usage; for n in "${SERVICES[@]}"; do status_one "$n"; done ;;
    start) [ $# -eq 2 ] || usage; check_name "$2"; lock; start_one "$2" ;;
    stop) [ $# -eq 2 ] || usage; check_name "$2"; lock; stop_one "$2" ;;
    path) [ $# -eq 2 ] && [ "$2" = toxiproxy ] || usage; toxiproxy_install; echo "$TOXIPROXY_BIN" ;;
    -h|--help|help) usage ;;
    *) usage ;;
  esac
}

main "$@"
