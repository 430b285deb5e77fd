#!/usr/bin/env bash
# test-env.sh — start/stop the throw-away servers that ferry's integration
# tests talk to, all on 127.0.0.1 only:
#
#   * a single-node Ceph cluster (auth off, msgr v1 only): one ceph-mon and one
#     ceph-osd backed by memstore (RAM), no ceph-mgr (radosgw does not need one);
#   * N radosgw S3 gateways (default 3, ports 7480 7481 7482) sharing that
#     cluster, so they all see the same buckets and objects, plus one S3 user;
#   * an Apache Kafka cluster of three KRaft nodes, each broker and controller
#     (brokers on 9092 9093 9094, controllers on 9192 9193 9194), logs under
#     the state dir, broker defaults replication factor 3 and
#     min.insync.replicas 2.
#
# Usage: scripts/test-env.sh start|stop|restart|status|stop-rgw N|start-rgw N
#                            |stop-kafka N|start-kafka N
#
#   start        start everything and wait until it answers; writes $STATE/env
#                (KEY=VALUE lines to `source`). A no-op if already running
#                (gateways stopped with stop-rgw are started again).
#   stop         stop everything (SIGTERM, SIGKILL after a bounded wait) and
#                remove the state dir.
#   restart      stop, then start (a fresh, empty cluster).
#   status       print what is running.
#   stop-rgw N   stop gateway N (0-based); returns once the process is gone and
#                its port is closed. Used by tests to simulate a target outage.
#   start-rgw N  start gateway N again; returns once it answers HTTP.
#   stop-kafka N Kafka node N (0-based) stopped with FERRY_TEST_KAFKA_STOP_SIGNAL;
#                returns once the process is gone. Used by broker-fault tests.
#   start-kafka N start node N again (same data); returns once its broker has
#                started (registered with the controllers and unfenced).
#
# Environment (all optional):
#   FERRY_TEST_ENV            state dir (default /tmp/ferry-test-env); logs in
#                             $FERRY_TEST_ENV/logs/, pids in $FERRY_TEST_ENV/pids/
#   FERRY_TEST_MON_PORT       ceph-mon port (default 6789)
#   FERRY_TEST_RGW_PORTS      radosgw ports (default "7480 7481 7482")
#   FERRY_TEST_KAFKA_PORTS    Kafka broker ports (default "9092 9093 9094"); each
#                             node's controller listens on its port + 100
#   FERRY_TEST_KAFKA_HEAP     each Kafka node's heap (default 512m)
#   FERRY_TEST_KAFKA_STOP_SIGNAL signal used by stop-kafka (default KILL)
#   FERRY_TEST_MEMSTORE_BYTES memstore capacity (default 8G; RAM is only used
#                             as data is written)
#   FERRY_TEST_TIMEOUT        seconds to wait for each readiness step (default 120)
#   FERRY_TEST_STOP_TIMEOUT   seconds between SIGTERM and SIGKILL (default 10)
#   FERRY_TEST_RGW_STOP_SIGNAL signal used by stop-rgw (default KILL: a crash,
#                             deterministic, ~0.05s; TERM: a graceful shutdown,
#                             usually ~0.15s, SIGKILL after FERRY_TEST_STOP_TIMEOUT)
#   FERRY_TOOLS               where install-deps.sh put Kafka's jars (default
#                             $HOME/.cache/ferry-tools; jars in kafka/libs)
#
# Install the binaries first with scripts/install-deps.sh.
set -euo pipefail

