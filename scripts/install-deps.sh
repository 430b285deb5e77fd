#!/usr/bin/env bash
# install-deps.sh — install what ferry's integration tests need on a fresh
# Debian 12 machine (run as root). Idempotent: anything already present is
# skipped, so it is cheap to run before every test run.
#
#   * Debian packages: ceph-mon, ceph-osd, radosgw, ceph-common (single-node
#     Ceph + S3 gateway), curl (readiness probes);
#   * tansu, a Kafka-compatible broker, built with cargo into
#     $FERRY_TOOLS/bin (FERRY_TOOLS defaults to $HOME/.cache/ferry-tools).
#     Building it takes ~10 minutes on 2 cores, once.
#
# Environment: FERRY_TOOLS (see above), FERRY_TANSU_VERSION (default 0.6.0,
# the version scripts/test-env.sh was written against).
set -euo pipefail

FERRY_TOOLS=${FERRY_TOOLS:-$HOME/.cache/ferry-tools}
TANSU_VERSION=${FERRY_TANSU_VERSION:-0.6.0}

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
    log "ceph/radosgw and curl already installed ($(command -v radosgw))"
fi

# ---- tansu ------------------------------------------------------------------
# Two concurrent builds would just waste 10 minutes of both cores, so
# serialise our own runs with a lock, and also wait for a `cargo install
# tansu` started some other way (e.g. by hand) to finish first.
mkdir -p "$FERRY_TOOLS"
exec 9>"$FERRY_TOOLS/.install-deps.lock"
flock 9
waited=0
while [[ ! -x $FERRY_TOOLS/bin/tansu ]] && pgrep -f '(^|/)cargo install tansu' >/dev/null; do
    if ((waited == 0)); then log "another 'cargo install tansu' is running; waiting for it"; fi
    if ((waited >= 3600)); then log "ERROR: gave up waiting after ${waited}s"; exit 1; fi
    sleep 10
    waited=$((waited + 10))
done

if [[ -x $FERRY_TOOLS/bin/tansu ]]; then
    log "tansu already installed ($FERRY_TOOLS/bin/tansu)"
else
    if ! command -v cargo >/dev/null && [[ -f $HOME/.cargo/env ]]; then
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null || { log "ERROR: cargo not found (needed to build tansu)"; exit 1; }
    log "building tansu $TANSU_VERSION into $FERRY_TOOLS (takes ~10 minutes)"
    cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore --root "$FERRY_TOOLS"
    log "tansu installed ($FERRY_TOOLS/bin/tansu)"
fi
