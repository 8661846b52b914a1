#!/usr/bin/env bash
# Builds target/redis_check.wasm (world ssm-tether:plugin/health-check) with componentize-js.
#
#   ./build.sh            # rebuilds only when app.js, resp.js, ../../wit or the tools changed
#   ./build.sh --force    # rebuilds anyway
#
# Needs node >= 20 and npm. `npm ci` reaches the npm registry once (into node_modules/, the
# versions pinned in package.json and package-lock.json); later runs are offline.
# Why skip unchanged builds: componentize-js output is not byte-reproducible (two builds of
# the same sources differ), and the runtime caches the compiled plugin by the .wasm's sha256,
# so every rebuild costs a fresh compile (~20-30 s in a debug runtime) and another cache entry.
set -euo pipefail
cd "$(dirname "$0")"

WIT=../../wit
OUT=target/redis_check.wasm
STAMP=target/redis_check.inputs.sha256
COMPONENTIZE=node_modules/.bin/componentize-js

# node_modules must hold the versions package.json pins (package-lock.json pins the rest);
# `npm ci` deletes node_modules and installs exactly the lock file.
installed() { node -p "require('./node_modules/$1/package.json').version" 2>/dev/null || true; }
pinned() { node -p "require('./package.json').devDependencies['$1']"; }
for tool in @bytecodealliance/componentize-js @bytecodealliance/jco; do
    if [ "$(installed "$tool")" != "$(pinned "$tool")" ]; then
        echo "build.sh: installing the pinned tools into node_modules (npm ci)" >&2
        npm ci --no-audit --no-fund --loglevel=error
        break
    fi
done

mkdir -p target
inputs=$( { echo "componentize-js $(installed @bytecodealliance/componentize-js)"; sha256sum app.js resp.js package-lock.json "$WIT"/*.wit; } | sha256sum | cut -d' ' -f1)
if [ "${1:-}" != "--force" ] && [ -f "$OUT" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$inputs" ]; then
    echo "build.sh: $OUT is up to date ($(stat -c %s "$OUT") bytes; --force rebuilds)"
    exit 0
fi

# componentize-js directly, not `jco componentize` (jco 1.35 fails here with "failed to get
# path metadata" reading the WIT folder); it is the same componentize-js jco 1.35 runs.
# -d http fetch-event: leave out StarlingMonkey's fetch()/HTTP support, so the component
# does not import wasi:http, which the runtime's sandbox does not provide (it links WASI 0.2
# cli, clocks, filesystem, random, io and sockets, all deny-all, but not wasi:http).
# Clocks stay: the budget arithmetic reads performance.now() (wasi:clocks/monotonic-clock).
rm -f "$STAMP"
"$COMPONENTIZE" app.js --wit "$WIT" --world-name health-check -d http fetch-event -o "$OUT"
echo "$inputs" > "$STAMP"
echo "build.sh: built $OUT ($(stat -c %s "$OUT") bytes)"
