#!/usr/bin/env bash
# fuzz.sh — runs each cargo-fuzz target in fuzz/ for a fixed time: ferry's parsers of
# untrusted input (messages of every topic, S3 event notifications, fs object keys, the
# configuration file, fs sidecars; see src/fuzzing.rs), each starting from its seed corpus in
# fuzz/corpus/<target>. Installs cargo-fuzz (into ~/.cargo/bin) if it is missing; needs the
# nightly toolchain (libFuzzer and AddressSanitizer). The targets are built once, then run one
# after the other. Inputs the fuzzer adds to the corpus go to a temporary directory, so the
# repository stays as it was; a crashing input is kept in fuzz/artifacts/<target>/ (ignored by
# git), and the script exits non-zero naming the target and that file, after running the rest.
# Reproduce a crash with: cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-…
#
#   bash scripts/fuzz.sh                                  every target, 60 s each
#   FERRY_FUZZ_SECONDS=20 bash scripts/fuzz.sh key config  these targets, 20 s each
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null && [[ -f $HOME/.cargo/env ]]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
seconds=${FERRY_FUZZ_SECONDS:-60}
# The build machine is shared: two jobs at most.
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is needed (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if ((${#targets[@]} == 0)); then
    targets=(message s3_event key config sidecar)
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/ferry-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

SECONDS=0
cargo +nightly fuzz build
echo "fuzz.sh: built in ${SECONDS}s"

failed=()
for target in "${targets[@]}"; do
    [[ -d fuzz/corpus/$target ]] || { echo "fuzz.sh: no target $target" >&2; exit 2; }
    mkdir -p "$scratch/$target" "fuzz/artifacts/$target"
    touch "$scratch/$target.start"
    log=$scratch/$target.log
    SECONDS=0
    # New inputs go to the first directory (scratch); the seeds are only read.
    if cargo +nightly fuzz run "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=30 >"$log" 2>&1; then
        echo "fuzz.sh: $target: $(grep -E '^Done [0-9]+ runs' "$log" | tail -1 || echo done), no crash (${SECONDS}s)"
    elif grep -q '^Error: failed to build fuzz script' "$log"; then
        # `fuzz run` builds again; the sources changed since `fuzz build` and do not compile.
        tail -n 40 "$log"
        echo "fuzz.sh: $target: the build failed (not a crash)" >&2
        exit 2
    else
        tail -n 60 "$log"
        artifact=$(find "fuzz/artifacts/$target" -type f -newer "$scratch/$target.start" | head -1)
        echo "fuzz.sh: $target FAILED; input: ${artifact:-none written (see the log above)}" >&2
        failed+=("$target")
    fi
done

if ((${#failed[@]} > 0)); then
    echo "fuzz.sh: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, ${seconds}s each: no crash"