STATE=${FERRY_TEST_ENV:-/tmp/ferry-test-env}
MON_PORT=${FERRY_TEST_MON_PORT:-6789}
read -r -a RGW_PORTS <<<"${FERRY_TEST_RGW_PORTS:-7480 7481 7482}"
read -r -a KAFKA_PORTS <<<"${FERRY_TEST_KAFKA_PORTS:-9092 9093 9094}"
KAFKA_HEAP=${FERRY_TEST_KAFKA_HEAP:-512m}
KAFKA_STOP_SIGNAL=${FERRY_TEST_KAFKA_STOP_SIGNAL:-KILL}
MEMSTORE_BYTES=${FERRY_TEST_MEMSTORE_BYTES:-8G}
TIMEOUT=${FERRY_TEST_TIMEOUT:-120}
STOP_TIMEOUT=${FERRY_TEST_STOP_TIMEOUT:-10}
RGW_STOP_SIGNAL=${FERRY_TEST_RGW_STOP_SIGNAL:-KILL}
ACCESS_KEY=ferrytest
SECRET_KEY=ferrytestsecret
HOST=127.0.0.1

FERRY_TOOLS=${FERRY_TOOLS:-$HOME/.cache/ferry-tools}
KAFKA_LIBS=$FERRY_TOOLS/kafka/libs

SCRIPT_PATH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
CONF=$STATE/ceph.conf
LOGS=$STATE/logs
PIDS=$STATE/pids
# Present in every state dir we create; `stop` deletes only such a dir, so a
# mistaken FERRY_TEST_ENV (say /tmp) can never be wiped.
MARKER=$STATE/.ferry-test-env
# Every process we start carries this variable; it lets us tell our processes
# apart from unrelated ones that happen to reuse a recorded PID.
OWNER_MARK="FERRY_TEST_ENV_OWNER=$STATE"

log() { printf '[test-env %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Print the last lines of the logs of component $1 (e.g. rgw.1) to stderr.
show_logs() {
    local f
    for f in "$LOGS/$1.out" "$LOGS/$1.log"; do
        [[ -s $f ]] || continue
        printf -- '----- last lines of %s -----\n' "$f" >&2
        tail -n 30 "$f" >&2
    done
}

# Fail with the tail of component $1's logs.
fail() {
    local comp=$1; shift
    log "ERROR: $*"
    show_logs "$comp"
    exit 1
}

# ---------------------------------------------------------------- processes

# PID recorded for component $1, or nothing.
pid_of() { cat "$PIDS/$1.pid" 2>/dev/null || true; }

# True if $1 is a live (non-zombie) process started by this state dir.
is_ours() {
    local pid=$1 st
    [[ -n $pid && -r /proc/$pid/environ ]] || return 1
    st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $st != Z ]] || return 1
    { tr '\0' '\n' <"/proc/$pid/environ"; } 2>/dev/null | grep -qxF "$OWNER_MARK"
}

running() { is_ours "$(pid_of "$1")"; }

# spawn COMPONENT CMD ARGS...: start CMD in its own session, detached from this
# script (stdin /dev/null, output to $LOGS/COMPONENT.out), recording its PID.
# The inner bash writes its own PID and then execs CMD, so the recorded PID
# is CMD's whatever setsid does. fd 9 (our lock) is not passed on, or the
# daemon would hold the lock for as long as it lives.
spawn() {
    local comp=$1; shift
    rm -f "$PIDS/$comp.pid"
    # shellcheck disable=SC2016 # $$ and $@ are for the inner bash
    env "$OWNER_MARK" setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PIDS/$comp.pid" "$@" \
        >>"$LOGS/$comp.out" 2>&1 </dev/null 9>&- &
    # Not our job any more: no "Killed" notices from this shell.
    disown "$!"
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -s $PIDS/$comp.pid ]] && return 0
        sleep 0.05
    done
    fail "$comp" "$comp did not start"
}

