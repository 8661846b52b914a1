#!/usr/bin/env bash
# Rebuilds the default plugins as WebAssembly components and copies them to dist/NAME.wasm.
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

# Reproducible bytes: panic locations in dependencies would otherwise embed this machine's
# CARGO_HOME (workspace paths are already relative). Only the wasm target sees RUSTFLAGS.
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
export RUSTFLAGS="${RUSTFLAGS:-} --remap-path-prefix=$cargo_home=/cargo"

args=()
for p in "${packages[@]}"; do args+=(-p "$p"); done
cargo build --release --locked --target "$target" "${args[@]}"

mkdir -p dist
for i in "${!plugins[@]}"; do
    src="target/$target/release/${packages[$i]//-/_}.wasm"
    cp "$src" "dist/${plugins[$i]}.wasm"
    printf '%-32s %8d bytes\n' "dist/${plugins[$i]}.wasm" "$(wc -c <"dist/${plugins[$i]}.wasm")"
done
