//! HTTP proxies: which proxy, if any, carries a connection, and the `CONNECT` tunnel the
//! data channel's WebSocket is opened through (the official plugin honours the proxy
//! variables too, docs/protocol.md §4.1).
//!
//! One [`Proxies`] value decides for both paths of a tunnel: the AWS SDK's HTTP client (given
//! the same values, through `aws-smithy-http-client`'s proxy support) and the data channel
//! ([`Proxies::route`] and [`connect_tunnel`]). The NO_PROXY matching of both is hyper-util's
//! matcher, so the two paths cannot disagree about a host. The rules, as curl and the AWS CLI
//! read them:
//!
//! * `https_proxy`/`HTTPS_PROXY` carries `https://` and `wss://` connections,
//!   `http_proxy`/`HTTP_PROXY` `http://` and `ws://` ones, `all_proxy`/`ALL_PROXY` either when
//!   the specific one is unset. The lowercase spelling wins when both are set, an empty value
//!   counts as unset, and `HTTP_PROXY` is ignored when `REQUEST_METHOD` is set (CGI,
//!   "httpoxy"). A value without a scheme means `http://`.
//! * The policy key `proxy` replaces all of them, for both schemes.
//! * `no_proxy`/`NO_PROXY` (also with `proxy`): comma-separated entries; `*` matches every
//!   host; a name matches itself and its subdomains (`example.com` and `.example.com` both
//!   match `www.example.com`, not `notexample.com`); an IP address or CIDR range matches
//!   addresses. Ports are not compared.
//! * The instance metadata service (`169.254.169.254`, `fd00:ec2::254`) and the container
//!   credential endpoints of ECS and EKS Pod Identity (`169.254.170.2`, `169.254.170.23`,
//!   `fd00:ec2::23`) are always reached directly: their credentials belong to this machine,
//!   and a proxy would fetch its own.
//! * Credentials in a proxy URL (`http://user:password@host:port`, percent-encoded) become
//!   `Proxy-Authorization: Basic …`. They never appear in `Debug` or `Display` output, logs or
//!   error messages ([`ProxyUrl::shown`]).
//!
//! The data channel speaks plain HTTP to the proxy: an `https://` proxy URL (TLS to the proxy
//! itself) is refused in the policy file, and from the environment it serves the SDK only.

use std::fmt;
use std::sync::Arc;

use aws_smithy_http_client::proxy::ProxyConfig;
use http::{HeaderValue, Uri};
use hyper_util::client::proxy::matcher::Matcher;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Hosts never reached through a proxy: the EC2 instance metadata service and the container
/// credential endpoints (ECS, EKS Pod Identity).
const ALWAYS_DIRECT: &str =
    "169.254.169.254,169.254.170.2,169.254.170.23,fd00:ec2::254,fd00:ec2::23";

/// Longest proxy response head (status line and headers) read before giving up.
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// Longest proxy URL accepted.
const MAX_URL_LEN: usize = 2048;

/// Why a proxy URL cannot be used. Never contains the URL's credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The text is not a URL with a host (the text is not repeated: it may hold a password).
    #[error("is not a proxy URL such as http://host:3128 or http://user:password@host:3128")]
    NotAUrl,
    /// The scheme is not `http` (or `https` where allowed).
    #[error("has scheme {0:?}; proxies are spoken to in plain HTTP (http://host:port)")]
    Scheme(String),
    /// The URL has a path or a query, which a proxy URL cannot have.
    #[error("has a path or query; a proxy URL is http://[user:password@]host[:port]")]
    Path,
}

/// A proxy URL as configured (`proxy = "http://user:pass@host:port"` or a proxy variable),
/// credentials included. `Debug` and `Display` show [`ProxyUrl::shown`], never the
/// credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// The URL as hyper-util's matcher reads it; secret when it has credentials.
    url: String,
    /// The URL with its credentials replaced by `***`.
    shown: String,
}

impl ProxyUrl {
    /// A proxy URL for the data channel and the SDK: `http://[user[:password]@]host[:port]`
    /// (a missing scheme means `http://`; credentials percent-encoded).
    ///
    /// # Errors
    /// [`ProxyError`] naming what is wrong, never quoting the text.
    pub fn parse(text: &str) -> Result<Self, ProxyError> {
        Self::parse_with(text, false)
    }

