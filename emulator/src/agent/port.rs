//! Port-session decisions the agent makes from the handshake (docs/protocol.md §6.1), and the
//! chunking of its outgoing byte stream (§6.4). Pure functions, unit-tested.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use serde_json::Value;
use ssm_tether_protocol::message::MAX_STREAM_PAYLOAD;

/// The `type` property value that selects port forwarding (as opposed to SSH-style sessions).
pub(crate) const LOCAL_PORT_FORWARDING: &str = "LocalPortForwarding";
/// The oldest client version the agent multiplexes for (`muxSupportedClientVersion`).
pub(crate) const MUX_SUPPORTED_CLIENT_VERSION: &str = "1.1.70";
/// The newest client version for which the agent keeps smux keepalive on.
pub(crate) const KEEPALIVE_MAX_CLIENT_VERSION: &str = "1.2.331.0";
/// Agents up to this version have no smux at all: port sessions are basic mode only.
pub(crate) const NO_MUX_MAX_AGENT_VERSION: &str = "3.0.196.0";
/// Agents up to this version always run smux keepalive, whatever the client's version.
pub(crate) const ALWAYS_KEEPALIVE_MAX_AGENT_VERSION: &str = "3.1.1511.0";

/// How the agent forwards the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PortMode {
    /// smux v1 server over the Output byte stream, one destination connection per stream.
    Mux {
        /// Whether smux keepalive (NOP every 10 s, 30 s receive timeout) is on.
        keepalive: bool,
    },
    /// One destination connection; Output payloads are raw TCP bytes.
    Basic {
        /// Non-`LocalPortForwarding` sessions (SSH-style) end when the destination closes.
        eof_ends_session: bool,
    },
}

/// Picks the mode as the agent's `port.GetSession` does: mux iff `type` is
/// `LocalPortForwarding` and the client version is at least 1.1.70; keepalive on iff the
/// client version is at most 1.2.331.0.
///
/// The modelled agent's own version matters too (§6.1, from the client's side of the table):
/// agents up to 3.0.196.0 predate smux and always forward in basic mode, and agents up to
/// 3.1.1511.0 predate the keepalive switch and always send NOPs.
pub(crate) fn select_mode(
    properties: &BTreeMap<String, Value>,
    client_version: &str,
    agent_version: &str,
) -> PortMode {
    let port_forwarding = string_property(properties, "type") == Some(LOCAL_PORT_FORWARDING);
    let agent_has_mux =
        compare_versions(agent_version, NO_MUX_MAX_AGENT_VERSION) == Ordering::Greater;
    if port_forwarding
        && agent_has_mux
        && compare_versions(client_version, MUX_SUPPORTED_CLIENT_VERSION) != Ordering::Less
    {
        let agent_always_keepalive =
            compare_versions(agent_version, ALWAYS_KEEPALIVE_MAX_AGENT_VERSION)
                != Ordering::Greater;
        PortMode::Mux {
            keepalive: agent_always_keepalive
                || compare_versions(client_version, KEEPALIVE_MAX_CLIENT_VERSION)
                    != Ordering::Greater,
        }
    } else {
        PortMode::Basic {
            eof_ends_session: !port_forwarding,
        }
    }
}

/// Where the agent connects: `host` (resolved on connect, each address tried in order) or the
/// configured default host, and `portNumber`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Destination {
    /// Host name or address.
    pub(crate) host: String,
    /// TCP port.
    pub(crate) port: u16,
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Reads the destination from the document properties; `default_host` when they name no host.
///
/// # Errors
/// `portNumber` is missing, empty or not a port number (the agent fails the session with
/// "Port number is empty in session properties").
pub(crate) fn destination(
    properties: &BTreeMap<String, Value>,
    default_host: &str,
) -> Result<Destination, String> {
    let port = match properties.get("portNumber") {
        Some(Value::String(text)) => text.trim().to_owned(),
        Some(Value::Number(number)) => number.to_string(),
        _ => String::new(),
    };
    if port.is_empty() {
        return Err("Port number is empty in session properties".to_owned());
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("Invalid port number {port:?} in session properties"))?;
    let host = match string_property(properties, "host") {
        Some(host) if !host.trim().is_empty() => host.trim().to_owned(),
        // The agent dials ":port", i.e. the local system.
        _ => default_host.to_owned(),
    };
    Ok(Destination { host, port })
}

