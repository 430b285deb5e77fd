#!/usr/bin/env bash
# The soak run: three ferry instances, a steady arrival rate, a target stopped, an instance
# killed and a Kafka node SIGKILLed in turn every few minutes, then every invariant checked and the figures printed
# (tests/soak.rs). This runs it for an hour by default; FERRY_SOAK_SECONDS=100 is its short mode.
#
#   bash scripts/soak.sh                 # 60 minutes, 10 versions/s, a fault every 4 minutes
#   FERRY_SOAK_SECONDS=600 bash scripts/soak.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export FERRY_SOAK_SECONDS=${FERRY_SOAK_SECONDS:-3600}
export FERRY_SOAK_RATE=${FERRY_SOAK_RATE:-10}
export FERRY_SOAK_FAULT_EVERY=${FERRY_SOAK_FAULT_EVERY:-240}
echo "[soak] ${FERRY_SOAK_SECONDS} s at ${FERRY_SOAK_RATE} versions/s, a fault every ${FERRY_SOAK_FAULT_EVERY} s"
exec bash scripts/test.sh --test soak -- --nocapture
