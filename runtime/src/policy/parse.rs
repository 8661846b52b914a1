//! TOML → [`Policy`], reading the span-carrying document tree of the `toml` crate.
//!
//! Why not `#[derive(Deserialize)]`: serde errors know a byte offset but not the field path,
//! and `deny_unknown_fields` cannot be combined with the flattening that `[defaults]` and
//! `[[tunnel]]` would need to share their keys. Walking `toml::de::DeTable` (every key and value
//! carries its byte range) gives exact `file:line:col`, field path and value for every error,
//! at the cost of this small reader.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::error::Source;
use super::{
    AwsSettings, DEFAULT_BASE_DELAY, DEFAULT_MAX_DELAY, DEFAULT_PING_INTERVAL,
    DEFAULT_PONG_TIMEOUT, DEFAULT_RESUME_ATTEMPTS_BEFORE_RESTART, DEFAULT_ROTATE_BEFORE,
    DEFAULT_SESSIONS, DEFAULT_SLOW_READER_BUFFER, DEFAULT_SLOW_READER_TIMEOUT,
    DEFAULT_SLOW_READER_TUNNEL_BUFFER, DEFAULT_STABLE_AFTER, LocalAddress, MAX_SESSION_DURATION,
    MAX_SESSIONS, MAX_SLOW_READER_BUFFER, MIN_SESSION_DURATION, MIN_SLOW_READER_BUFFER, Policy,
    PolicyError, RecoverySettings, RotationSettings, SlowReaderSettings, TransportSettings,
    TunnelPluginSpecs, TunnelSpec,
};

mod metrics;
mod network;
mod plugins;

type Result<T> = std::result::Result<T, PolicyError>;

/// The longest duration any key accepts: far beyond every sensible setting, and short enough
/// that adding it to a clock reading can never overflow.
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

const ROOT_KEYS: &[&str] = &["defaults", "tunnel", "metrics"];
/// Keys valid in both `[defaults]` and `[[tunnel]]`.
const SHARED_KEYS: &[&str] = &[
    "region",
    "profile",
    "endpoint_url",
    "allow_insecure_endpoint",
    "aws_config_file",
    "aws_credentials_file",
    "reason",
    "ping_interval",
    "pong_timeout",
    "recovery",
    "sessions",
    "max_session_duration",
    "rotate_before",
    "slow_reader_buffer",
    "slow_reader_tunnel_buffer",
    "slow_reader_timeout",
    "reconnect",
    "health_check",
    "hook",
    "proxy",
    "ssmmessages_endpoint",
    "use_fips",
    "use_dual_stack",
];
/// Keys valid only in `[[tunnel]]`.
const TUNNEL_ONLY_KEYS: &[&str] = &[
    "name",
    "target",
    "remote_port",
    "remote_host",
    "local",
    "allow_non_loopback",
];
const RECOVERY_KEYS: &[&str] = &[
    "base_delay",
    "max_delay",
    "resume_attempts_before_restart",
    "give_up_after",
    "stable_after",
];

/// Longest StartSession `Reason` the API accepts.
const MAX_REASON_CHARS: usize = 256;
/// Longest SSM target the API accepts.
const MAX_TARGET_CHARS: usize = 400;

pub(super) fn parse(source_name: &str, text: &str) -> Result<Policy> {
    let src = Source {
        name: source_name,
        text,
    };
    let doc = DeTable::parse(text).map_err(|e| src.syntax(&e))?;
    let root = TableReader::new(&src, String::new(), &doc);
    root.check_keys(ROOT_KEYS, None)?;

    let defaults = match root.table("defaults")? {
        Some(table) => {
            table.check_keys(SHARED_KEYS, Some(TUNNEL_ONLY_KEYS))?;
            read_layer(&table)?
        }
        None => Layer::default(),
    };

    let Some(tunnels_value) = root.get("tunnel") else {
        return Err(src.invalid(
            &(0..0),
            "tunnel",
            "no [[tunnel]] table: a policy needs at least one tunnel",
        ));
    };
    let DeValue::Array(items) = tunnels_value.get_ref() else {
        return Err(src.bad_value(
            &tunnels_value.span(),
            "tunnel",
            format_args!(
                "is {}, expected an array of tables ([[tunnel]])",
                with_article(tunnels_value.get_ref())
            ),
        ));
    };
    if items.is_empty() {
        return Err(src.invalid(
            &tunnels_value.span(),
            "tunnel",
            "empty: a policy needs at least one tunnel",
        ));
    }

    let mut tunnels = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let path = format!("tunnel[{index}]");
        let DeValue::Table(_) = item.get_ref() else {
            return Err(src.bad_value(
                &item.span(),
                path,
                format_args!("is {}, expected a table", with_article(item.get_ref())),
            ));
        };
        let reader = TableReader::new(&src, path, item);
        tunnels.push(read_tunnel(&reader, &defaults)?);
    }
    check_conflicts(&src, &tunnels)?;
    let metrics = metrics::read_metrics(&root, &tunnels)?;

    Ok(Policy {
        tunnels: tunnels.into_iter().map(|t| t.spec).collect(),
        metrics,
    })
}

