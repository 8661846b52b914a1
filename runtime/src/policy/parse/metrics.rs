//! The top-level `[metrics]` table: where `/metrics`, `/healthz` and `/readyz` are served.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use toml::Spanned;
use toml::de::DeValue;

use super::{ParsedTunnel, Result, TableReader, addresses_clash};
use crate::policy::error::Source;
use crate::policy::{DEFAULT_METRICS_LISTEN, LocalAddress, MetricsSettings};

/// Keys of `[metrics]`.
const METRICS_KEYS: &[&str] = &["listen", "allow_non_loopback"];

/// Reads `[metrics]` if the file has one; its address must not be a tunnel's local address.
pub(super) fn read_metrics(
    root: &TableReader<'_, '_, '_>,
    tunnels: &[ParsedTunnel],
) -> Result<Option<MetricsSettings>> {
    let Some(table) = root.table("metrics")? else {
        return Ok(None);
    };
    table.check_keys(METRICS_KEYS, None)?;
    let allow_non_loopback = table.boolean("allow_non_loopback")?.unwrap_or(false);
    let Some(value) = table.get("listen") else {
        return Ok(Some(MetricsSettings {
            listen: DEFAULT_METRICS_LISTEN,
        }));
    };
    let listen = parse_listen(&table, value)?;
    let field = table.field("listen");
    if !listen.ip().is_loopback() && !allow_non_loopback {
        return Err(table.src.bad_value(
            &value.span(),
            field,
            "is not a loopback address; set allow_non_loopback = true in [metrics] to serve \
             metrics and health endpoints to the network (they need no credentials)",
        ));
    }
    check_clash(table.src, &value.span(), &field, listen, tunnels)?;
    Ok(Some(MetricsSettings { listen }))
}

/// `listen`: an integer port, `"PORT"`, `"IP:PORT"`, `"[IPv6]:PORT"` or `"localhost:PORT"`.
fn parse_listen(
    table: &TableReader<'_, '_, '_>,
    value: &Spanned<DeValue<'_>>,
) -> Result<SocketAddr> {
    let bad = |why: &str| {
        table
            .src
            .bad_value(&value.span(), table.field("listen"), why)
    };
    let loopback = |port: u16| SocketAddr::from((IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    match value.get_ref() {
        DeValue::Integer(i) => {
            let n =
                i64::from_str_radix(i.as_str(), i.radix()).map_err(|_| bad("is out of range"))?;
            u16::try_from(n)
                .map(loopback)
                .map_err(|_| bad("is not a port (0-65535)"))
        }
        DeValue::String(s) => {
            let s = s.trim();
            if s.starts_with("unix:") {
                return Err(bad(
                    "is a Unix socket; metrics are served over TCP (\"IP:PORT\")",
                ));
            }
            if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
                return s
                    .parse::<u16>()
                    .map(loopback)
                    .map_err(|_| bad("is not a port (0-65535)"));
            }
            if let Ok(addr) = s.parse::<SocketAddr>() {
                return Ok(addr);
            }
            if let Some(port) = s.strip_prefix("localhost:") {
                return port
                    .parse::<u16>()
                    .map(loopback)
                    .map_err(|_| bad("is not a port (0-65535) after localhost:"));
            }
            Err(bad(
                "is not a listen address (\"PORT\", \"IP:PORT\", \"[IPv6]:PORT\" or \
                 \"localhost:PORT\")",
            ))
        }
        _ => Err(table.type_error("listen", value, "a string such as \"127.0.0.1:9464\"")),
    }
}

/// The metrics listener and a tunnel's listener cannot share an address.
fn check_clash(
    src: &Source<'_>,
    span: &std::ops::Range<usize>,
    field: &str,
    listen: SocketAddr,
    tunnels: &[ParsedTunnel],
) -> Result<()> {
    let ours = LocalAddress::Tcp(listen);
    for tunnel in tunnels {
        if addresses_clash(&ours, &tunnel.spec.local) {
            return Err(src.conflict(
                span,
                field,
                format!(
                    "{listen} clashes with local address {} of tunnel \"{}\" ({} at {}); the \
                     metrics endpoint and the tunnel cannot listen there both",
                    tunnel.spec.local,
                    tunnel.spec.name,
                    tunnel.path,
                    src.location(tunnel.local_span.start)
                ),
            ));
        }
    }
    Ok(())
}
