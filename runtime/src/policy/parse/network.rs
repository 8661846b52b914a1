//! The network keys shared by `[defaults]` and `[[tunnel]]` (`proxy`, `ssmmessages_endpoint`,
//! `use_fips`, `use_dual_stack`) and `tag:KEY=VALUE` targets.

use super::{Result, Sourced, TableReader, pick};
use crate::aws::{MessagesEndpoint, TagSelector};
use crate::policy::error::Source;
use crate::transport::proxy::ProxyUrl;

/// The network keys as written in one table.
#[derive(Debug, Default)]
pub(super) struct NetworkLayer {
    proxy: Option<Sourced<ProxyUrl>>,
    ssmmessages_endpoint: Option<Sourced<MessagesEndpoint>>,
    use_fips: Option<bool>,
    use_dual_stack: Option<bool>,
}

/// The merged network settings of one tunnel.
pub(super) struct Network {
    pub(super) proxy: Option<ProxyUrl>,
    pub(super) ssmmessages_endpoint: Option<MessagesEndpoint>,
    pub(super) use_fips: Option<bool>,
    pub(super) use_dual_stack: Option<bool>,
}

/// Reads the network keys of `[defaults]` or one `[[tunnel]]`.
pub(super) fn read_network(table: &TableReader<'_, '_, '_>) -> Result<NetworkLayer> {
    // `string`, not `word`: messages about the proxy never quote it (it may hold a password).
    let proxy = match table.string("proxy")? {
        Some(written) => {
            let url = ProxyUrl::parse(&written.value).map_err(|err| {
                table.src.invalid(
                    &written.span,
                    &written.field,
                    format!("{err} (the value is not repeated here: it may hold a password)"),
                )
            })?;
            Some(Sourced {
                value: url,
                span: written.span,
                field: written.field,
            })
        }
        None => None,
    };
    let ssmmessages_endpoint = match table.string("ssmmessages_endpoint")? {
        Some(written) => {
            let endpoint = MessagesEndpoint::parse(&written.value).map_err(|err| {
                table.src.bad_value(
                    &written.span,
                    &written.field,
                    format_args!(
                        "{err} (e.g. \"vpce-0123456789abcdef0-abcdefgh.ssmmessages.eu-west-1.\
                         vpce.amazonaws.com\")"
                    ),
                )
            })?;
            Some(Sourced {
                value: endpoint,
                span: written.span,
                field: written.field,
            })
        }
        None => None,
    };
    Ok(NetworkLayer {
        proxy,
        ssmmessages_endpoint,
        use_fips: table.boolean("use_fips")?,
        use_dual_stack: table.boolean("use_dual_stack")?,
    })
}

/// A tunnel's network settings: its own values over `[defaults]`'. A cleartext (`ws://`)
/// endpoint to another host is refused unless `allow_insecure`.
pub(super) fn merge(
    src: &Source<'_>,
    tunnel: &NetworkLayer,
    defaults: &NetworkLayer,
    allow_insecure: bool,
) -> Result<Network> {
    let endpoint = pick(&tunnel.ssmmessages_endpoint, &defaults.ssmmessages_endpoint);
    if let Some(e) = endpoint
        && !allow_insecure
        && crate::aws::is_cleartext_to_another_host(&e.value.as_url())
    {
        return Err(src.bad_value(
            &e.span,
            &e.field,
            "sends session tokens unencrypted to another host; use wss://, a loopback \
             address, or set allow_insecure_endpoint = true",
        ));
    }
    Ok(Network {
        proxy: pick(&tunnel.proxy, &defaults.proxy).map(|s| s.value.clone()),
        ssmmessages_endpoint: endpoint.map(|s| s.value.clone()),
        use_fips: tunnel.use_fips.or(defaults.use_fips),
        use_dual_stack: tunnel.use_dual_stack.or(defaults.use_dual_stack),
    })
}

/// Checks a `tag:KEY=VALUE` target.
pub(super) fn check_tag_target(src: &Source<'_>, target: &Sourced<String>) -> Result<()> {
    TagSelector::parse(&target.value)
        .map(drop)
        .map_err(|err| src.bad_value(&target.span, &target.field, err))
}