/// "an integer", "a string" …
fn with_article(value: &DeValue<'_>) -> String {
    let name = value.type_str();
    let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {name}")
}

/// A value together with where it was written, so that checks done after merging can still
/// point at the file.
#[derive(Debug, Clone)]
struct Sourced<T> {
    value: T,
    span: Range<usize>,
    field: String,
}

/// The keys shared by `[defaults]` and `[[tunnel]]`, as written in one of them.
#[derive(Debug, Default)]
struct Layer {
    region: Option<Sourced<String>>,
    profile: Option<Sourced<String>>,
    endpoint_url: Option<Sourced<String>>,
    allow_insecure_endpoint: Option<bool>,
    config_file: Option<Sourced<String>>,
    credentials_file: Option<Sourced<String>>,
    reason: Option<Sourced<String>>,
    ping_interval: Option<Sourced<Duration>>,
    pong_timeout: Option<Sourced<Duration>>,
    recovery: RecoveryLayer,
    sessions: Option<Sourced<u8>>,
    max_session_duration: Option<Sourced<Duration>>,
    rotate_before: Option<Sourced<Duration>>,
    slow_reader_buffer: Option<Sourced<u64>>,
    slow_reader_tunnel_buffer: Option<Sourced<u64>>,
    slow_reader_timeout: Option<Sourced<Duration>>,
    plugins: plugins::PluginLayer,
    network: network::NetworkLayer,
}

#[derive(Debug, Default)]
struct RecoveryLayer {
    base_delay: Option<Sourced<Duration>>,
    max_delay: Option<Sourced<Duration>>,
    resume_attempts_before_restart: Option<Sourced<u32>>,
    give_up_after: Option<Sourced<Option<Duration>>>,
    stable_after: Option<Sourced<Duration>>,
}

/// A parsed tunnel plus the spans needed for cross-tunnel checks.
struct ParsedTunnel {
    spec: TunnelSpec,
    path: String,
    name_span: Range<usize>,
    /// Span of `local`, or of the table when `local` was defaulted.
    local_span: Range<usize>,
    local_written: bool,
}

/// The entries of one table, in file order, with the field path prefix used in errors.
struct TableReader<'s, 't, 'i> {
    src: &'s Source<'s>,
    path: String,
    span: Range<usize>,
    entries: Vec<(&'t Spanned<DeString<'i>>, &'t Spanned<DeValue<'i>>)>,
}

impl<'s, 't, 'i> TableReader<'s, 't, 'i> {
    /// `value` must hold a table (callers check); anything else reads as empty.
    fn new(src: &'s Source<'s>, path: String, value: &'t Spanned<impl AsTable<'i>>) -> Self {
        let mut entries: Vec<_> = value
            .get_ref()
            .as_de_table()
            .map(|t| t.iter().collect())
            .unwrap_or_default();
        // File order, so that the first error reported is the first one in the file.
        entries.sort_by_key(|(k, _)| k.span().start);
        Self {
            src,
            path,
            span: value.span(),
            entries,
        }
    }

    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Rejects keys not in `allowed`; `elsewhere` lists keys valid in a sibling table, for a
    /// more helpful message.
    fn check_keys(&self, allowed: &[&str], elsewhere: Option<&[&str]>) -> Result<()> {
        for (key, _) in &self.entries {
            let name: &str = key.get_ref();
            if allowed.contains(&name) {
                continue;
            }
            let message = if elsewhere.is_some_and(|keys| keys.contains(&name)) {
                "is only valid in a [[tunnel]] table, not in [defaults]".to_owned()
            } else {
                format!("unknown key (expected one of: {})", allowed.join(", "))
            };
            return Err(self.src.invalid(&key.span(), self.field(name), message));
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Option<&'t Spanned<DeValue<'i>>> {
        self.entries
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, v)| *v)
    }

    fn type_error(&self, key: &str, value: &Spanned<DeValue<'_>>, expected: &str) -> PolicyError {
        self.src.bad_value(
            &value.span(),
            self.field(key),
            format_args!("is {}, expected {expected}", with_article(value.get_ref())),
        )
    }