    /// As [`ProxyUrl::parse`], accepting `https://` (TLS to the proxy) when `allow_https`.
    fn parse_with(text: &str, allow_https: bool) -> Result<Self, ProxyError> {
        let text = text.trim();
        if text.is_empty() || text.len() > MAX_URL_LEN || text.chars().any(char::is_control) {
            return Err(ProxyError::NotAUrl);
        }
        let url = if text.contains("://") {
            text.to_owned()
        } else {
            format!("http://{text}")
        };
        let uri: Uri = url.parse().map_err(|_| ProxyError::NotAUrl)?;
        let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
        match scheme.as_str() {
            "http" => {}
            "https" if allow_https => {}
            _ => return Err(ProxyError::Scheme(scheme)),
        }
        let authority = uri.authority().ok_or(ProxyError::NotAUrl)?;
        if uri.host().is_none_or(str::is_empty) {
            return Err(ProxyError::NotAUrl);
        }
        if uri.query().is_some() || !matches!(uri.path(), "" | "/") {
            return Err(ProxyError::Path);
        }
        let (userinfo, host_port) = match authority.as_str().split_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority.as_str()),
        };
        if host_port.is_empty() {
            return Err(ProxyError::NotAUrl);
        }
        let shown = match userinfo {
            Some(_) => format!("{scheme}://***@{host_port}"),
            None => format!("{scheme}://{host_port}"),
        };
        Ok(Self {
            url: format!("{scheme}://{}", authority.as_str()),
            shown,
        })
    }

    /// The URL without its credentials (`http://***@proxy:3128`): safe to log.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Whether the URL carries credentials (`user[:password]@`).
    pub fn has_credentials(&self) -> bool {
        self.shown.contains("***@")
    }

    /// Whether the proxy itself is spoken to over TLS (`https://`).
    fn is_tls(&self) -> bool {
        self.url.starts_with("https://")
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ProxyUrl").field(&self.shown).finish()
    }
}

impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Where the proxy settings came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxySource {
    /// No proxy is configured: every connection is direct.
    None,
    /// The policy key `proxy`.
    Policy,
    /// The proxy environment variables.
    Environment,
}

/// The proxies of one tunnel (or one `check`), resolved once: the policy's `proxy` or the
/// environment's variables, and `NO_PROXY`. Cheap to clone.
#[derive(Clone)]
pub struct Proxies {
    http: Option<ProxyUrl>,
    https: Option<ProxyUrl>,
    no_proxy: String,
    source: ProxySource,
    /// Variables that were set but could not be used, and why (no values: they may hold
    /// passwords).
    ignored: Vec<String>,
    matcher: Arc<Matcher>,
}

impl fmt::Debug for Proxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxies")
            .field("source", &self.source)
            .field("http", &self.http)
            .field("https", &self.https)
            .field("no_proxy", &self.no_proxy)
            .finish_non_exhaustive()
    }
}

impl Default for Proxies {
    fn default() -> Self {
        Self::none()
    }
}

/// How a connection reaches its host.
#[derive(Debug)]
pub enum Route {
    /// Straight to the host.
    Direct,
    /// Through this proxy's `CONNECT`.
    Proxy(ProxyHop),
    /// A proxy is configured that the data channel cannot use (TLS to the proxy).
    Unsupported(String),
}

/// A proxy to tunnel through: where it listens and what to authenticate with.
pub struct ProxyHop {
    /// The proxy's host (an IPv6 address without brackets).
    pub host: String,
    /// The proxy's port (80 when the URL names none, as the AWS CLI assumes).
    pub port: u16,
    /// `Basic …`, marked sensitive, when the URL carries credentials.
    authorization: Option<HeaderValue>,
    /// The proxy's URL without credentials, for messages.
    pub shown: String,
}

impl fmt::Debug for ProxyHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyHop")
            .field("proxy", &self.shown)
            .field("authenticated", &self.authorization.is_some())
            .finish()
    }
}

impl Proxies {
    /// No proxy: every connection is direct.
    pub fn none() -> Self {
        Self::build(None, None, String::new(), ProxySource::None, Vec::new())
    }

    /// The policy's `proxy` if given, else the process's proxy variables; `NO_PROXY` either
    /// way.
    pub fn from_env(configured: Option<&ProxyUrl>) -> Self {
        Self::from_lookup(configured, |name| std::env::var(name).ok())
    }

