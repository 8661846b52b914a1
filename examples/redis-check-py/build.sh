#!/usr/bin/env bash
# Builds target/redis_check.wasm (world ssm-tether:plugin/health-check) with componentize-py.
#
#   ./build.sh            # rebuilds only when app.py, resp.py, ../../wit or the tool changed
#   ./build.sh --force    # rebuilds anyway
#
# Needs python3 >= 3.10 with venv. pip reaches PyPI once (into .venv); later runs are offline.
# Why skip unchanged builds: componentize-py output is not byte-reproducible (its snapshot of
# the interpreter differs per run, componentize-py issue #247), and the runtime caches the
# compiled plugin by the .wasm's sha256, so every rebuild costs a fresh compile (~20-30 s in a
# debug runtime) and another ~35 MB in ~/.cache/ssm-tether/plugins.
set -euo pipefail
cd "$(dirname "$0")"

COMPONENTIZE_PY_VERSION=0.25.1
VENV=.venv
WIT=../../wit
OUT=target/redis_check.wasm
STAMP=target/redis_check.inputs.sha256

if ! "$VENV/bin/componentize-py" --version 2>/dev/null | grep -qx "componentize-py $COMPONENTIZE_PY_VERSION"; then
    echo "build.sh: installing componentize-py $COMPONENTIZE_PY_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"
fi

mkdir -p target
inputs=$( { echo "componentize-py $COMPONENTIZE_PY_VERSION"; sha256sum app.py resp.py "$WIT"/*.wit; } | sha256sum | cut -d' ' -f1)
if [ "${1:-}" != "--force" ] && [ -f "$OUT" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$inputs" ]; then
    echo "build.sh: $OUT is up to date ($(stat -c %s "$OUT") bytes; --force rebuilds)"
    exit 0
fi

# Only app.py and resp.py go in: -p points at a staging folder, not at this folder (which
# holds .venv and the tests). No --stub-wasi: the check reads the monotonic clock (WASI),
# which the runtime provides; --stub-wasi would make time.monotonic() trap.
STAGE=target/src
rm -rf "$STAGE" "$STAMP"
mkdir -p "$STAGE"
cp app.py resp.py "$STAGE/"
"$VENV/bin/componentize-py" -d "$WIT" -w health-check componentize app \
    -p "$STAGE" -o "$OUT"
echo "$inputs" > "$STAMP"
echo "build.sh: built $OUT ($(stat -c %s "$OUT") bytes)"