    fn string(&self, key: &str) -> Result<Option<Sourced<String>>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        match value.get_ref() {
            DeValue::String(s) => Ok(Some(Sourced {
                value: s.to_string(),
                span: value.span(),
                field: self.field(key),
            })),
            _ => Err(self.type_error(key, value, "a string")),
        }
    }

    /// A string that must not be empty or contain whitespace/control characters.
    fn word(&self, key: &str) -> Result<Option<Sourced<String>>> {
        let value = self.string(key)?;
        if let Some(v) = &value {
            if v.value.is_empty() {
                return Err(self.src.invalid(&v.span, &v.field, "must not be empty"));
            }
            if v.value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(self.src.bad_value(
                    &v.span,
                    &v.field,
                    "must not contain spaces or control characters",
                ));
            }
        }
        Ok(value)
    }

    fn integer(&self, key: &str) -> Result<Option<Sourced<i64>>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        match value.get_ref() {
            DeValue::Integer(i) => {
                let parsed = i64::from_str_radix(i.as_str(), i.radix()).map_err(|_| {
                    self.src
                        .bad_value(&value.span(), self.field(key), "is out of range")
                })?;
                Ok(Some(Sourced {
                    value: parsed,
                    span: value.span(),
                    field: self.field(key),
                }))
            }
            _ => Err(self.type_error(key, value, "an integer")),
        }
    }

    /// A size in bytes: an integer, or a string such as `"512KiB"`, `"16MiB"`, `"1GiB"`
    /// (binary units; `KB`, `MB`, `GB` are decimal), within `range`.
    fn size(
        &self,
        key: &str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<Option<Sourced<u64>>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let expected = "a size such as \"512KiB\", \"16MiB\" or \"1GiB\", or a number of bytes";
        let bytes = match value.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .ok()
                .and_then(|n| u64::try_from(n).ok()),
            DeValue::String(text) => parse_size(text),
            _ => return Err(self.type_error(key, value, expected)),
        };
        let Some(bytes) = bytes else {
            return Err(self.src.bad_value(
                &value.span(),
                self.field(key),
                format_args!("is not {expected}"),
            ));
        };
        if !range.contains(&bytes) {
            return Err(self.src.bad_value(
                &value.span(),
                self.field(key),
                format_args!(
                    "must be between {} and {}",
                    show_size(*range.start()),
                    show_size(*range.end())
                ),
            ));
        }
        Ok(Some(Sourced {
            value: bytes,
            span: value.span(),
            field: self.field(key),
        }))
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        match value.get_ref() {
            DeValue::Boolean(b) => Ok(Some(*b)),
            _ => Err(self.type_error(key, value, "true or false")),
        }
    }

    /// A humantime duration string; `allow_never` also accepts `"never"` (→ `None`).
    fn duration_or_never(
        &self,
        key: &str,
        allow_never: bool,
        allow_zero: bool,
    ) -> Result<Option<Sourced<Option<Duration>>>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let expected = if allow_never {
            "a duration such as \"30s\", \"5m\", \"1h\" or \"never\""
        } else {
            "a duration such as \"250ms\", \"20s\" or \"1h\""
        };
        let DeValue::String(text) = value.get_ref() else {
            return Err(self.type_error(key, value, expected));
        };
        let sourced = |v| Sourced {
            value: v,
            span: value.span(),
            field: self.field(key),
        };
        if allow_never && text.trim() == "never" {
            return Ok(Some(sourced(None)));
        }
        let duration = humantime::parse_duration(text.trim()).map_err(|e| {
            self.src.bad_value(
                &value.span(),
                self.field(key),
                format_args!("is not {expected} ({e})"),
            )
        })?;
        if duration > MAX_DURATION {
            return Err(self.src.bad_value(
                &value.span(),
                self.field(key),
                format_args!(
                    "is longer than {}, the longest any setting accepts",
                    humantime::format_duration(MAX_DURATION)
                ),
            ));
        }
        if duration.is_zero() && !allow_zero {
            return Err(self.src.bad_value(
                &value.span(),
                self.field(key),
                "must be longer than zero",
            ));
        }
        Ok(Some(sourced(Some(duration))))
    }

    fn duration(&self, key: &str, allow_zero: bool) -> Result<Option<Sourced<Duration>>> {
        Ok(self
            .duration_or_never(key, false, allow_zero)?
            .and_then(|s| {
                s.value.map(|value| Sourced {
                    value,
                    span: s.span,
                    field: s.field,
                })
            }))
    }

    fn table(&self, key: &str) -> Result<Option<TableReader<'s, 't, 'i>>> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        match value.get_ref() {
            DeValue::Table(_) => Ok(Some(TableReader::new(self.src, self.field(key), value))),
            _ => Err(self.type_error(key, value, "a table")),
        }
    }

    fn missing(&self, key: &str, what: &str) -> PolicyError {
        self.src.invalid(
            &self.span,
            self.field(key),
            format!("missing; every [[tunnel]] needs {what}"),
        )
    }
}

