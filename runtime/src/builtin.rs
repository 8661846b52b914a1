//! The default plugins, embedded so `run` and `demo` work without a wasm toolchain.
//!
//! The bytes are `plugins/dist/*.wasm`, which CI rebuilds from source and compares
//! (`plugins/check-dist.sh`); embedding by `include_bytes!` means a binary built from a tree
//! whose `dist/` is current embeds current plugins.

/// Name (as in `builtin:NAME`) and component bytes of every built-in plugin.
pub const BUILTINS: &[(&str, &[u8])] = &[
    (
        "exponential-backoff",
        include_bytes!("../../plugins/dist/exponential-backoff.wasm"),
    ),
    (
        "tcp-connect",
        include_bytes!("../../plugins/dist/tcp-connect.wasm"),
    ),
    ("http", include_bytes!("../../plugins/dist/http.wasm")),
    ("log", include_bytes!("../../plugins/dist/log.wasm")),
];

/// The component of the built-in plugin `name`.
pub fn get(name: &str) -> Option<&'static [u8]> {
    BUILTINS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// The names, for error messages.
pub fn names() -> String {
    BUILTINS
        .iter()
        .map(|(n, _)| format!("builtin:{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
