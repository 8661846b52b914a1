# The end-to-end half of examples/redis-check-{py,js}/test.sh, which differ only in how
# their fake Redis starts: sourced by both after they have built the component, with
#   FAKE_REDIS   the command (an array) that starts a fake Redis: ARGS… are appended and it
#                prints its port on its first line of stdout,
# and BIN, WASM, CALL_TIMEOUT, SIZE, TIMINGS and the fail/now/since helpers already set.
# One copy of the cases, so the two languages are held to exactly the same verdicts.

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
    "${FAKE_REDIS[@]}" "$@" >"$out" &
    SERVER_PID=$!
    for _ in $(seq 50); do
        PORT=$(head -n 1 "$out")
        [ -n "$PORT" ] && break
        sleep 0.1
    done
    rm -f "$out"
    [ -n "$PORT" ] || fail "${FAKE_REDIS[*]} $* did not start"
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