/// `"16MiB"` → 16 777 216; `None` for anything else. Units: B, KiB, MiB, GiB (binary) and
/// KB, MB, GB (decimal); no unit means bytes.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// A size for messages: `16MiB`, `64KiB`, or bytes.
fn show_size(bytes: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// Lets [`TableReader::new`] take both the document root and nested values.
trait AsTable<'i> {
    fn as_de_table(&self) -> Option<&DeTable<'i>>;
}

impl<'i> AsTable<'i> for DeTable<'i> {
    fn as_de_table(&self) -> Option<&DeTable<'i>> {
        Some(self)
    }
}

impl<'i> AsTable<'i> for DeValue<'i> {
    fn as_de_table(&self) -> Option<&DeTable<'i>> {
        self.as_table()
    }
}

/// Reads the shared AWS/transport/recovery keys of `[defaults]` or one `[[tunnel]]`.
fn read_layer(table: &TableReader<'_, '_, '_>) -> Result<Layer> {
    let region = table.word("region")?;
    if let Some(r) = &region {
        let ok = r.value.len() <= 64
            && r.value
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            return Err(table.src.bad_value(
                &r.span,
                &r.field,
                "is not an AWS region name (e.g. \"us-east-1\")",
            ));
        }
    }
    let profile = table.word("profile")?;
    let endpoint_url = table.word("endpoint_url")?;
    if let Some(e) = &endpoint_url {
        check_endpoint_url(table.src, e)?;
    }
    let allow_insecure_endpoint = table.boolean("allow_insecure_endpoint")?;
    let config_file = table.string("aws_config_file")?;
    let credentials_file = table.string("aws_credentials_file")?;
    for file in [&config_file, &credentials_file].into_iter().flatten() {
        if file.value.trim().is_empty() {
            return Err(table
                .src
                .invalid(&file.span, &file.field, "must not be empty"));
        }
    }
    let reason = table.string("reason")?;
    if let Some(r) = &reason {
        let chars = r.value.chars().count();
        if chars == 0 || chars > MAX_REASON_CHARS {
            return Err(table.src.bad_value(
                &r.span,
                &r.field,
                format_args!("must be 1-{MAX_REASON_CHARS} characters long"),
            ));
        }
    }
    let ping_interval = table.duration("ping_interval", false)?;
    let pong_timeout = table.duration("pong_timeout", false)?;
    let recovery = match table.table("recovery")? {
        Some(rec) => {
            rec.check_keys(RECOVERY_KEYS, None)?;
            read_recovery(&rec)?
        }
        None => RecoveryLayer::default(),
    };
    let sessions = match table.integer("sessions")? {
        Some(n) => {
            let value = u8::try_from(n.value)
                .ok()
                .filter(|k| (1..=MAX_SESSIONS).contains(k))
                .ok_or_else(|| {
                    table.src.bad_value(
                        &n.span,
                        &n.field,
                        format_args!("must be between 1 and {MAX_SESSIONS}"),
                    )
                })?;
            Some(Sourced {
                value,
                span: n.span,
                field: n.field,
            })
        }
        None => None,
    };
    let max_session_duration = table.duration("max_session_duration", false)?;
    if let Some(d) = &max_session_duration
        && !(MIN_SESSION_DURATION..=MAX_SESSION_DURATION).contains(&d.value)
    {
        return Err(table.src.bad_value(
            &d.span,
            &d.field,
            "must be between 1s and 24h (the service allows 1 to 1440 minutes)",
        ));
    }
    let buffers = MIN_SLOW_READER_BUFFER..=MAX_SLOW_READER_BUFFER;
    Ok(Layer {
        region,
        profile,
        endpoint_url,
        allow_insecure_endpoint,
        config_file,
        credentials_file,
        reason,
        ping_interval,
        pong_timeout,
        recovery,
        sessions,
        max_session_duration,
        rotate_before: table.duration("rotate_before", false)?,
        slow_reader_buffer: table.size("slow_reader_buffer", buffers.clone())?,
        slow_reader_tunnel_buffer: table.size("slow_reader_tunnel_buffer", buffers)?,
        slow_reader_timeout: table.duration("slow_reader_timeout", false)?,
        plugins: plugins::read_plugins(table)?,
        network: network::read_network(table)?,
    })
}

