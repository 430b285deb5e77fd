#!/usr/bin/env bash
# install-deps.sh — install what ferry's integration tests need on a fresh
# Debian 12 machine (run as root). Idempotent: anything already present is
# skipped, so it is cheap to run before every test run.
#
#   * Debian packages: ceph-mon, ceph-osd, radosgw, ceph-common (single-node
#     Ceph + S3 gateway), curl (readiness probes);
#   * tansu, a Kafka-compatible broker, built with cargo (with the fixes in
#     scripts/tansu/ applied) into
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
# tansu is built from its crates.io sources with the fixes in scripts/tansu/
# applied (each patch file says what it fixes; without the first, a consumer
# resuming from an offset inside a record batch silently skips the rest of that
# batch, which loses messages across restarts). A stamp file names the patch
# set, so a cached unpatched or older build is rebuilt.
#
# Two concurrent builds would just waste 10 minutes of both cores, so serialise
# our own runs with a lock.
mkdir -p "$FERRY_TOOLS"
exec 9>"$FERRY_TOOLS/.install-deps.lock"
flock 9

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
patches=("$here"/tansu/*.patch)
patch_set=$(cat "${patches[@]}" | sha256sum | cut -c1-12)
stamp=$FERRY_TOOLS/bin/.tansu-$TANSU_VERSION-$patch_set

if [[ -x $FERRY_TOOLS/bin/tansu && -f $stamp ]]; then
    log "tansu already installed ($FERRY_TOOLS/bin/tansu, patch set $patch_set)"
else
    if ! command -v cargo >/dev/null && [[ -f $HOME/.cargo/env ]]; then
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null || { log "ERROR: cargo not found (needed to build tansu)"; exit 1; }
    if ! command -v patch >/dev/null; then
        log "apt-get install patch"
        "${SUDO[@]}" apt-get install -y -q --no-install-recommends patch
    fi
    log "building tansu $TANSU_VERSION (patch set $patch_set) into $FERRY_TOOLS (takes ~10 minutes)"
    work=$FERRY_TOOLS/build
    rm -rf "$work"
    mkdir -p "$work/fetch/src"
    # cargo downloads the two crates (and the dependencies the build needs anyway) from
    # crates.io; their sources are then unpacked from cargo's cache.
    printf '%s\n' '[package]' 'name = "fetch-tansu"' 'version = "0.0.0"' 'edition = "2021"' '' \
        '[dependencies]' "tansu = { version = \"=$TANSU_VERSION\", features = [\"dynostore\"] }" \
        "tansu-storage = \"=$TANSU_VERSION\"" >"$work/fetch/Cargo.toml"
    echo 'fn main() {}' >"$work/fetch/src/main.rs"
    (cd "$work/fetch" && cargo fetch -q)
    cache=${CARGO_HOME:-$HOME/.cargo}/registry/cache
    for crate in tansu tansu-storage; do
        file=$(find "$cache" -name "$crate-$TANSU_VERSION.crate" | head -n 1)
        [[ -n $file ]] || { log "ERROR: $crate-$TANSU_VERSION.crate not found in $cache"; exit 1; }
        tar -xzf "$file" -C "$work"
    done
    for p in "${patches[@]}"; do
        log "applying $(basename "$p")"
        patch -s -p1 -d "$work/tansu-storage-$TANSU_VERSION" <"$p"
    done
    printf '\n[patch.crates-io]\ntansu-storage = { path = "../tansu-storage-%s" }\n' \
        "$TANSU_VERSION" >>"$work/tansu-$TANSU_VERSION/Cargo.toml"
    # The crate's own Cargo.lock keeps every other dependency at its released version.
    (cd "$work/tansu-$TANSU_VERSION" &&
        CARGO_TARGET_DIR=$work/target cargo build -q --release --features dynostore --bin tansu)
    mkdir -p "$FERRY_TOOLS/bin"
    install -m 0755 "$work/target/release/tansu" "$FERRY_TOOLS/bin/tansu"
    rm -f "$FERRY_TOOLS"/bin/.tansu-*
    touch "$stamp"
    rm -rf "$work"
    log "tansu installed ($FERRY_TOOLS/bin/tansu)"
fi
