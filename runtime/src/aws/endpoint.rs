//! `ssmmessages_endpoint`: dial the data channel at another host than the StreamUrl names,
//! typically a VPC interface endpoint without private DNS
//! (`vpce-0abc…-xyz.ssmmessages.eu-west-1.vpce.amazonaws.com`).
//!
//! StartSession and ResumeSession return a StreamUrl on the public name
//! (`wss://ssmmessages.REGION.amazonaws.com/v1/data-channel/ID?…`). With an endpoint set, its
//! scheme (when given) and authority replace the StreamUrl's; the path and query stay. The
//! upgrade is then SigV4-signed for the host actually dialled, with the service name
//! `ssmmessages` and the region as always (`transport::sign`), which is what an interface
//! endpoint expects.

use std::fmt;

/// A data-channel endpoint: `HOST`, `HOST:PORT`, or `wss://HOST[:PORT]` (`https://` means the
/// same; `ws://`/`http://` only for tests against a local emulator).
#[derive(Clone, PartialEq, Eq)]
pub struct MessagesEndpoint {
    /// `ws` or `wss`; `None` keeps the StreamUrl's scheme.
    scheme: Option<&'static str>,
    /// `host[:port]`, brackets around an IPv6 address.
    authority: String,
}

/// Why an endpoint value is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Not a host, `host:port` or `wss://host[:port]`.
    #[error("is not a host, HOST:PORT or wss://HOST[:PORT]")]
    NotAHost,
    /// A scheme other than `wss`/`https` (or `ws`/`http`).
    #[error("has scheme {0:?}; use wss:// (or no scheme)")]
    Scheme(String),
    /// A path or query, which an endpoint has no use for.
    #[error("has a path or query; give only the host (and port)")]
    Path,
}

impl MessagesEndpoint {
    /// Parses an `ssmmessages_endpoint` value.
    ///
    /// # Errors
    /// [`EndpointError`] saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, EndpointError> {
        let text = text.trim();
        if text.is_empty() || text.len() > 512 || text.chars().any(char::is_whitespace) {
            return Err(EndpointError::NotAHost);
        }
        let (scheme, rest) = match text.split_once("://") {
            Some((scheme, rest)) => {
                let scheme = match scheme.to_ascii_lowercase().as_str() {
                    "wss" | "https" => "wss",
                    "ws" | "http" => "ws",
                    other => return Err(EndpointError::Scheme(other.to_owned())),
                };
                (Some(scheme), rest)
            }
            None => (None, text),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(EndpointError::Path);
        }
        if authority.contains('@') {
            return Err(EndpointError::NotAHost);
        }
        let parsed: http::uri::Authority =
            authority.parse().map_err(|_| EndpointError::NotAHost)?;
        // The parser takes any text after the host's ':' for a port; a port must be a number.
        let port_ok = parsed.as_str() == parsed.host() || parsed.port_u16().is_some();
        if parsed.host().is_empty() || !port_ok {
            return Err(EndpointError::NotAHost);
        }
        Ok(Self {
            scheme,
            authority: parsed.as_str().to_owned(),
        })
    }

    /// `stream_url` with this endpoint's scheme (if given) and authority.
    ///
    /// # Errors
    /// [`EndpointError::NotAHost`] when `stream_url` is not a URL (it is never quoted).
    pub fn rewrite(&self, stream_url: &str) -> Result<String, EndpointError> {
        let uri: http::Uri = stream_url.parse().map_err(|_| EndpointError::NotAHost)?;
        let scheme = match self.scheme {
            Some(scheme) => scheme,
            None => uri.scheme_str().ok_or(EndpointError::NotAHost)?,
        };
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        Ok(format!("{scheme}://{}{path}", self.authority))
    }

    /// The URL a cleartext check looks at: `ws://host[:port]` or `wss://…`; for a value
    /// without a scheme, `wss://…` (AWS StreamUrls are `wss://`).
    pub fn as_url(&self) -> String {
        format!("{}://{}", self.scheme.unwrap_or("wss"), self.authority)
    }
}

impl fmt::Debug for MessagesEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessagesEndpoint({self})")
    }
}

impl fmt::Display for MessagesEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            Some(scheme) => write!(f, "{scheme}://{}", self.authority),
            None => f.write_str(&self.authority),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "wss://ssmmessages.eu-west-1.amazonaws.com/v1/data-channel/s-1?role=publish_subscribe&cell-number=AbC";

    #[test]
    fn the_host_is_replaced_and_the_rest_kept() {
        let vpce = MessagesEndpoint::parse(
            "vpce-0123456789abcdef0-abcdefgh.ssmmessages.eu-west-1.vpce.amazonaws.com",
        )
        .expect("host");
        assert_eq!(
            vpce.rewrite(STREAM).expect("rewrite"),
            "wss://vpce-0123456789abcdef0-abcdefgh.ssmmessages.eu-west-1.vpce.amazonaws.com\
             /v1/data-channel/s-1?role=publish_subscribe&cell-number=AbC"
        );
        let with_port = MessagesEndpoint::parse("https://10.0.0.5:8443/").expect("url");
        assert_eq!(with_port.to_string(), "wss://10.0.0.5:8443");
        assert!(
            with_port
                .rewrite(STREAM)
                .expect("rewrite")
                .starts_with("wss://10.0.0.5:8443/v1/data-channel/s-1?")
        );
        let local = MessagesEndpoint::parse("ws://127.0.0.2:4000").expect("ws");
        assert_eq!(
            local
                .rewrite("ws://127.0.0.1:1234/v1/data-channel/x?a=b")
                .expect("rewrite"),
            "ws://127.0.0.2:4000/v1/data-channel/x?a=b"
        );
        let v6 = MessagesEndpoint::parse("[::1]:9000").expect("v6");
        assert!(
            v6.rewrite(STREAM)
                .expect("rewrite")
                .starts_with("wss://[::1]:9000/v1/")
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            "",
            "ftp://h",
            "h/path",
            "wss://h?x",
            "user@h",
            "two words",
            "h:port",
        ] {
            assert!(MessagesEndpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
