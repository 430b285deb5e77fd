#!/usr/bin/env bash
# demo.sh — ferry's main job on this machine, end to end, in one command:
#   1. installs and starts the local broker (Apache Kafka, three KRaft nodes) and S3 servers (Ceph radosgw ×3),
#   2. creates the buckets of config/radosgw.toml: a versioned transient "inbox" and two targets,
#   3. starts `ferry run --config config/radosgw.toml`,
#   4. writes a few objects into the inbox with curl (SigV4),
#   5. shows them arrive in site-a and site-b and leave the inbox,
#   6. stops ferry (SIGTERM) and the servers.
# Set FERRY_DEMO_KEEP=1 to leave the servers and ferry running afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export FERRY_TEST_ENV=${FERRY_TEST_ENV:-/tmp/ferry-test-env}
bash scripts/install-deps.sh
bash scripts/test-env.sh start
set -a
# shellcheck disable=SC1091
. "$FERRY_TEST_ENV/env"
set +a

# The dev profile compiles dependencies optimised (Cargo.toml), so this build is shared with
# the tests and fast enough for the demo.
cargo build --locked
FERRY=target/debug/ferry

s3() { # s3 METHOD GATEWAY PATH [curl args...]
    local method=$1 gateway=$2 path=$3
    shift 3
    curl -sS --fail-with-body -X "$method" --aws-sigv4 "aws:amz:us-east-1:s3" \
        --user "$FERRY_TEST_ACCESS_KEY:$FERRY_TEST_SECRET_KEY" \
        -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$gateway/$path" "$@"
}
count_versions() { # count_versions GATEWAY BUCKET: object versions in the bucket
    s3 GET "$1" "$2?versions=" | { grep -o '<Version>' || true; } | wc -l
}

echo "== creating buckets (inbox is versioned and transient; site-a and site-b are versioned targets)"
for pair in "$FERRY_TEST_RGW_0 inbox" "$FERRY_TEST_RGW_1 site-a" "$FERRY_TEST_RGW_2 site-b"; do
    read -r gw bucket <<<"$pair"
    s3 PUT "$gw" "$bucket" -o /dev/null || true
    s3 PUT "$gw" "$bucket?versioning=" -o /dev/null \
        -d '<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Status>Enabled</Status></VersioningConfiguration>'
done

echo "== starting ferry (log: target/demo-ferry.log)"
"$FERRY" check-config --config config/radosgw.toml
"$FERRY" --log-format json run --config config/radosgw.toml >target/demo-ferry.log 2>&1 &
ferry_pid=$!
cleanup() {
    if [[ -z ${FERRY_DEMO_KEEP:-} ]]; then
        kill -TERM "$ferry_pid" 2>/dev/null && wait "$ferry_pid" || true
        bash scripts/test-env.sh stop
    fi
}
trap cleanup EXIT

echo "== writing 5 objects into the inbox"
for i in 1 2 3 4 5; do
    head -c $((i * 100000)) /dev/urandom >"target/demo-object-$i"
    s3 PUT "$FERRY_TEST_RGW_0" "inbox/demo/object-$i.bin" -T "target/demo-object-$i" \
        -H "Content-Type: application/octet-stream" -H "x-amz-meta-written-by: demo" -o /dev/null
    rm -f "target/demo-object-$i"
done

echo "== watching: versions in inbox / site-a / site-b"
for _ in $(seq 1 60); do
    inbox=$(count_versions "$FERRY_TEST_RGW_0" inbox)
    a=$(count_versions "$FERRY_TEST_RGW_1" site-a)
    b=$(count_versions "$FERRY_TEST_RGW_2" site-b)
    echo "   inbox=$inbox site-a=$a site-b=$b"
    if ((inbox == 0 && a >= 5 && b >= 5)); then
        echo "== done: every object is on both sites, verified, and the inbox is empty"
        s3 GET "$FERRY_TEST_RGW_1" "site-a?list-type=2" | { grep -o '<Key>[^<]*</Key>' || true; } | sed 's/^/   site-a: /'
        exit 0
    fi
    sleep 1
done
echo "== replication did not finish in 60 s; see target/demo-ferry.log" >&2
exit 1