fn check_endpoint_url(src: &Source<'_>, e: &Sourced<String>) -> Result<()> {
    let uri: http::Uri = e.value.parse().map_err(|err| {
        src.bad_value(
            &e.span,
            &e.field,
            format_args!("is not a URL ({err}); expected http(s)://host[:port]"),
        )
    })?;
    let scheme_ok = matches!(uri.scheme_str(), Some("http" | "https"));
    if !scheme_ok || uri.host().is_none_or(str::is_empty) {
        return Err(src.bad_value(
            &e.span,
            &e.field,
            "is not an http(s) URL; expected http(s)://host[:port]",
        ));
    }
    Ok(())
}

fn read_recovery(table: &TableReader<'_, '_, '_>) -> Result<RecoveryLayer> {
    let resume_attempts_before_restart = match table.integer("resume_attempts_before_restart")? {
        Some(n) => {
            let value = u32::try_from(n.value)
                .ok()
                .filter(|v| *v >= 1)
                .ok_or_else(|| {
                    table.src.bad_value(
                        &n.span,
                        &n.field,
                        "must be at least 1 (and fit in 32 bits)",
                    )
                })?;
            Some(Sourced {
                value,
                span: n.span,
                field: n.field,
            })
        }
        None => None,
    };
    Ok(RecoveryLayer {
        base_delay: table.duration("base_delay", false)?,
        max_delay: table.duration("max_delay", false)?,
        resume_attempts_before_restart,
        give_up_after: table.duration_or_never("give_up_after", true, false)?,
        stable_after: table.duration("stable_after", true)?,
    })
}

/// The tunnel's value if set, else `[defaults]`'s.
fn pick<'a, T>(
    tunnel: &'a Option<Sourced<T>>,
    defaults: &'a Option<Sourced<T>>,
) -> Option<&'a Sourced<T>> {
    tunnel.as_ref().or(defaults.as_ref())
}

fn value_or<T: Clone>(chosen: Option<&Sourced<T>>, builtin: T) -> T {
    chosen.map_or(builtin, |s| s.value.clone())
}