fn string_property<'a>(properties: &'a BTreeMap<String, Value>, name: &str) -> Option<&'a str> {
    properties.get(name).and_then(Value::as_str)
}

/// Takes the next Output payload (at most [`MAX_STREAM_PAYLOAD`] bytes) off the front of the
/// outgoing byte stream, without copying. No alignment to smux frames, like the agent's
/// 1024-byte reads of its mux socket.
pub(crate) fn take_chunk(pending: &mut BytesMut) -> Bytes {
    let n = pending.len().min(MAX_STREAM_PAYLOAD);
    pending.split_to(n).freeze()
}

/// Compares versions like the agent's `versionutil.Compare(a, b, true)`: semver rules if both
/// are semver; otherwise component by component (numerically when both components are
/// integers, as text otherwise), and with an equal prefix the version with fewer components
/// is smaller.
pub(crate) fn compare_versions(a: &str, b: &str) -> Ordering {
    if let (Some(a), Some(b)) = (SemVer::parse(a), SemVer::parse(b)) {
        return a.cmp_semver(&b);
    }
    let a_parts: Vec<&str> = a.split('.').collect();
    let b_parts: Vec<&str> = b.split('.').collect();
    for (x, y) in a_parts.iter().zip(&b_parts) {
        let ordering = match (go_atoi(x), go_atoi(y)) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => x.cmp(y),
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    a_parts.len().cmp(&b_parts.len())
}

/// Go's `strconv.Atoi`: optional sign, decimal digits, no overflow.
fn go_atoi(text: &str) -> Option<i64> {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The subset of coreos/go-semver the comparison needs: `MAJOR.MINOR.PATCH[-PRE][+META]`.
#[derive(Debug)]
struct SemVer<'a> {
    core: [u64; 3],
    pre: Option<&'a str>,
}

impl<'a> SemVer<'a> {
    fn parse(text: &'a str) -> Option<Self> {
        let text = text.split_once('+').map_or(text, |(v, _meta)| v);
        let (core, pre) = match text.split_once('-') {
            Some((core, pre)) if !pre.is_empty() => (core, Some(pre)),
            Some(_) => return None,
            None => (text, None),
        };
        let mut parts = core.split('.');
        let mut numbers = [0u64; 3];
        for slot in &mut numbers {
            let part = parts.next()?;
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            *slot = part.parse().ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(Self { core: numbers, pre })
    }

    fn cmp_semver(&self, other: &Self) -> Ordering {
        self.core
            .cmp(&other.core)
            .then_with(|| match (self.pre, other.pre) {
                (None, None) => Ordering::Equal,
                // A pre-release sorts before the release.
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(a), Some(b)) => compare_prerelease(a, b),
            })
    }
}

fn compare_prerelease(a: &str, b: &str) -> Ordering {
    let a_ids: Vec<&str> = a.split('.').collect();
    let b_ids: Vec<&str> = b.split('.').collect();
    for (x, y) in a_ids.iter().zip(&b_ids) {
        let numeric = |s: &str| s.bytes().all(|c| c.is_ascii_digit()) && !s.is_empty();
        let ordering = match (numeric(x), numeric(y)) {
            (true, true) => x.len().cmp(&y.len()).then_with(|| x.cmp(y)),
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (false, false) => x.cmp(y),
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    a_ids.len().cmp(&b_ids.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect()
    }

    #[test]
    fn versions_compare_like_the_agent() {
        use Ordering::*;
        assert_eq!(compare_versions("1.2.650.0", "1.1.70"), Greater);
        assert_eq!(
            compare_versions("1.1.70.0", "1.1.70"),
            Greater,
            "more components"
        );
        assert_eq!(compare_versions("1.1.70", "1.1.70"), Equal);
        assert_eq!(compare_versions("1.1.69", "1.1.70"), Less);
        assert_eq!(
            compare_versions("1.1.100", "1.1.70"),
            Greater,
            "numeric, not text"
        );
        assert_eq!(compare_versions("1.2.331.0", "1.2.331.0"), Equal);
        assert_eq!(compare_versions("1.2.332.0", "1.2.331.0"), Greater);
        assert_eq!(compare_versions("1.2.0.0", "1.2.331.0"), Less);
        assert_eq!(compare_versions("", "1.1.70"), Less);
        assert_eq!(
            compare_versions("1.x.0.0", "1.1.70"),
            Greater,
            "text compare"
        );
        // Semver rules when both are semver: a pre-release is older than its release.
        assert_eq!(compare_versions("1.1.70-beta", "1.1.70"), Less);
        assert_eq!(compare_versions("1.1.70+build", "1.1.70"), Equal);
    }

    #[test]
    fn mode_selection_follows_the_client_version() {
        let pf = props(&[("type", "LocalPortForwarding"), ("portNumber", "80")]);
        assert_eq!(
            select_mode(&pf, "1.2.650.0", "3.3.987.0"),
            PortMode::Mux { keepalive: false }
        );
        assert_eq!(
            select_mode(&pf, "1.2.331.0", "3.3.987.0"),
            PortMode::Mux { keepalive: true }
        );
        assert_eq!(
            select_mode(&pf, "1.1.70", "3.3.987.0"),
            PortMode::Mux { keepalive: true }
        );
        assert_eq!(
            select_mode(&pf, "1.1.61.0", "3.3.987.0"),
            PortMode::Basic {
                eof_ends_session: false
            }
        );
        let ssh = props(&[("portNumber", "22")]);
        assert_eq!(
            select_mode(&ssh, "1.2.650.0", "3.3.987.0"),
            PortMode::Basic {
                eof_ends_session: true
            }
        );
    }

    #[test]
    fn old_agents_have_no_mux_and_always_keep_alive() {
        let pf = props(&[("type", "LocalPortForwarding"), ("portNumber", "80")]);
        assert_eq!(
            select_mode(&pf, "1.2.650.0", "3.0.196.0"),
            PortMode::Basic {
                eof_ends_session: false
            }
        );
        assert_eq!(
            select_mode(&pf, "1.2.650.0", "3.1.1511.0"),
            PortMode::Mux { keepalive: true }
        );
        assert_eq!(
            select_mode(&pf, "1.2.650.0", "3.1.1512.0"),
            PortMode::Mux { keepalive: false }
        );
    }

    #[test]
    fn destination_defaults_to_the_default_host() {
        let loopback = "127.0.0.1";
        let d = destination(&props(&[("portNumber", "8080")]), loopback).expect("valid");
        assert_eq!(d.to_string(), "127.0.0.1:8080");
        let d = destination(&props(&[("portNumber", "8080")]), "localhost").expect("valid");
        assert_eq!(d.to_string(), "localhost:8080");
        let d = destination(
            &props(&[("portNumber", "5432"), ("host", "db.internal")]),
            loopback,
        )
        .expect("valid");
        assert_eq!(d.to_string(), "db.internal:5432");
        let d = destination(&props(&[("portNumber", "1"), ("host", "")]), "::1").expect("valid");
        assert_eq!(d.host, "::1");
        assert!(destination(&props(&[("host", "x")]), loopback).is_err());
        assert!(destination(&props(&[("portNumber", "")]), loopback).is_err());
        assert!(destination(&props(&[("portNumber", "99999")]), loopback).is_err());
    }

    #[test]
    fn chunks_are_at_most_1024_bytes_and_unaligned() {
        let mut pending = BytesMut::new();
        // Two smux frames of 1500 bytes each: the chunks ignore frame boundaries.
        let data = vec![7u8; 1500];
        ssm_tether_protocol::smux::encode_data(3, &data, 32 * 1024, &mut pending);
        ssm_tether_protocol::smux::encode_data(5, &data, 32 * 1024, &mut pending);
        let total = pending.len();
        let mut sizes = Vec::new();
        let mut joined = Vec::new();
        while !pending.is_empty() {
            let chunk = take_chunk(&mut pending);
            sizes.push(chunk.len());
            joined.extend_from_slice(&chunk);
        }
        assert_eq!(total, 3016);
        assert_eq!(sizes, vec![1024, 1024, 968]);
        let mut decoder = ssm_tether_protocol::smux::FrameDecoder::new();
        decoder.push(&joined);
        let first = decoder.next_frame().expect("valid").expect("frame");
        let second = decoder.next_frame().expect("valid").expect("frame");
        assert_eq!((first.stream_id, first.data.len()), (3, 1500));
        assert_eq!((second.stream_id, second.data.len()), (5, 1500));
    }
}
