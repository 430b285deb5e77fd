#!/usr/bin/env bash
# install-deps.sh — install what ferry's integration tests need on a fresh
# Debian 12 machine (run as root). Idempotent: anything already present is
# skipped, so it is cheap to run before every test run.
#
#   * Debian packages: ceph-mon, ceph-osd, radosgw, ceph-common (single-node
#     Ceph + S3 gateway), curl (readiness probes);
#   * Java 17 and Maven (Debian packages, when missing);
#   * Apache Kafka, fetched from Maven Central with scripts/kafka/pom.xml into
#     $FERRY_TOOLS/kafka/libs (FERRY_TOOLS defaults to $HOME/.cache/ferry-tools);
#     ~55 MiB, once.
#
# Environment: FERRY_TOOLS (see above).
set -euo pipefail

FERRY_TOOLS=${FERRY_TOOLS:-$HOME/.cache/ferry-tools}

log() { printf '[install-deps] %s\n' "$*"; }

SUDO=()
if ((EUID != 0)); then
    command -v sudo >/dev/null || { log "ERROR: not root and no sudo"; exit 1; }
    SUDO=(sudo)
fi

# ---- Debian packages --------------------------------------------------------
pkgs=()
command -v radosgw >/dev/null || pkgs+=(ceph-mon ceph-osd radosgw ceph-common)
command -v curl >/dev/null || pkgs+=(curl)
# libfaketime: tests/ingest.rs runs ferry with its clock an hour behind.
command -v faketime >/dev/null || pkgs+=(faketime)
# rclone: tests/ingest.rs writes to the endpoint with it, as users do.
command -v rclone >/dev/null || pkgs+=(rclone)

apt_update() { log "apt-get update"; "${SUDO[@]}" apt-get update -q; }
apt_install() { "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$@"; }

if ((${#pkgs[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    # apt-get update only if needed: when apt doesn't know the packages (a
    # fresh machine has no package lists), or when the install fails, e.g.
    # because old lists name versions the mirror no longer has.
    if ! apt-cache show "${pkgs[@]}" >/dev/null 2>&1; then
        apt_update
    fi
    log "apt-get install ${pkgs[*]}"
    if ! apt_install "${pkgs[@]}"; then
        log "install failed; refreshing package lists and retrying"
        apt_update
        apt_install "${pkgs[@]}"
    fi
else
    log "ceph/radosgw, curl, faketime and rclone already installed ($(command -v radosgw))"
fi

# ---- Apache Kafka -----------------------------------------------------------
# Kafka is fetched from Maven Central by Maven (scripts/kafka/pom.xml pins the
# release, the same as docker-compose.yml): its jars and their runtime
# dependencies are copied into $FERRY_TOOLS/kafka/libs, and test-env.sh runs
# them with `java` (no Kafka tarball can be downloaded here). A stamp names the
# pom's hash, so a changed pom is fetched again. Serialised with a lock: two
# concurrent fetches would write into the same directory.
mkdir -p "$FERRY_TOOLS"
exec 9>"$FERRY_TOOLS/.install-deps.lock"
flock 9

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pom=$here/kafka/pom.xml
kafka_dir=$FERRY_TOOLS/kafka
stamp=$kafka_dir/.pom-$(sha256sum "$pom" | cut -c1-12)

if [[ -f $stamp ]] && compgen -G "$kafka_dir/libs/kafka_2.13-*.jar" >/dev/null; then
    log "Kafka already installed ($(basename "$(compgen -G "$kafka_dir/libs/kafka_2.13-*.jar")" .jar))"
else
    jdk=()
    command -v java >/dev/null || jdk+=(openjdk-17-jre-headless)
    command -v mvn >/dev/null || jdk+=(maven)
    if ((${#jdk[@]})); then
        log "apt-get install ${jdk[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt_install "${jdk[@]}" || { apt_update; apt_install "${jdk[@]}"; }
    fi
    log "fetching Kafka with Maven ($pom)"
    rm -rf "$kafka_dir.tmp"
    mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$kafka_dir.tmp/libs"
    rm -rf "$kafka_dir"
    mv "$kafka_dir.tmp" "$kafka_dir"
    touch "$stamp"
    log "Kafka installed: $(basename "$(compgen -G "$kafka_dir/libs/kafka_2.13-*.jar")" .jar) ($(du -sh "$kafka_dir" | cut -f1))"
fi
# The tansu build of earlier versions of this script is not used any more.
rm -rf "$FERRY_TOOLS/bin/tansu" "$FERRY_TOOLS"/bin/.tansu-*