# stop_comps SIGNAL COMP...: signal the components, wait up to STOP_TIMEOUT s
# for all of them to exit, then SIGKILL whatever is left.
stop_comps() {
    local sig=$1; shift
    local c pid live=() deadline
    for c in "$@"; do
        pid=$(pid_of "$c")
        if is_ours "$pid"; then
            kill -s "$sig" "$pid" 2>/dev/null || true
            live+=("$c")
        fi
    done
    ((${#live[@]})) || return 0
    deadline=$((SECONDS + STOP_TIMEOUT))
    while ((SECONDS < deadline)); do
        local still=0
        for c in "${live[@]}"; do running "$c" && still=1; done
        ((still)) || break
        sleep 0.1
    done
    for c in "${live[@]}"; do
        pid=$(pid_of "$c")
        if is_ours "$pid"; then
            log "$c (pid $pid) still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    for ((deadline = 0; deadline < 50; deadline++)); do
        local still=0
        for c in "${live[@]}"; do running "$c" && still=1; done
        ((still)) || break
        sleep 0.1
    done
    for c in "${live[@]}"; do
        running "$c" && die "$c (pid $(pid_of "$c")) survived SIGKILL"
        rm -f "$PIDS/$c.pid"
    done
}

# ------------------------------------------------------------------- probes

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# HTTP status code of http://HOST:$1/ ("000" when nothing answers).
http_code() {
    curl -s -o /dev/null -w '%{http_code}' --connect-timeout 2 --max-time 5 "http://$HOST:$1/" || true
}

ceph_cmd() { timeout 30 ceph -c "$CONF" --connect-timeout 10 "$@"; }

# True once Kafka node $1 logged that it started since its log had $2 lines:
# a KRaft broker says so only after the controllers registered and unfenced
# it, so it then serves metadata and leads partitions.
kafka_started() {
    tail -n "+$(($2 + 1))" "$LOGS/kafka.$1.out" 2>/dev/null | grep -q 'Kafka Server started'
}

# wait_until COMPONENT DESCRIPTION CMD...: poll CMD until it succeeds; fail
# with the component's logs if it times out or the component dies.
wait_until() {
    local comp=$1 what=$2; shift 2
    local deadline=$((SECONDS + TIMEOUT))
    until "$@"; do
        [[ $comp == - ]] || running "$comp" || fail "$comp" "$comp exited while waiting for: $what"
        ((SECONDS < deadline)) || fail "$comp" "timed out after ${TIMEOUT}s waiting for: $what"
        sleep 0.2
    done
}

rgw_answers() { [[ $(http_code "$1") != 000 ]]; }
osd_up() { ceph_cmd osd stat 2>/dev/null | grep -q '1 up'; }
mon_up() { ceph_cmd mon stat >/dev/null 2>&1; }
port_closed() { ! port_open "$1"; }

kafka_index_ok() {
    if ! [[ $1 =~ ^[0-9]+$ ]] || (($1 >= ${#KAFKA_PORTS[@]})); then
        die "no Kafka node '$1': valid are 0..$((${#KAFKA_PORTS[@]} - 1))"
    fi
}

rgw_index_ok() {
    if ! [[ $1 =~ ^[0-9]+$ ]] || (($1 >= ${#RGW_PORTS[@]})); then
        die "no gateway '$1': valid are 0..$((${#RGW_PORTS[@]} - 1))"
    fi
}

# ------------------------------------------------------------ configuration

write_ceph_conf() {
    local fsid i
    fsid=$(cat /proc/sys/kernel/random/uuid)
    cat >"$CONF" <<EOF
# Generated by scripts/test-env.sh — single-node throw-away test cluster.
[global]
fsid = $fsid
mon host = v1:$HOST:$MON_PORT
mon initial members = a
public addr = $HOST
cluster addr = $HOST
ms bind ipv6 = false
# msgr v1 only: one port for the mon, nothing on 3300.
ms bind msgr2 = false
# No cephx anywhere: no keyrings needed.
auth cluster required = none
auth service required = none
auth client required = none
# Keep every file of the cluster inside the state dir.
run dir = $STATE/run
admin socket = $STATE/run/\$cluster-\$name.asok
log file = $LOGS/\$name.log
# One OSD: single-replica pools with few PGs (radosgw creates ~7 pools and
# the default 32 PGs each would exceed mon_max_pg_per_osd on one OSD).
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
osd crush chooseleaf type = 0
# Quiet health warnings that are expected here, and don't let a nearly-full
# shared disk stop the mon (its store is tiny).
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
mon data avail warn = 1
mon data avail crit = 0
# Commit mon changes (pool creation etc.) every 0.1s instead of every 1s:
# radosgw issues a dozen pool commands on setup and on the first bucket.
paxos propose interval = 0.1

[mon.a]
mon data = $STATE/mon.a

[osd.0]
osd data = $STATE/osd.0
osd objectstore = memstore
memstore device bytes = $MEMSTORE_BYTES
# On start the OSD normally asks the mon to place it in the CRUSH map; that
# command can race the OSD learning the fsid ("handle_command on fsid 0000...")
# and the OSD then exits. We place it ourselves before starting it instead.
osd crush update on start = false
osd class update on start = false

[client]
rgw data = $STATE/rgw.\$id
# Reclaim space of deleted objects soon, so long test runs don't fill memstore.
rgw gc obj min wait = 60
rgw gc processor period = 60
# No lifecycle (expiration) processing: its worker's first pass makes SIGTERM
# take ~4s, and the tests don't need objects to expire. Lifecycle
# configurations can still be set and read.
rgw enable lc threads = false
EOF
    # One section per gateway. Only gateway 0 runs the garbage collector:
    # gateways contending for its locks sleep 5s at a time, and SIGTERM then
    # takes 5-10s to complete.
    for i in "${!RGW_PORTS[@]}"; do
        printf '\n[client.rgw.%s]\nrgw frontends = beast endpoint=%s:%s tcp_nodelay=1\n' \
            "$i" "$HOST" "${RGW_PORTS[$i]}"
        if ((i > 0)); then
            printf 'rgw enable gc threads = false\n'
        fi
    done >>"$CONF"
}

# Kafka's configuration, one properties file per node and a shared log4j2
# configuration; then the KRaft storage of every node formatted with one
# cluster id (in parallel: each format is a JVM start).
write_kafka_conf() {
    local i voters=() cluster_id
    for i in "${!KAFKA_PORTS[@]}"; do
        voters+=("$((i + 1))@$HOST:$((KAFKA_PORTS[i] + 100))")
    done
    cat >"$STATE/kafka-log4j2.properties" <<EOF
# Generated by scripts/test-env.sh. Warnings and errors, plus start, stop and
# log-cleaner lines (the compaction test reads what the cleaner did).
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = info
logger.broker.name = kafka.server.BrokerServer
logger.broker.level = info
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = info
EOF
    for i in "${!KAFKA_PORTS[@]}"; do
        mkdir -p "$STATE/kafka.$i"
        cat >"$STATE/kafka.$i/server.properties" <<EOF
# Generated by scripts/test-env.sh — node $i of a throw-away test cluster.
process.roles=broker,controller
node.id=$((i + 1))
controller.quorum.voters=$(IFS=,; echo "${voters[*]}")
listeners=PLAINTEXT://$HOST:${KAFKA_PORTS[i]},CONTROLLER://$HOST:$((KAFKA_PORTS[i] + 100))
advertised.listeners=PLAINTEXT://$HOST:${KAFKA_PORTS[i]}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$STATE/kafka.$i/data
# Durability as ferry's users run it: three replicas, two in sync to accept
# a write (acks=all), for every topic including Kafka's own.
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
unclean.leader.election.enable=false
# Small-machine settings: fewer threads and offsets partitions, no wait
# before a new group's first rebalance, the log cleaner looking for work
# every 2 s instead of 15 s (topics still choose their own compaction lag).
offsets.topic.num.partitions=10
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
log.cleaner.backoff.ms=2000
log.cleaner.dedupe.buffer.size=16777216
group.initial.rebalance.delay.ms=0
EOF
    done
    cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    local pids=()
    for i in "${!KAFKA_PORTS[@]}"; do
        java -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
            -Dlog4j2.configurationFile="$STATE/kafka-log4j2.properties" \
            -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format --cluster-id="$cluster_id" \
            --config="$STATE/kafka.$i/server.properties" >>"$LOGS/setup.log" 2>&1 &
        pids+=("$!")
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || fail setup "formatting the storage of Kafka node $i failed"
    done
}

write_env_file() {
    local i tmp=$STATE/env.tmp
    {
        echo "FERRY_TEST_ENV=$STATE"
        echo "FERRY_TEST_ENV_SCRIPT=$SCRIPT_PATH"
        local brokers=()
        for i in "${!KAFKA_PORTS[@]}"; do brokers+=("$HOST:${KAFKA_PORTS[$i]}"); done
        echo "FERRY_TEST_KAFKA=$(IFS=,; echo "${brokers[*]}")"
        echo "FERRY_TEST_KAFKA_COUNT=${#KAFKA_PORTS[@]}"
        for i in "${!KAFKA_PORTS[@]}"; do
            echo "FERRY_TEST_KAFKA_$i=$HOST:${KAFKA_PORTS[$i]}"
        done
        echo "FERRY_TEST_RGW_COUNT=${#RGW_PORTS[@]}"
        for i in "${!RGW_PORTS[@]}"; do
            echo "FERRY_TEST_RGW_$i=http://$HOST:${RGW_PORTS[$i]}"
        done
        echo "FERRY_TEST_ACCESS_KEY=$ACCESS_KEY"
        echo "FERRY_TEST_SECRET_KEY=$SECRET_KEY"
        echo "FERRY_TEST_REGION=us-east-1"
    } >"$tmp"
    mv "$tmp" "$STATE/env"
}

# ------------------------------------------------------------------ daemons

start_rgw() {
    local n=$1 port=${RGW_PORTS[$1]}
    running "rgw.$n" && return 0
    # The previous process is gone; make sure nothing else holds the port.
    local deadline=$((SECONDS + 10))
    while port_open "$port"; do
        ((SECONDS < deadline)) || die "port $port (gateway $n) is taken by another process"
        sleep 0.1
    done
    spawn "rgw.$n" radosgw -f -c "$CONF" -n "client.rgw.$n"
}

# Node $1 of the Kafka cluster, with its data; records the length of its log
# before the start in $PIDS/kafka.$1.lines, for wait_kafka.
start_kafka() {
    local n=$1 port=${KAFKA_PORTS[$1]}
    running "kafka.$n" && return 0
    local deadline=$((SECONDS + 10))
    while port_open "$port" || port_open "$((port + 100))"; do
        ((SECONDS < deadline)) || die "port $port or $((port + 100)) (Kafka node $n) is taken by another process"
        sleep 0.1
    done
    { cat "$LOGS/kafka.$n.out" 2>/dev/null || true; } | wc -l >"$PIDS/kafka.$n.lines"
    # Serial GC: on 2 cores, G1's concurrent threads cost more than its
    # pauses save at this heap size.
    spawn "kafka.$n" java -Xms128m -Xmx"$KAFKA_HEAP" -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError \
        -XX:-UsePerfData -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$STATE/kafka-log4j2.properties" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$STATE/kafka.$n/server.properties"
}

wait_kafka() {
    wait_until "kafka.$1" "Kafka node $1 started (broker on port ${KAFKA_PORTS[$1]})" \
        kafka_started "$1" "$(cat "$PIDS/kafka.$1.lines" 2>/dev/null || echo 0)"
}

kafka_comps() {
    local i
    for i in "${!KAFKA_PORTS[@]}"; do echo "kafka.$i"; done
}

wait_rgw() { wait_until "rgw.$1" "radosgw $1 answering on port ${RGW_PORTS[$1]}" rgw_answers "${RGW_PORTS[$1]}"; }

# True if the core (mon, osd, broker) of an environment is running.
core_running() {
    running mon.a && running osd.0 || return 1
    local c
    for c in $(kafka_comps); do running "$c" || return 1; done
}

cmd_start() {
    local t0=$SECONDS i
    if [[ -f $STATE/env ]] && core_running; then
        local started=()
        for i in "${!RGW_PORTS[@]}"; do
            running "rgw.$i" || { start_rgw "$i"; started+=("$i"); }
        done
        for i in "${started[@]}"; do wait_rgw "$i"; done
        log "already running (state dir $STATE)"
        return 0
    fi
    if [[ -e $MARKER ]]; then
        log "found a stale or partial environment in $STATE, stopping it first"
        cmd_stop
    fi

    # Preconditions: binaries and free ports.
    local b
    for b in ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool curl setsid timeout; do
        command -v "$b" >/dev/null || die "'$b' not found; run scripts/install-deps.sh"
    done
    command -v java >/dev/null || die "'java' not found; run scripts/install-deps.sh"
    compgen -G "$KAFKA_LIBS/kafka_2.13-*.jar" >/dev/null ||
        die "Kafka not found in $KAFKA_LIBS; run scripts/install-deps.sh"
    local p
    local controllers=()
    for p in "${KAFKA_PORTS[@]}"; do controllers+=("$((p + 100))"); done
    for p in "$MON_PORT" "${RGW_PORTS[@]}" "${KAFKA_PORTS[@]}" "${controllers[@]}"; do
        port_open "$p" && die "port $HOST:$p is already in use by another process"
    done

    mkdir -p "$STATE"
    [[ -z $(ls -A "$STATE") ]] || die "$STATE exists and is not empty; choose another FERRY_TEST_ENV"
    touch "$MARKER"
    mkdir -p "$LOGS" "$PIDS" "$STATE/run" "$STATE/mon.a" "$STATE/osd.0"
    # If anything below fails, stop what was started; the logs stay in
    # $STATE/logs until `stop`.
    STARTING=1
    write_ceph_conf

    # Kafka has nothing to do with Ceph: start it first so its JVMs warm up
    # in parallel.
    log "starting Kafka ($(basename "$(compgen -G "$KAFKA_LIBS/kafka_2.13-*.jar")" .jar)), ${#KAFKA_PORTS[@]} KRaft nodes on ports ${KAFKA_PORTS[*]}"
    write_kafka_conf
    for i in "${!KAFKA_PORTS[@]}"; do start_kafka "$i"; done

    # Monitor: build a monmap with the v1 address, mkfs (no keyring needed
    # with auth none), run in the foreground (-f) under our own supervision.
    log "starting ceph-mon on v1:$HOST:$MON_PORT"
    local fsid
    fsid=$(awk '$1 == "fsid" {print $3}' "$CONF")
    monmaptool --create --clobber --addv a "[v1:$HOST:$MON_PORT]" --fsid "$fsid" \
        "$STATE/monmap" >>"$LOGS/setup.log" 2>&1 || fail setup "monmaptool failed"
    ceph-mon -c "$CONF" --mkfs -i a --monmap "$STATE/monmap" \
        >>"$LOGS/mon.a.out" 2>&1 || fail mon.a "ceph-mon --mkfs failed"
    spawn mon.a ceph-mon -f -c "$CONF" -i a
    wait_until mon.a "ceph-mon to answer" mon_up

    # OSD: register it with the mon, mkfs the memstore, start it.
    log "starting ceph-osd (memstore, $MEMSTORE_BYTES)"
    local osd_uuid
    osd_uuid=$(cat /proc/sys/kernel/random/uuid)
    ceph_cmd osd new "$osd_uuid" >>"$LOGS/setup.log" 2>&1 || fail setup "'ceph osd new' failed"
    ceph_cmd osd crush add osd.0 1.0 root=default host=localhost \
        >>"$LOGS/setup.log" 2>&1 || fail setup "'ceph osd crush add' failed"
    ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" \
        >>"$LOGS/osd.0.out" 2>&1 || fail osd.0 "ceph-osd --mkfs failed"
    spawn osd.0 ceph-osd -f -c "$CONF" -i 0
    wait_until osd.0 "ceph-osd to be up" osd_up

    # S3 user. radosgw-admin also creates the default realm/zone and its
    # pools, so doing it before the gateways start avoids three gateways
    # racing to create them.
    log "creating S3 user $ACCESS_KEY"
    timeout "$TIMEOUT" radosgw-admin -c "$CONF" user create --uid ferrytest \
        --display-name "ferry tests" --access-key "$ACCESS_KEY" --secret-key "$SECRET_KEY" \
        >>"$LOGS/setup.log" 2>&1 || fail setup "radosgw-admin user create failed"

    log "starting ${#RGW_PORTS[@]} radosgw on ports ${RGW_PORTS[*]}"
    for i in "${!RGW_PORTS[@]}"; do start_rgw "$i"; done
    for i in "${!RGW_PORTS[@]}"; do wait_rgw "$i"; done

    for i in "${!KAFKA_PORTS[@]}"; do wait_kafka "$i"; done

    write_env_file
    STARTING=0
    log "ready in $((SECONDS - t0))s; environment in $STATE/env:"
    cat "$STATE/env"
}

# Stop every process recorded in the state dir (but keep the dir).
stop_all() {
    local rgws=() f
    # Every recorded gateway, even if FERRY_TEST_RGW_PORTS changed since.
    for f in "$PIDS"/rgw.*.pid; do
        [[ -e $f ]] && rgws+=("$(basename "$f" .pid)")
    done
    # Order matters: radosgw hangs on SIGTERM once the OSD/mon are gone (it
    # keeps retrying the cluster), so the gateways go first, then the OSD,
    # then the mon. (ceph-osd exits quickly: fast shutdown skips saving the
    # memstore to disk.)
    # Kafka nodes stop together: a node shutting down waits for the
    # controller quorum, which nodes stopped one at a time would lose.
    # shellcheck disable=SC2046 # one word per node
    stop_comps TERM $(kafka_comps) ${rgws[@]+"${rgws[@]}"}
    stop_comps TERM osd.0
    stop_comps TERM mon.a
    # Anything still recorded (should be nothing) gets the same treatment.
    for f in "$PIDS"/*.pid; do
        [[ -e $f ]] && stop_comps TERM "$(basename "$f" .pid)"
    done
    return 0
}

cmd_stop() {
    if [[ ! -d $STATE ]]; then
        log "nothing to stop ($STATE does not exist)"
        return 0
    fi
    [[ -e $MARKER ]] || die "$STATE is not a test environment (no $MARKER); not touching it"
    log "stopping"
    stop_all
    rm -rf "$STATE"
    log "stopped; removed $STATE"
}

cmd_status() {
    if [[ ! -d $STATE ]]; then
        echo "not running (no $STATE)"
        return 1
    fi
    local c pid ok=0 comps=(mon.a osd.0) i
    for i in "${!RGW_PORTS[@]}"; do comps+=("rgw.$i"); done
    # shellcheck disable=SC2207 # one word per node
    comps+=($(kafka_comps))
    for c in "${comps[@]}"; do
        pid=$(pid_of "$c")
        local where=""
        case $c in
        mon.a) where="v1:$HOST:$MON_PORT" ;;
        rgw.*) where="http://$HOST:${RGW_PORTS[${c#rgw.}]} (HTTP $(http_code "${RGW_PORTS[${c#rgw.}]}"))" ;;
        kafka.*) where="$HOST:${KAFKA_PORTS[${c#kafka.}]} (controller $((KAFKA_PORTS[${c#kafka.}] + 100)))" ;;
        esac
        if is_ours "$pid"; then
            printf '%-8s running  pid %-8s %s\n' "$c" "$pid" "$where"
        else
            printf '%-8s STOPPED  %-12s %s\n' "$c" "" "$where"
            ok=1
        fi
    done
    [[ -f $STATE/env ]] && { echo "--- $STATE/env"; cat "$STATE/env"; }
    return "$ok"
}

cmd_stop_rgw() {
    rgw_index_ok "$1"
    local n=$1 t0=$SECONDS
    [[ -f $CONF ]] || die "environment not started"
    stop_comps "$RGW_STOP_SIGNAL" "rgw.$n"
    wait_until - "port ${RGW_PORTS[$n]} to close" port_closed "${RGW_PORTS[$n]}"
    log "gateway $n (port ${RGW_PORTS[$n]}) stopped in $((SECONDS - t0))s"
}

cmd_start_rgw() {
    rgw_index_ok "$1"
    local n=$1 t0=$SECONDS
    if ! { [[ -f $CONF ]] && running mon.a && running osd.0; }; then
        die "environment not started"
    fi
    start_rgw "$n"
    wait_rgw "$n"
    log "gateway $n (port ${RGW_PORTS[$n]}) answering after $((SECONDS - t0))s"
}

cmd_stop_kafka() {
    kafka_index_ok "$1"
    local n=$1 t0=$SECONDS
    [[ -f $STATE/env ]] || die "environment not started"
    stop_comps "$KAFKA_STOP_SIGNAL" "kafka.$n"
    wait_until - "port ${KAFKA_PORTS[$n]} to close" port_closed "${KAFKA_PORTS[$n]}"
    log "Kafka node $n (port ${KAFKA_PORTS[$n]}) stopped with SIG$KAFKA_STOP_SIGNAL in $((SECONDS - t0))s"
}

cmd_start_kafka() {
    kafka_index_ok "$1"
    local n=$1 t0=$SECONDS
    [[ -f $STATE/env ]] || die "environment not started"
    if running "kafka.$n"; then
        # Nothing to start: its log's last start marker may be long gone.
        wait_until "kafka.$n" "Kafka node $n answering on port ${KAFKA_PORTS[$n]}" \
            port_open "${KAFKA_PORTS[$n]}"
        log "Kafka node $n (port ${KAFKA_PORTS[$n]}) already running"
        return 0
    fi
    start_kafka "$n"
    wait_kafka "$n"
    log "Kafka node $n (port ${KAFKA_PORTS[$n]}) started after $((SECONDS - t0))s"
}

# On exit: if `start` failed half-way, stop what it started (the logs stay in
# $STATE/logs until `stop`); drop the lock file once there is no state dir.
STARTING=0
on_exit() {
    local rc=$?
    if ((STARTING)); then
        stop_all
        log "start failed; stopped what was started; logs kept in $LOGS (removed by: $SCRIPT_PATH stop)"
    fi
    [[ -d $STATE ]] || rm -f "$STATE.lock"
    return "$rc"
}
trap on_exit EXIT

# Serialise concurrent invocations for the same state dir. The lock file sits
# next to the state dir because the state dir itself is removed by `stop`.
mkdir -p "$(dirname "$STATE")"
exec 9>"$STATE.lock"
flock -w "$((TIMEOUT + 60))" 9 || die "another test-env.sh holds $STATE.lock"

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
restart) cmd_stop; cmd_start ;;
status) cmd_status ;;
stop-rgw) cmd_stop_rgw "${2:?usage: $0 stop-rgw N}" ;;
start-rgw) cmd_start_rgw "${2:?usage: $0 start-rgw N}" ;;
stop-kafka) cmd_stop_kafka "${2:?usage: $0 stop-kafka N}" ;;
start-kafka) cmd_start_kafka "${2:?usage: $0 start-kafka N}" ;;
*)
    sed -n '2,/^set -euo/p' "$SCRIPT_PATH" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