    /// As [`Proxies::from_env`], reading variables through `var` (for tests).
    pub fn from_lookup(
        configured: Option<&ProxyUrl>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let get = |lower: &str, upper: &str, allow_upper: bool| -> Option<(String, String)> {
            let named = |name: &str| {
                var(name)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (name.to_owned(), v))
            };
            named(lower).or_else(|| allow_upper.then(|| named(upper)).flatten())
        };
        let no_proxy = get("no_proxy", "NO_PROXY", true)
            .map(|(_, v)| v)
            .unwrap_or_default();
        if let Some(url) = configured {
            return Self::build(
                Some(url.clone()),
                Some(url.clone()),
                no_proxy,
                ProxySource::Policy,
                Vec::new(),
            );
        }
        let cgi = var("REQUEST_METHOD").is_some();
        let mut ignored = Vec::new();
        let mut parse = |found: Option<(String, String)>| {
            let (name, value) = found?;
            match ProxyUrl::parse_with(&value, true) {
                Ok(url) => Some(url),
                Err(err) => {
                    ignored.push(format!("{name} {err}"));
                    None
                }
            }
        };
        let all = parse(get("all_proxy", "ALL_PROXY", true));
        let http = parse(get("http_proxy", "HTTP_PROXY", !cgi)).or_else(|| all.clone());
        let https = parse(get("https_proxy", "HTTPS_PROXY", true)).or(all);
        let source = if http.is_some() || https.is_some() {
            ProxySource::Environment
        } else {
            ProxySource::None
        };
        Self::build(http, https, no_proxy, source, ignored)
    }

    fn build(
        http: Option<ProxyUrl>,
        https: Option<ProxyUrl>,
        no_proxy: String,
        source: ProxySource,
        ignored: Vec<String>,
    ) -> Self {
        let mut builder = Matcher::builder().no(bypass_list(&no_proxy));
        if let Some(url) = &http {
            builder = builder.http(url.url.clone());
        }
        if let Some(url) = &https {
            builder = builder.https(url.url.clone());
        }
        Self {
            http,
            https,
            no_proxy,
            source,
            ignored,
            matcher: Arc::new(builder.build()),
        }
    }

    /// Whether a configured proxy URL carries credentials.
    pub fn has_credentials(&self) -> bool {
        [&self.http, &self.https]
            .into_iter()
            .flatten()
            .any(ProxyUrl::has_credentials)
    }

    /// Where the settings came from.
    pub fn source(&self) -> ProxySource {
        self.source
    }

    /// Proxy variables that were set but unusable, each with the reason (never the value).
    pub fn ignored(&self) -> &[String] {
        &self.ignored
    }

    /// One line for logs and `check`: which proxies, from where, and NO_PROXY; no
    /// credentials.
    pub fn describe(&self) -> String {
        let origin = match self.source {
            ProxySource::None => return "direct (no proxy configured)".to_owned(),
            ProxySource::Policy => "the policy's proxy",
            ProxySource::Environment => "the environment",
        };
        fn show(url: &Option<ProxyUrl>) -> &str {
            url.as_ref().map_or("direct", ProxyUrl::shown)
        }
        let mut text = if self.http == self.https {
            format!("{} (from {origin})", show(&self.https))
        } else {
            format!(
                "https via {}, http via {} (from {origin})",
                show(&self.https),
                show(&self.http)
            )
        };
        if !self.no_proxy.is_empty() {
            text.push_str(&format!(", NO_PROXY={}", self.no_proxy));
        }
        text
    }

    /// How a connection to `host:port` is made: `secure` for `wss://`/`https://` (the HTTPS
    /// proxy), otherwise the HTTP proxy.
    pub fn route(&self, secure: bool, host: &str, port: u16) -> Route {
        let scheme = if secure { "https" } else { "http" };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let authority = if bare.contains(':') {
            format!("[{bare}]:{port}")
        } else {
            format!("{bare}:{port}")
        };
        let Ok(uri) = format!("{scheme}://{authority}/").parse::<Uri>() else {
            return Route::Direct;
        };
        let Some(intercept) = self.matcher.intercept(&uri) else {
            return Route::Direct;
        };
        let configured = if secure { &self.https } else { &self.http };
        let shown = configured
            .as_ref()
            .map_or_else(|| intercept.uri().to_string(), |u| u.shown().to_owned());
        if configured.as_ref().is_some_and(ProxyUrl::is_tls) {
            return Route::Unsupported(format!(
                "proxy {shown} is spoken to over TLS (https://), which the data channel does \
                 not support; use an http:// proxy URL"
            ));
        }
        let proxy = intercept.uri();
        let Some(proxy_host) = proxy.host() else {
            return Route::Direct;
        };
        Route::Proxy(ProxyHop {
            host: proxy_host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: proxy.port_u16().unwrap_or(80),
            authorization: intercept.basic_auth().cloned(),
            shown,
        })
    }

    /// The SDK HTTP client's proxy configuration, or `None` for direct connections. Both
    /// schemes get their own proxy where the SDK can express it; when the HTTP and HTTPS
    /// proxies differ, the one for the SSM endpoint's scheme (`endpoint_is_http`) is used and
    /// the other scheme goes direct.
    pub fn sdk_config(&self, endpoint_is_http: bool) -> Option<ProxyConfig> {
        let config = match (&self.http, &self.https) {
            (None, None) => return None,
            (Some(http), Some(https)) if http == https => ProxyConfig::all(http.url.as_str()),
            (Some(http), None) => ProxyConfig::http(http.url.as_str()),
            (None, Some(https)) => ProxyConfig::https(https.url.as_str()),
            (Some(http), Some(_)) if endpoint_is_http => ProxyConfig::http(http.url.as_str()),
            (Some(_), Some(https)) => ProxyConfig::https(https.url.as_str()),
        };
        match config {
            Ok(config) => Some(config.no_proxy(bypass_list(&self.no_proxy))),
            Err(_) => {
                tracing::warn!(proxies = %self.describe(),
                    "the AWS SDK refused the proxy URL; its calls go direct");
                None
            }
        }
    }
}

