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

# ---- fake Redis servers ------------------------------------------------------------------
SERVER_PID=""
PORT=""
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap stop_server EXIT
start_server() { # args for fake_redis.py; sets SERVER_PID and PORT
    local out
    out=$(mktemp)
    node fake_redis.js "$@" >"$out" &
    SERVER_PID=$!
    for _ in $(seq 50); do
        PORT=$(head -n 1 "$out")
        [ -n "$PORT" ] && break
        sleep 0.1
    done
    rm -f "$out"
    [ -n "$PORT" ] || fail "fake_redis.js $* did not start"
}

# probe NAME EXPECTED [plugin test args...]: runs one check, asserts the answer line.
probe() {
    local name=$1 expected=$2 output t
    shift 2
    t=$(now)
    if ! output=$("$BIN" plugin test "$WASM" --event probe --timeout "$CALL_TIMEOUT" "$@" 2>&1); then
        echo "$output" >&2
        fail "$name: ssm-tether plugin test exited non-zero"
    fi
    TIMINGS+=("plugin test ($name): $(since "$t")")
    echo "$output" | sed 's/^/    /'
    echo "$output" | grep -q "^answer: *$expected" ||
        fail "$name: expected 'answer:   $expected', got: $(echo "$output" | grep '^answer:' || echo "$output")"
    echo "  ok: $name"
}

# ---- end to end ----------------------------------------------------------------------------
echo "== plugin inspect (compiles the component unless ~/.cache/ssm-tether/plugins has it)"
t=$(now)
output=$("$BIN" plugin inspect "$WASM" 2>&1) || { echo "$output" >&2; fail "plugin inspect exited non-zero"; }
TIMINGS+=("plugin inspect: $(since "$t")")
echo "$output" | sed 's/^/    /'
echo "$output" | grep -q "^world: *ssm-tether:plugin/health-check@" ||
    fail "plugin inspect: expected world ssm-tether:plugin/health-check"
echo "  ok: world health-check"

echo "== plugin test"
start_server
probe "PING -> +PONG" "Healthy" --connect "127.0.0.1:$PORT"
probe "PING -> +PONG (again)" "Healthy" --connect "127.0.0.1:$PORT"
DEAD_PORT=$PORT
stop_server
probe "dead port" "Unhealthy" --connect "127.0.0.1:$DEAD_PORT"

start_server --reply "-NOAUTH Authentication required."
probe "PING -> -NOAUTH" "Degraded" --connect "127.0.0.1:$PORT"
stop_server

start_server --reply "HTTP/1.1 400 Bad Request"
probe "PING -> not Redis" 'Unhealthy("not a Redis reply to PING: \\"HTTP/1.1 400 Bad Request' \
    --connect "127.0.0.1:$PORT"
stop_server

start_server --password s3cret-pw
probe "AUTH +OK, PING +PONG" "Healthy" --connect "127.0.0.1:$PORT" --config '{"password": "s3cret-pw"}'
probe "AUTH -WRONGPASS" 'Degraded("Redis rejected AUTH: -WRONGPASS' \
    --connect "127.0.0.1:$PORT" --config '{"password": "wrong-pw"}'
stop_server

probe "tunnel-tcp not granted" 'Degraded("tunnel-tcp not granted'

echo "== config rejected"
if output=$("$BIN" plugin test "$WASM" --event probe --config '{"pasword": "hunter2"}' 2>&1); then
    fail "unknown config key: plugin test succeeded: $output"
fi
echo "    $output"
echo "$output" | grep -q 'unknown config key `pasword`' || fail "unknown config key: error does not name it"
echo "$output" | grep -q hunter2 && fail "unknown config key: the error echoes the value"
echo "  ok: unknown key rejected, named, value not echoed"

echo "== all passed"
echo "component: $WASM, $SIZE bytes"
printf '  %s\n' "${TIMINGS[@]}"