fn read_tunnel(table: &TableReader<'_, '_, '_>, defaults: &Layer) -> Result<ParsedTunnel> {
    let mut allowed: Vec<&str> = TUNNEL_ONLY_KEYS.to_vec();
    allowed.extend_from_slice(SHARED_KEYS);
    table.check_keys(&allowed, None)?;
    let src = table.src;

    let name = table
        .string("name")?
        .ok_or_else(|| table.missing("name", "a unique name"))?;
    let name_ok = !name.value.is_empty()
        && name
            .value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !name_ok {
        return Err(src.bad_value(
            &name.span,
            &name.field,
            "is not a valid name (letters, digits, '_', '.', '-')",
        ));
    }

    let target = table.string("target")?.ok_or_else(|| {
        table.missing(
            "target",
            "a target (an instance id such as i-0123456789abcdef0)",
        )
    })?;
    if target.value.starts_with(crate::aws::TAG_PREFIX) {
        network::check_tag_target(src, &target)?;
    } else if !is_target(&target.value) {
        return Err(src.bad_value(
            &target.span,
            &target.field,
            "is not an SSM target (i-…, mi-… or ecs:…)",
        ));
    }

    let port = table
        .integer("remote_port")?
        .ok_or_else(|| table.missing("remote_port", "a remote_port (1-65535)"))?;
    let remote_port = u16::try_from(port.value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| src.bad_value(&port.span, &port.field, "is not a port (1-65535)"))?;

    let remote_host = table.word("remote_host")?;
    if let Some(h) = &remote_host
        && h.value.len() > 253
    {
        return Err(src.bad_value(&h.span, &h.field, "is longer than 253 characters"));
    }

    let allow_non_loopback = table.boolean("allow_non_loopback")?.unwrap_or(false);
    let local_value = table.get("local");
    let (local, local_span, local_written) = match local_value {
        Some(value) => {
            let local = parse_local(table, value)?;
            if let LocalAddress::Tcp(addr) = &local
                && !addr.ip().is_loopback()
                && !allow_non_loopback
            {
                return Err(src.bad_value(
                    &value.span(),
                    table.field("local"),
                    "is not a loopback address; set allow_non_loopback = true to expose the \
                     tunnel to the network",
                ));
            }
            (local, value.span(), true)
        }
        None => (
            LocalAddress::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, remote_port))),
            table.span.clone(),
            false,
        ),
    };

    let layer = read_layer(table)?;
    let endpoint = pick(&layer.endpoint_url, &defaults.endpoint_url);
    let allow_insecure = layer
        .allow_insecure_endpoint
        .or(defaults.allow_insecure_endpoint)
        .unwrap_or(false);
    if let Some(e) = endpoint
        && !allow_insecure
        && crate::aws::is_cleartext_to_another_host(&e.value)
    {
        return Err(src.bad_value(
            &e.span,
            &e.field,
            "sends session tokens unencrypted to another host; use https, a loopback \
             address, or set allow_insecure_endpoint = true",
        ));
    }
    let network = network::merge(src, &layer.network, &defaults.network, allow_insecure)?;
    let aws = AwsSettings {
        proxy: network.proxy,
        ssmmessages_endpoint: network.ssmmessages_endpoint,
        use_fips: network.use_fips,
        use_dual_stack: network.use_dual_stack,
        region: pick(&layer.region, &defaults.region).map(|s| s.value.clone()),
        profile: pick(&layer.profile, &defaults.profile).map(|s| s.value.clone()),
        endpoint_url: pick(&layer.endpoint_url, &defaults.endpoint_url).map(|s| s.value.clone()),
        config_file: pick(&layer.config_file, &defaults.config_file)
            .map(|s| s.value.clone().into()),
        credentials_file: pick(&layer.credentials_file, &defaults.credentials_file)
            .map(|s| s.value.clone().into()),
    };
    let reason = pick(&layer.reason, &defaults.reason).map(|s| s.value.clone());

    let ping = pick(&layer.ping_interval, &defaults.ping_interval);
    let pong = pick(&layer.pong_timeout, &defaults.pong_timeout);
    let transport = TransportSettings {
        ping_interval: value_or(ping, DEFAULT_PING_INTERVAL),
        pong_timeout: value_or(pong, DEFAULT_PONG_TIMEOUT),
    };
    // A pong can only arrive after a ping, so a timeout shorter than the ping period would
    // declare every healthy socket dead.
    if transport.pong_timeout <= transport.ping_interval {
        return Err(ordering_error(
            src,
            &table.path,
            (pong, "pong_timeout", transport.pong_timeout),
            (ping, "ping_interval", transport.ping_interval),
            "longer than",
        ));
    }

    let (r, d) = (&layer.recovery, &defaults.recovery);
    let base = pick(&r.base_delay, &d.base_delay);
    let max = pick(&r.max_delay, &d.max_delay);
    let recovery = RecoverySettings {
        base_delay: value_or(base, DEFAULT_BASE_DELAY),
        max_delay: value_or(max, DEFAULT_MAX_DELAY),
        resume_attempts_before_restart: value_or(
            pick(
                &r.resume_attempts_before_restart,
                &d.resume_attempts_before_restart,
            ),
            DEFAULT_RESUME_ATTEMPTS_BEFORE_RESTART,
        ),
        give_up_after: value_or(pick(&r.give_up_after, &d.give_up_after), None),
        stable_after: value_or(pick(&r.stable_after, &d.stable_after), DEFAULT_STABLE_AFTER),
    };
    if recovery.max_delay < recovery.base_delay {
        return Err(ordering_error(
            src,
            &format!("{}.recovery", table.path),
            (max, "max_delay", recovery.max_delay),
            (base, "base_delay", recovery.base_delay),
            "at least",
        ));
    }

    let sessions = value_or(pick(&layer.sessions, &defaults.sessions), DEFAULT_SESSIONS);
    let max_duration = pick(&layer.max_session_duration, &defaults.max_session_duration);
    let rotate_before = pick(&layer.rotate_before, &defaults.rotate_before);
    let rotation = match max_duration {
        Some(max) => {
            let before = value_or(rotate_before, DEFAULT_ROTATE_BEFORE);
            // The successor needs time to start before the predecessor ends.
            if before >= max.value {
                return Err(ordering_error(
                    src,
                    &table.path,
                    (rotate_before, "rotate_before", before),
                    (Some(max), "max_session_duration", max.value),
                    "shorter than",
                ));
            }
            Some(RotationSettings {
                max_session_duration: max.value,
                rotate_before: before,
            })
        }
        None => {
            if let Some(before) = &layer.rotate_before {
                return Err(src.invalid(
                    &before.span,
                    &before.field,
                    "has no effect without max_session_duration; set max_session_duration \
                     (the maximum session duration of the account's Session Manager \
                     preferences) as well",
                ));
            }
            None
        }
    };
    let buffer = pick(&layer.slow_reader_buffer, &defaults.slow_reader_buffer);
    let tunnel_buffer = pick(
        &layer.slow_reader_tunnel_buffer,
        &defaults.slow_reader_tunnel_buffer,
    );
    let slow_reader = SlowReaderSettings {
        buffer: value_or(buffer, DEFAULT_SLOW_READER_BUFFER),
        tunnel_buffer: value_or(tunnel_buffer, DEFAULT_SLOW_READER_TUNNEL_BUFFER),
        timeout: value_or(
            pick(&layer.slow_reader_timeout, &defaults.slow_reader_timeout),
            DEFAULT_SLOW_READER_TIMEOUT,
        ),
    };
    if slow_reader.tunnel_buffer < slow_reader.buffer {
        let describe = |sourced: Option<&Sourced<u64>>, key: &str, value: u64| match sourced {
            Some(s) => format!("{key} ({}, set at {})", show_size(value), s.field),
            None => format!("{key} ({}, built-in default)", show_size(value)),
        };
        let (at, message) = match (tunnel_buffer, buffer) {
            (Some(at), _) => (
                at,
                format!(
                    "must be at least {}",
                    describe(buffer, "slow_reader_buffer", slow_reader.buffer)
                ),
            ),
            (None, Some(at)) => (
                at,
                format!(
                    "is too large: {} must be at least slow_reader_buffer; set \
                     slow_reader_tunnel_buffer as well",
                    describe(None, "slow_reader_tunnel_buffer", slow_reader.tunnel_buffer)
                ),
            ),
            (None, None) => {
                return Err(src.invalid(
                    &(0..0),
                    format!("{}.slow_reader_buffer", table.path),
                    "built-in defaults are inconsistent",
                ));
            }
        };
        return Err(src.bad_value(&at.span, &at.field, message));
    }

    Ok(ParsedTunnel {
        path: table.path.clone(),
        name_span: name.span.clone(),
        local_span,
        local_written,
        spec: TunnelSpec {
            name: name.value,
            target: target.value,
            remote_port,
            remote_host: remote_host.map(|h| h.value),
            local,
            reason,
            aws,
            transport,
            recovery,
            sessions,
            rotation,
            slow_reader,
            plugins: TunnelPluginSpecs {
                reconnect: layer
                    .plugins
                    .reconnect
                    .or_else(|| defaults.plugins.reconnect.clone()),
                health_checks: layer
                    .plugins
                    .health_checks
                    .or_else(|| defaults.plugins.health_checks.clone())
                    .unwrap_or_default(),
                hooks: layer
                    .plugins
                    .hooks
                    .or_else(|| defaults.plugins.hooks.clone())
                    .unwrap_or_default(),
            },
        },
    })
}