/// `NO_PROXY` plus the hosts that are always reached directly.
fn bypass_list(no_proxy: &str) -> String {
    if no_proxy.trim().is_empty() {
        ALWAYS_DIRECT.to_owned()
    } else {
        format!("{no_proxy},{ALWAYS_DIRECT}")
    }
}

/// Why a `CONNECT` tunnel could not be opened. Never contains the proxy's credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    /// Reading or writing the proxy connection failed.
    #[error("proxy {proxy}: {detail}")]
    Io {
        /// The proxy, without credentials.
        proxy: String,
        /// What failed.
        detail: String,
    },
    /// The proxy's answer was not an HTTP/1 response, or its head was too long.
    #[error("proxy {proxy}: unreadable answer to CONNECT: {detail}")]
    BadResponse {
        /// The proxy, without credentials.
        proxy: String,
        /// What was wrong.
        detail: String,
    },
    /// The proxy wants credentials (HTTP 407), or refused the ones it got (407 or 401).
    #[error("proxy {proxy} {} (HTTP {status})", if *.sent_credentials { "refused the credentials it was given" } else { "requires authentication" })]
    AuthRequired {
        /// The proxy, without credentials.
        proxy: String,
        /// 407, or 401 (some proxies, tinyproxy among them, answer wrong credentials so).
        status: u16,
        /// Whether credentials were sent (then they were refused).
        sent_credentials: bool,
    },
    /// The proxy answered the CONNECT with another status.
    #[error("proxy {proxy} refused CONNECT {target}: HTTP {status} {reason}")]
    Refused {
        /// The proxy, without credentials.
        proxy: String,
        /// The tunnel's target, `host:port`.
        target: String,
        /// The status code.
        status: u16,
        /// The reason phrase, cut and stripped of control characters.
        reason: String,
    },
}

impl TunnelError {
    /// The remedy for this failure.
    pub fn remedy(&self) -> crate::remedy::Remedy {
        use crate::remedy::Remedy;
        match self {
            Self::AuthRequired {
                sent_credentials: true,
                ..
            } => Remedy::ProxyAuthRejected,
            Self::AuthRequired { .. } => Remedy::ProxyAuthRequired,
            Self::Io { .. } | Self::BadResponse { .. } | Self::Refused { .. } => Remedy::Proxy,
        }
    }
}

