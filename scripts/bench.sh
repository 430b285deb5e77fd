#!/usr/bin/env bash
# bench.sh — ferry and `rclone copy` side by side on the same objects, servers and machine
# (benches/e2e.rs). Installs what it needs (scripts/install-deps.sh, plus Debian's rclone and
# GNU time, and builds the current rclone release with go install), starts the test environment (Ceph radosgw ×3 + a three-node Kafka on 127.0.0.1), runs the
# benchmark in a release build, and stops everything again.
#
#   bash scripts/bench.sh            full run (~20 min); rewrites BENCHMARKS.md
#   bash scripts/bench.sh --quick    small smoke run; prints its tables only
#
# Other arguments go to the benchmark: --reps N; for profiling, --only WORKLOAD (small, medium,
# large, fan-out small, steady), --count N, --ferry-only; FERRY_BENCH_REPLICATION="key = value"
# adds [replication] settings to ferry's configuration, FERRY_BENCH_KEEP_LOG=FILE keeps the last
# ferry log, FERRY_LOG=debug makes it verbose (per-copy timings at
# ferry::stages::replication::fanout=debug).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null && [[ -f $HOME/.cargo/env ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
export FERRY_TEST_ENV=${FERRY_TEST_ENV:-/tmp/ferry-test-env}
# The large fan-out holds 2 GiB at the source and 6 GiB on the targets at once; memstore keeps
# it in RAM (the benchmark has radosgw free deleted objects after every run).
export FERRY_TEST_MEMSTORE_BYTES=${FERRY_TEST_MEMSTORE_BYTES:-16G}

bash scripts/install-deps.sh
missing=()
command -v rclone >/dev/null || missing+=(rclone)
[[ -x /usr/bin/time ]] || missing+=(time)
if ((${#missing[@]})); then
    echo "[bench] apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" ||
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; }
fi

# The current rclone release, built from its Go module (the module proxy is reachable, its
# release binaries are not), cached; Debian's 1.60 stays installed beside it. The benchmark
# compares ferry with this one (FERRY_BENCH_RCLONE).
RCLONE_VERSION=${FERRY_RCLONE_VERSION:-v1.76.0}
rclone_dir=${FERRY_TOOLS:-$HOME/.cache/ferry-tools}/rclone-$RCLONE_VERSION
if [[ ! -x $rclone_dir/rclone ]]; then
    command -v go >/dev/null || {
        echo "[bench] apt-get install golang-go"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends golang-go
    }
    echo "[bench] building rclone $RCLONE_VERSION with go install (a few minutes, once)"
    mkdir -p "$rclone_dir"
    GOBIN=$rclone_dir GOFLAGS=-trimpath go install "github.com/rclone/rclone@$RCLONE_VERSION"
fi
export FERRY_BENCH_RCLONE=$rclone_dir/rclone
echo "[bench] comparing with $("$FERRY_BENCH_RCLONE" version | head -n 1) ($FERRY_BENCH_RCLONE)"

quick=false
for a in "$@"; do [[ $a == --quick ]] && quick=true; done

trap 'bash scripts/test-env.sh stop' EXIT
bash scripts/test-env.sh stop
bash scripts/test-env.sh start
set -a
# shellcheck disable=SC1091
. "$FERRY_TEST_ENV/env"
set +a

tables=$(mktemp)
extra=()
if ! $quick; then
    mkdir -p docs/benchmarks
    extra=(--svg docs/benchmarks/steady-lag.svg)
fi
cargo bench --locked --bench e2e -- --out "$tables" ${extra[@]+"${extra[@]}"} "$@"
if ! $quick; then
    {
        echo "# Benchmarks"
        echo
        echo "ferry and \`rclone copy\` on the same objects, servers and machine, in one run,"
        echo "alternating; the median of the repetitions. Reproduce with:"
        echo
        echo '```sh'
        echo "bash scripts/bench.sh"
        echo '```'
        echo
        echo "Measured $(date -u +%Y-%m-%d). Times run from the tool's start to every object"
        echo "verified on every target (ferry: every entry COMPLETED, from its metrics; rclone:"
        echo "its exit). Every run's targets are listed and counted afterwards. S3 requests are"
        echo "counted by the servers: radosgw's access-log lines for the run's buckets. The"
        echo "upload-only limit reads local files from this machine's shared disk: it bounds small"
        echo "objects, but for medium and large ones it is below what both tools reach from"
        echo "radosgw's memory. ferry's numbers come from its default settings."
        echo
        cat "$tables"
        # Sections measured by other benchmarks (e.g. benches/history.rs), kept across runs.
        for section in docs/benchmarks/*.md; do
            [[ -f $section ]] || continue
            echo
            cat "$section"
        done
    } >BENCHMARKS.md
    echo "[bench] wrote BENCHMARKS.md"
fi
rm -f "$tables"