/// One side of an ordering check: the merged value and where it was written, if anywhere.
type Bound<'a> = (Option<&'a Sourced<Duration>>, &'a str, Duration);

/// "`first` must be `relation` `second`", located at whichever of the two was written in the
/// file (`first` preferred); at least one was, since the built-in defaults are consistent.
fn ordering_error(
    src: &Source<'_>,
    path: &str,
    first: Bound<'_>,
    second: Bound<'_>,
    relation: &str,
) -> PolicyError {
    let describe = |(sourced, key, value): Bound<'_>| {
        let shown = humantime::format_duration(value);
        match sourced {
            Some(s) => format!("{key} ({shown}, set at {})", s.field),
            None => format!("{key} ({shown}, built-in default)"),
        }
    };
    match (first.0, second.0) {
        (Some(at), _) => src.bad_value(
            &at.span,
            &at.field,
            format_args!("must be {relation} {}", describe(second)),
        ),
        (None, Some(at)) => src.bad_value(
            &at.span,
            &at.field,
            format_args!(
                "is too large: {} must be {relation} {}; set {} as well",
                describe(first),
                second.1,
                first.1
            ),
        ),
        (None, None) => src.invalid(
            &(0..0),
            format!("{path}.{}", first.1),
            "built-in defaults are inconsistent",
        ),
    }
}

