#!/usr/bin/env bash
# Rebuilds the default plugins as WebAssembly components and copies them to dist/NAME.wasm,
# and the runtime's test fixtures (testing/NAME) to ../runtime/tests/plugins/NAME.wasm.
#
#   plugins/build.sh          # from anywhere; needs rustup (adds the wasm32-wasip2 target)
#
# Plain `cargo build --target wasm32-wasip2` emits components directly: no cargo-component,
# no wasm-tools. The plugins are a workspace of their own (target/ under plugins/), so this
# never touches the runtime's build.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

target=wasm32-wasip2
rustup target add "$target" >/dev/null 2>&1 || rustup target add "$target"

# directory = dist name; the crate's library name is its package name with `_`.
plugins=(exponential-backoff tcp-connect http log)
packages=(exponential-backoff tcp-connect http-check log-hook)
# Test fixtures for the runtime's plugin host (testing/NAME, package NAME); never shipped.
fixtures=(hostile-policy hostile-probe future-policy legacy-policy)
fixtures_dir=../runtime/tests/plugins
out="${CARGO_TARGET_DIR:-target}/$target/release"

# Reproducible bytes: panic locations in dependencies would otherwise embed this machine's
# CARGO_HOME (workspace paths are already relative). Only the wasm target sees RUSTFLAGS.
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
export RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$cargo_home=/cargo"

args=()
for p in "${packages[@]}" "${fixtures[@]}"; do args+=(-p "$p"); done
cargo build --release --locked --target "$target" "${args[@]}"

mkdir -p dist
for i in "${!plugins[@]}"; do
    cp "$out/${packages[$i]//-/_}.wasm" "dist/${plugins[$i]}.wasm"
    printf '%-32s %8d bytes\n' "dist/${plugins[$i]}.wasm" "$(wc -c <"dist/${plugins[$i]}.wasm")"
done

mkdir -p "$fixtures_dir"
for f in "${fixtures[@]}"; do
    cp "$out/${f//-/_}.wasm" "$fixtures_dir/$f.wasm"
    printf '%-32s %8d bytes\n' "$fixtures_dir/$f.wasm" "$(wc -c <"$fixtures_dir/$f.wasm")"
done
