#!/usr/bin/env bash
# CI staleness check: the committed components must be exactly what the sources build.
#
#   plugins/check-dist.sh     # from anywhere inside the repository
#
# 1. Rebuilds the default plugins (dist/) and the runtime's test fixtures
#    (runtime/tests/plugins/) with build.sh, then fails if git sees any difference there: a
#    changed, deleted or new (uncommitted) file means a source changed without rebuilding, or
#    the build is not reproducible with this toolchain and Cargo.lock.
# 2. Builds the example plugin examples/redis-check for wasm32-wasip2 from its committed
#    Cargo.lock and runs its native tests, so the documented example keeps compiling against
#    ../wit.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(git -C "$here" rev-parse --show-toplevel)"
cd "$repo"

plugins/build.sh

stale="$(git status --porcelain --untracked-files=all -- plugins/dist runtime/tests/plugins)"
if [[ -n "$stale" ]]; then
    echo "error: committed plugin components are stale (rebuild with plugins/build.sh and commit):" >&2
    while IFS= read -r line; do
        # `XY PATH`: XY is git's two-letter status (M modified, D deleted, ?? untracked).
        echo "  stale: ${line:3} (git status: ${line:0:2})" >&2
    done <<<"$stale"
fi

example=examples/redis-check/Cargo.toml
cargo build --release --locked --target wasm32-wasip2 --manifest-path "$example"
cargo test --locked --manifest-path "$example"

if [[ -n "$stale" ]]; then
    exit 1
fi
echo "plugin components are up to date; examples/redis-check builds and passes its tests"