/// `i-…` / `mi-…` (alphanumeric id) or an ECS target `ecs:…`, as StartSession accepts.
fn is_target(target: &str) -> bool {
    if target.len() > MAX_TARGET_CHARS
        || target.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return false;
    }
    if let Some(rest) = target.strip_prefix("ecs:") {
        return !rest.is_empty();
    }
    target
        .strip_prefix("i-")
        .or_else(|| target.strip_prefix("mi-"))
        .is_some_and(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// `local`: an integer port, `"PORT"`, `"IP:PORT"`, `"[IPv6]:PORT"`, `"localhost:PORT"` or
/// `"unix:PATH"`.
fn parse_local(
    table: &TableReader<'_, '_, '_>,
    value: &Spanned<DeValue<'_>>,
) -> Result<LocalAddress> {
    let field = table.field("local");
    let bad = |why: &str| table.src.bad_value(&value.span(), &field, why);
    let tcp = |p: u16| LocalAddress::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, p)));
    match value.get_ref() {
        DeValue::Integer(i) => {
            let n =
                i64::from_str_radix(i.as_str(), i.radix()).map_err(|_| bad("is out of range"))?;
            u16::try_from(n)
                .map(tcp)
                .map_err(|_| bad("is not a port (0-65535)"))
        }
        DeValue::String(s) => {
            if let Some(path) = s.strip_prefix("unix:") {
                return parse_unix_path(path).map_err(bad);
            }
            let s = s.trim();
            if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()) {
                return match s.parse::<u16>() {
                    Ok(p) => Ok(tcp(p)),
                    Err(_) => Err(bad("is not a port (0-65535)")),
                };
            }
            if let Ok(addr) = s.parse::<SocketAddr>() {
                return Ok(LocalAddress::Tcp(addr));
            }
            if let Some(port) = s.strip_prefix("localhost:") {
                return port
                    .parse::<u16>()
                    .map(|p| {
                        LocalAddress::Tcp(SocketAddr::from((IpAddr::V4(Ipv4Addr::LOCALHOST), p)))
                    })
                    .map_err(|_| bad("is not a port (0-65535) after localhost:"));
            }
            Err(bad(
                "is not a local address (\"PORT\", \"IP:PORT\", \"[IPv6]:PORT\" or \"unix:PATH\")",
            ))
        }
        _ => Err(table.type_error("local", value, "a string such as \"127.0.0.1:15432\"")),
    }
}

/// Longest Unix socket path the kernel takes (`sun_path` is 108 bytes on Linux, 104 on the
/// BSDs and macOS, including the terminating NUL).
const MAX_UNIX_PATH: usize = 103;

fn parse_unix_path(path: &str) -> std::result::Result<LocalAddress, &'static str> {
    if path.is_empty() {
        return Err("names no path after unix:");
    }
    if path.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    if path.len() > MAX_UNIX_PATH {
        return Err("is longer than the 103 bytes a Unix socket path may have");
    }
    if path.ends_with('/') {
        return Err("names a directory; give the socket's file name");
    }
    Ok(LocalAddress::Unix(path.into()))
}

/// Two listeners on one address cannot coexist; an unspecified address (`0.0.0.0`, `::`)
/// overlaps every address of its family on the same port.
fn addresses_clash(a: &LocalAddress, b: &LocalAddress) -> bool {
    match (a, b) {
        (LocalAddress::Tcp(a), LocalAddress::Tcp(b)) => {
            if a.port() == 0 || b.port() == 0 || a.port() != b.port() || a.is_ipv4() != b.is_ipv4()
            {
                return false;
            }
            a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
        }
        (LocalAddress::Unix(a), LocalAddress::Unix(b)) => a == b,
        _ => false,
    }
}

fn check_conflicts(src: &Source<'_>, tunnels: &[ParsedTunnel]) -> Result<()> {
    let mut names: HashMap<&str, &ParsedTunnel> = HashMap::new();
    for (i, t) in tunnels.iter().enumerate() {
        if let Some(first) = names.get(t.spec.name.as_str()) {
            return Err(src.conflict(
                &t.name_span,
                format!("{}.name", t.path),
                format!(
                    "duplicate tunnel name \"{}\": also used by {} at {}",
                    t.spec.name,
                    first.path,
                    src.location(first.name_span.start)
                ),
            ));
        }
        names.insert(&t.spec.name, t);
        for earlier in &tunnels[..i] {
            if addresses_clash(&earlier.spec.local, &t.spec.local) {
                let how = if t.local_written {
                    String::new()
                } else {
                    " (the default, from remote_port)".to_owned()
                };
                return Err(src.conflict(
                    &t.local_span,
                    format!("{}.local", t.path),
                    format!(
                        "{}{how} clashes with local address {} of tunnel \"{}\" ({} at {}); \
                         both tunnels \"{}\" and \"{}\" cannot listen there",
                        t.spec.local,
                        earlier.spec.local,
                        earlier.spec.name,
                        earlier.path,
                        src.location(earlier.local_span.start),
                        earlier.spec.name,
                        t.spec.name,
                    ),
                ));
            }
        }
    }
    Ok(())
}
