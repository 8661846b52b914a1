#!/usr/bin/env bash
# Unit tests, build, then end-to-end runs of the component in the ssm-tether runtime
# against a fake Redis (fake_redis.py). Exits non-zero on the first mismatch.
#
#   ./test.sh                        # runtime: <repo>/target/debug/ssm-tether
#   SSM_TETHER=/path/to/ssm-tether ./test.sh
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
BIN="${SSM_TETHER:-$REPO/target/debug/ssm-tether}"
case "$BIN" in /*) ;; *) BIN="$(pwd)/$BIN" ;; esac
cd "$HERE"
WASM=target/redis_check.wasm
CALL_TIMEOUT=20s   # wall-clock limit of each call; compiling the component is not under it

fail() { echo "test.sh: FAIL: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f s", b - a }'; }
TIMINGS=()

[ -x "$BIN" ] || fail "no ssm-tether binary at $BIN (build it with 'cargo build' in $REPO, or set SSM_TETHER)"

echo "== unit tests"
if ! output=$(python3 -m unittest test_app 2>&1); then
    echo "$output" >&2
    fail "unit tests"
fi
echo "$output" | tail -n 3 | sed 's/^/    /'

echo "== build"
t=$(now)
./build.sh || fail "build.sh"
TIMINGS+=("build.sh: $(since "$t")")
SIZE=$(stat -c %s "$WASM")

# ---- end to end against fake Redis servers (shared with the other language) -------------
FAKE_REDIS=(python3 fake_redis.py)
# shellcheck source=../redis-check-e2e.sh
source "$HERE/../redis-check-e2e.sh"
