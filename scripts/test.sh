#!/usr/bin/env bash
# test.sh — run ferry's test suite against real servers: installs the
# dependencies (scripts/install-deps.sh), starts the test environment
# (scripts/test-env.sh: Ceph + 3 radosgw + 3 Kafka nodes on 127.0.0.1), exports the
# FERRY_TEST_* variables from its env file, runs
#     cargo test --locked -- --test-threads=1
# and always stops the environment again. Exits with cargo's exit code.
#
# Arguments are passed to cargo test: those before a `--` go to cargo, those
# after it go to the test binaries (after --test-threads=1), e.g.
#     bash scripts/test.sh --test replication -- --nocapture
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null && [[ -f $HOME/.cargo/env ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi

export FERRY_TEST_ENV=${FERRY_TEST_ENV:-/tmp/ferry-test-env}

# Split our arguments at the first `--`.
cargo_args=() test_args=()
while (($#)); do
    if [[ $1 == -- ]]; then
        shift
        test_args=("$@")
        break
    fi
    cargo_args+=("$1")
    shift
done

bash scripts/install-deps.sh

cargo_pid=
# Runs however we leave (normal exit, error or signal): stop the tests if
# they still run, then the environment; keep the exit code.
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT
    if [[ -n $cargo_pid ]] && kill -0 "$cargo_pid" 2>/dev/null; then
        kill -TERM -- "-$cargo_pid" 2>/dev/null || true
        wait "$cargo_pid" 2>/dev/null || true
    fi
    bash scripts/test-env.sh stop || echo "test.sh: WARNING: stopping the test environment failed" >&2
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Begin from a clean slate, even if an earlier run left servers behind.
bash scripts/test-env.sh stop
bash scripts/test-env.sh start

set -a
# shellcheck disable=SC1091
. "$FERRY_TEST_ENV/env"
set +a

# cargo runs in the background, in its own process group, and we `wait` for
# it: bash runs signal traps only between foreground commands, so this way a
# SIGINT/SIGTERM stops the tests and the servers at once.
setsid cargo test --locked ${cargo_args[@]+"${cargo_args[@]}"} \
    -- --test-threads=1 ${test_args[@]+"${test_args[@]}"} &
cargo_pid=$!
rc=0
wait "$cargo_pid" || rc=$?
cargo_pid=
exit "$rc"
