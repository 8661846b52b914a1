//! Host-side bindings for the WIT package in `wit/`.
//!
//! One inline world imports everything the host provides and exports every interface a
//! plugin may export. No plugin targets it: each targets one of the three published worlds,
//! and the host loads only the exports that plugin's world has (see `PluginWorld`). Binding
//! the union once gives one set of Rust types for all roles.

#![allow(
    missing_docs,
    unreachable_pub,
    unsafe_code,
    non_camel_case_types,
    clippy::all
)]

wasmtime::component::bindgen!({
    path: "../wit",
    inline: "
        package ssm-tether:runtime;

        world host {
            import ssm-tether:plugin/host@0.1.1;
            import ssm-tether:plugin/tunnel-tcp@0.1.1;
            export ssm-tether:plugin/plugin@0.1.1;
            export ssm-tether:plugin/reconnect@0.1.1;
            export ssm-tether:plugin/health@0.1.1;
            export ssm-tether:plugin/hooks@0.1.1;
        }
    ",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "ssm-tether:plugin/tunnel-tcp.connection": super::capability::ProbeConnection,
    },
});

pub use self::exports::ssm_tether::plugin::{health, hooks, plugin, reconnect};
pub use self::ssm_tether::plugin::{host, tunnel_tcp, types};
