#!/usr/bin/env bash
# Unit tests, build, then end-to-end runs of the component in the ssm-tether runtime
# against a fake Redis (fake_redis.js). Exits non-zero on the first mismatch. Needs node >= 20
# and npm (build.sh installs the pinned componentize-js and jco into node_modules/).
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
# The default memory cap (32 MiB) is enough for this component; see README.md.

fail() { echo "test.sh: FAIL: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f s", b - a }'; }
TIMINGS=()

[ -x "$BIN" ] || fail "no ssm-tether binary at $BIN (build it with 'cargo build' in $REPO, or set SSM_TETHER)"

echo "== unit tests"
if ! output=$(node --test test_resp.js 2>&1); then
    echo "$output" >&2
    fail "unit tests"
fi
echo "$output" | grep -E "^# (tests|pass|fail) " | sed "s/^/    /"

echo "== build"
t=$(now)
./build.sh || fail "build.sh"
TIMINGS+=("build.sh: $(since "$t")")
SIZE=$(stat -c %s "$WASM")

echo "== imports (jco wit): no wasi:http, which the runtime does not link"
imports=$(node_modules/.bin/jco wit "$WASM" | grep '^ *import ') || fail "jco wit $WASM"
echo "$imports" | sed 's/^ */    /'
if echo "$imports" | grep -q 'wasi:http'; then
    fail "the component imports wasi:http (built without -d http fetch-event?)"
fi
echo "  ok: no wasi:http import"

# ---- end to end against fake Redis servers (shared with the other language) -------------
FAKE_REDIS=(node fake_redis.js)
# shellcheck source=../redis-check-e2e.sh
source "$HERE/../redis-check-e2e.sh"