/// Asks the proxy at the other end of `stream` for a tunnel to `host:port` (`CONNECT`, with
/// `Proxy-Authorization` when the proxy URL carries credentials) and reads its answer, at
/// most [`MAX_RESPONSE_HEAD`] bytes and not one byte beyond the head: what follows belongs to
/// the tunnel. Returns once the proxy said 2xx; the caller bounds the time.
///
/// # Errors
/// [`TunnelError`]: the proxy's refusal (407 with or without credentials sent, any other
/// status), an unreadable answer, or an I/O failure.
pub async fn connect_tunnel(
    stream: &mut TcpStream,
    hop: &ProxyHop,
    host: &str,
    port: u16,
) -> Result<(), TunnelError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let target = if bare.contains(':') {
        format!("[{bare}]:{port}")
    } else {
        format!("{bare}:{port}")
    };
    let io = |err: std::io::Error| TunnelError::Io {
        proxy: hop.shown.clone(),
        detail: err.to_string(),
    };
    let mut request = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: ssm-tether/{}\r\n\
         Proxy-Connection: Keep-Alive\r\n",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes();
    if let Some(authorization) = &hop.authorization {
        request.extend_from_slice(b"Proxy-Authorization: ");
        request.extend_from_slice(authorization.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    stream.write_all(&request).await.map_err(io)?;
    let head = read_response_head(stream).await.map_err(|err| match err {
        HeadError::Io(err) => io(err),
        HeadError::TooLong => TunnelError::BadResponse {
            proxy: hop.shown.clone(),
            detail: format!("response head longer than {MAX_RESPONSE_HEAD} bytes"),
        },
    })?;
    let (status, reason) = status_line(&head).ok_or_else(|| TunnelError::BadResponse {
        proxy: hop.shown.clone(),
        detail: "not an HTTP/1 status line".to_owned(),
    })?;
    match status {
        200..=299 => Ok(()),
        407 => Err(TunnelError::AuthRequired {
            proxy: hop.shown.clone(),
            status,
            sent_credentials: hop.authorization.is_some(),
        }),
        401 if hop.authorization.is_some() => Err(TunnelError::AuthRequired {
            proxy: hop.shown.clone(),
            status,
            sent_credentials: true,
        }),
        _ => Err(TunnelError::Refused {
            proxy: hop.shown.clone(),
            target,
            status,
            reason,
        }),
    }
}

enum HeadError {
    Io(std::io::Error),
    TooLong,
}

/// Reads up to and including the blank line that ends a response head: peeks, then consumes
/// only the bytes that belong to the head.
async fn read_response_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut head: Vec<u8> = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        let room = (MAX_RESPONSE_HEAD + 4 - head.len()).min(buf.len());
        let peeked = stream.peek(&mut buf[..room]).await.map_err(HeadError::Io)?;
        if peeked == 0 {
            return Err(HeadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        let before = head.len();
        head.extend_from_slice(&buf[..peeked]);
        let search_from = before.saturating_sub(3);
        if let Some(at) = head[search_from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
        {
            let end = search_from + at + 4;
            head.truncate(end);
            stream
                .read_exact(&mut buf[..end - before])
                .await
                .map_err(HeadError::Io)?;
            return Ok(head);
        }
        stream
            .read_exact(&mut buf[..peeked])
            .await
            .map_err(HeadError::Io)?;
        if head.len() > MAX_RESPONSE_HEAD {
            return Err(HeadError::TooLong);
        }
    }
}

/// `HTTP/1.x CODE REASON` → (code, reason cut to 64 printable characters).
fn status_line(head: &[u8]) -> Option<(u16, String)> {
    let line_end = head.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&head[..line_end]).ok()?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    let status: u16 = code.parse().ok()?;
    let reason: String = parts
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control())
        .take(64)
        .collect();
    Some((status, reason))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tokio::net::TcpListener;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn via(proxies: &Proxies, secure: bool, host: &str) -> Option<(String, u16, bool)> {
        match proxies.route(secure, host, 443) {
            Route::Direct => None,
            Route::Proxy(hop) => Some((hop.host, hop.port, hop.authorization.is_some())),
            Route::Unsupported(why) => panic!("unsupported: {why}"),
        }
    }

    #[test]
    fn urls_keep_credentials_out_of_every_rendering() {
        let url = ProxyUrl::parse("http://alice:p%40ss-SECRET@proxy.corp:3128").expect("url");
        assert_eq!(url.shown(), "http://***@proxy.corp:3128");
        assert!(!format!("{url:?} {url}").contains("SECRET"));
        let proxies = Proxies::from_lookup(Some(&url), vars(&[]));
        let rendered = format!("{proxies:?} {}", proxies.describe());
        assert!(!rendered.contains("SECRET"), "{rendered}");
        let Route::Proxy(hop) = proxies.route(true, "ssmmessages.eu-west-1.amazonaws.com", 443)
        else {
            panic!("proxied");
        };
        assert!(!format!("{hop:?}").contains("SECRET"));
        // alice:p@ss-SECRET, percent-decoded, in Basic.
        assert_eq!(
            hop.authorization.as_ref().map(|h| h.as_bytes().to_vec()),
            Some(b"Basic YWxpY2U6cEBzcy1TRUNSRVQ=".to_vec())
        );
        assert!(
            hop.authorization
                .as_ref()
                .is_some_and(HeaderValue::is_sensitive)
        );
    }

    #[test]
    fn bad_urls_are_refused_without_quoting_them() {
        for bad in [
            "",
            "http://",
            "ftp://h:1",
            "https://h:1",
            "http://h:1/path",
            "http://h?x=1",
        ] {
            let err = ProxyUrl::parse(bad).expect_err(bad);
            assert!(!err.to_string().contains("h:1/path"), "{err}");
        }
        assert_eq!(
            ProxyUrl::parse("proxy:3128").expect("no scheme").shown(),
            "http://proxy:3128"
        );
    }

    #[test]
    fn variables_are_read_as_curl_reads_them() {
        let proxies = Proxies::from_lookup(
            None,
            vars(&[
                ("HTTPS_PROXY", "http://upper:1"),
                ("https_proxy", "http://lower:2"),
                ("HTTP_PROXY", "plain:3"),
            ]),
        );
        assert_eq!(proxies.source(), ProxySource::Environment);
        assert_eq!(
            via(&proxies, true, "a.example"),
            Some(("lower".into(), 2, false))
        );
        assert_eq!(
            via(&proxies, false, "a.example"),
            Some(("plain".into(), 3, false))
        );

        // CGI: HTTP_PROXY may come from a request header; only http_proxy counts.
        let cgi = Proxies::from_lookup(
            None,
            vars(&[("HTTP_PROXY", "http://evil:1"), ("REQUEST_METHOD", "GET")]),
        );
        assert_eq!(via(&cgi, false, "a.example"), None);

        let all = Proxies::from_lookup(None, vars(&[("ALL_PROXY", "http://all:9")]));
        assert_eq!(via(&all, true, "a.example"), Some(("all".into(), 9, false)));
        assert_eq!(
            via(&all, false, "a.example"),
            Some(("all".into(), 9, false))
        );

        let empty = Proxies::from_lookup(None, vars(&[("HTTPS_PROXY", "  ")]));
        assert_eq!(empty.source(), ProxySource::None);
        assert_eq!(via(&empty, true, "a.example"), None);

        let broken = Proxies::from_lookup(None, vars(&[("HTTPS_PROXY", "ftp://x:1")]));
        assert_eq!(broken.ignored().len(), 1, "{:?}", broken.ignored());
        assert!(broken.ignored()[0].starts_with("HTTPS_PROXY"));
    }

    #[test]
    fn no_proxy_matches_like_curl() {
        let proxies = Proxies::from_lookup(
            None,
            vars(&[
                ("HTTPS_PROXY", "http://p:1"),
                ("NO_PROXY", "example.com, .internal,10.0.0.0/8,::1"),
            ]),
        );
        for direct in [
            "example.com",
            "www.example.com",
            "db.internal",
            "10.1.2.3",
            "[::1]",
            "169.254.169.254",
        ] {
            assert_eq!(via(&proxies, true, direct), None, "{direct}");
        }
        for proxied in [
            "notexample.com",
            "internal.org",
            "11.0.0.1",
            "amazonaws.com",
        ] {
            assert!(via(&proxies, true, proxied).is_some(), "{proxied}");
        }
        let star = Proxies::from_lookup(
            None,
            vars(&[("https_proxy", "http://p:1"), ("no_proxy", "*")]),
        );
        assert_eq!(via(&star, true, "anything.example"), None);
        // NO_PROXY applies to the policy's proxy too.
        let url = ProxyUrl::parse("http://p:1").expect("url");
        let policy = Proxies::from_lookup(Some(&url), vars(&[("no_proxy", "127.0.0.1")]));
        assert_eq!(via(&policy, false, "127.0.0.1"), None);
        assert!(via(&policy, false, "127.0.0.2").is_some());
        assert_eq!(policy.source(), ProxySource::Policy);
    }

    #[test]
    fn the_sdk_gets_a_proxy_only_when_one_is_configured() {
        assert!(Proxies::none().sdk_config(false).is_none());
        let env = Proxies::from_lookup(None, vars(&[("https_proxy", "http://p:1")]));
        assert!(env.sdk_config(false).is_some());
        let tls = Proxies::from_lookup(None, vars(&[("https_proxy", "https://p:1")]));
        assert!(matches!(
            tls.route(true, "host.example", 443),
            Route::Unsupported(_)
        ));
    }

    /// A fake proxy that answers CONNECT with `answer`, then echoes what follows.
    async fn fake_proxy(answer: &'static [u8]) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") {
                if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                    return request;
                }
                request.push(byte[0]);
            }
            let _ = socket.write_all(answer).await;
            let mut rest = [0u8; 5];
            if socket.read_exact(&mut rest).await.is_ok() {
                let _ = socket.write_all(&rest).await;
            }
            request
        });
        (port, task)
    }

    fn hop(port: u16, credentials: bool) -> ProxyHop {
        let url = if credentials {
            format!("http://u:pw@127.0.0.1:{port}")
        } else {
            format!("http://127.0.0.1:{port}")
        };
        let url = ProxyUrl::parse(&url).expect("url");
        match Proxies::from_lookup(Some(&url), vars(&[])).route(true, "target.example", 443) {
            Route::Proxy(hop) => hop,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn connect_reads_exactly_the_head_and_sends_credentials() {
        // The proxy's head and the tunnel's first bytes arrive together: only the head is
        // consumed, the rest is the tunnel's.
        let (port, proxy) =
            fake_proxy(b"HTTP/1.1 200 Connection established\r\nX: y\r\n\r\nhello").await;
        let hop = hop(port, true);
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("tcp");
        connect_tunnel(&mut stream, &hop, "target.example", 443)
            .await
            .expect("tunnel");
        let mut first = [0u8; 5];
        stream.read_exact(&mut first).await.expect("tunnel bytes");
        assert_eq!(&first, b"hello");
        stream.write_all(b"world").await.expect("write");
        let mut echo = [0u8; 5];
        stream.read_exact(&mut echo).await.expect("echo");
        assert_eq!(&echo, b"world");
        let request = String::from_utf8(proxy.await.expect("join")).expect("utf8");
        assert!(
            request.starts_with("CONNECT target.example:443 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("Proxy-Authorization: Basic dTpwdw==\r\n"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn refusals_are_classified() {
        let cases: [(&'static [u8], bool, &str); 5] = [
            (
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
                false,
                "requires authentication",
            ),
            (
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
                true,
                "refused the credentials it was given (HTTP 407)",
            ),
            (
                b"HTTP/1.0 401 Unauthorized\r\n\r\n",
                true,
                "refused the credentials it was given (HTTP 401)",
            ),
            (
                b"HTTP/1.0 403 Forbidden\r\n\r\n",
                false,
                "HTTP 403 Forbidden",
            ),
            (
                b"SSH-2.0-OpenSSH\r\n\r\n",
                false,
                "not an HTTP/1 status line",
            ),
        ];
        for (answer, credentials, expected) in cases {
            let (port, _proxy) = fake_proxy(answer).await;
            let hop = hop(port, credentials);
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("tcp");
            let err = connect_tunnel(&mut stream, &hop, "target.example", 443)
                .await
                .expect_err("refused");
            let text = err.to_string();
            assert!(text.contains(expected), "{text}");
            assert!(!text.contains("pw"), "{text}");
        }
    }

    #[tokio::test]
    async fn an_endless_head_is_cut_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut scratch = [0u8; 512];
            let _ = socket.read(&mut scratch).await;
            let line = b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
            let _ = socket.write_all(b"HTTP/1.1 200 OK\r\n").await;
            for _ in 0..1000 {
                if socket.write_all(line).await.is_err() {
                    return;
                }
            }
        });
        let hop = hop(port, false);
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("tcp");
        let err = connect_tunnel(&mut stream, &hop, "target.example", 443)
            .await
            .expect_err("too long");
        assert!(err.to_string().contains("longer than"), "{err}");
    }
}
