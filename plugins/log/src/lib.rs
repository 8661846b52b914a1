//! `log`: an event hook (world `ssm-tether:plugin/event-hook`) that writes every lifecycle
//! event as one structured line (logfmt or JSON) into the runtime's log through `host.log`.
//!
//! [`render`] turns an event into a level and a line; it is tested natively. The component
//! glue at the bottom (the `ssm-tether-plugin` SDK's [`EventHook`]) calls `host.log`.

use ssm_tether_plugin::types::{
    ApiErrorClass, ApiFailure, Cause, EventKind, ForwardingMode, LogLevel, PluginRole,
    ProbeOutcome, SessionRef, TunnelEvent,
};
use ssm_tether_plugin::{Config, EventHook, RawConfig, host};

/// The config keys, as in the policy file's `config` table.
pub const KEYS: &[&str] = &["format", "min_level", "skip"];

/// Every event name, as written in lines and accepted by `skip`.
pub const EVENTS: &[&str] = &[
    "listening",
    "session_started",
    "connected",
    "forwarding",
    "disconnected",
    "attempt_failed",
    "resuming",
    "resumed",
    "restarting",
    "restarted",
    "giving_up",
    "connection_opened",
    "connection_closed",
    "destination_unreachable",
    "probe_result",
    "plugin_failed",
    "stopped",
];

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error"];

/// Line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `event=disconnected tunnel=db cause=ping_timeout`
    Logfmt,
    /// `{"event":"disconnected","tunnel":"db","cause":"ping_timeout"}`
    Json,
}

/// The hook's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Line format.
    pub format: Format,
    /// Events below this level are not logged (`trace`..`error`).
    pub min_level: u8,
    /// Event names not to log.
    pub skip: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            format: Format::Logfmt,
            min_level: 0,
            skip: Vec::new(),
        }
    }
}

impl Settings {
    /// Parses and validates `init`'s JSON; every error names the key.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let config = Config::parse(json, KEYS)?;
        let format = match config.choice("format", &["logfmt", "json"])? {
            Some("json") => Format::Json,
            _ => Format::Logfmt,
        };
        let min_level = config
            .choice("min_level", LEVELS)?
            .and_then(|l| LEVELS.iter().position(|x| *x == l))
            .map_or(0, |i| u8::try_from(i).unwrap_or(0));
        let skip = config.strings("skip")?.unwrap_or_default();
        for name in &skip {
            let normalized = name.replace('-', "_");
            if !EVENTS.contains(&normalized.as_str()) {
                return Err(format!(
                    "`skip`: unknown event {name:?}; events: {}",
                    EVENTS.join(", ")
                ));
            }
        }
        Ok(Self {
            format,
            min_level,
            skip: skip.into_iter().map(|n| n.replace('-', "_")).collect(),
        })
    }
}

/// A field value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Text.
    Str(String),
    /// A number.
    Num(u64),
    /// A flag.
    Bool(bool),
}

type Fields = Vec<(&'static str, Value)>;

fn s(text: impl Into<String>) -> Value {
    Value::Str(text.into())
}

fn level_rank(level: LogLevel) -> u8 {
    match level {
        LogLevel::Trace => 0,
        LogLevel::Debug => 1,
        LogLevel::Info => 2,
        LogLevel::Warn => 3,
        LogLevel::Error => 4,
    }
}

/// The WIT name of an API error class, with underscores.
fn class_name(class: ApiErrorClass) -> &'static str {
    match class {
        ApiErrorClass::DoesNotExist => "does_not_exist",
        ApiErrorClass::AccessDenied => "access_denied",
        ApiErrorClass::ExpiredToken => "expired_token",
        ApiErrorClass::Throttling => "throttling",
        ApiErrorClass::InvalidDocument => "invalid_document",
        ApiErrorClass::TargetNotConnected => "target_not_connected",
        ApiErrorClass::Credentials => "credentials",
        ApiErrorClass::Configuration => "configuration",
        ApiErrorClass::Transport => "transport",
        ApiErrorClass::ServerError => "server_error",
        ApiErrorClass::Other => "other",
    }
}

fn api_fields(fields: &mut Fields, failure: &ApiFailure) {
    fields.push(("class", s(class_name(failure.class))));
    if let Some(code) = &failure.code {
        fields.push(("code", s(code.clone())));
    }
    fields.push(("detail", s(failure.message.clone())));
}

/// `cause=…` plus its details.
fn cause_fields(fields: &mut Fields, cause: &Cause) {
    let (kind, detail) = match cause {
        Cause::PlannedClose => ("planned_close", None),
        Cause::TransportError(d) => ("transport_error", Some(d)),
        Cause::PingTimeout => ("ping_timeout", None),
        Cause::ConnectFailed(d) => ("connect_failed", Some(d)),
        Cause::ResumeFailed(f) => {
            fields.push(("cause", s("resume_failed")));
            return api_fields(fields, f);
        }
        Cause::StartFailed(f) => {
            fields.push(("cause", s("start_failed")));
            return api_fields(fields, f);
        }
        Cause::HandshakeFailed(d) => ("handshake_failed", Some(d)),
        Cause::SessionGone(d) => ("session_gone", Some(d)),
        Cause::ProtocolError(d) => ("protocol_error", Some(d)),
        Cause::ProbeFailed(p) => {
            fields.push(("cause", s("probe_failed")));
            fields.push(("check", s(p.check.clone())));
            fields.push((
                "consecutive_failures",
                Value::Num(u64::from(p.consecutive_failures)),
            ));
            fields.push(("detail", s(p.reason.clone())));
            return;
        }
        Cause::MaxDurationReached => ("max_duration_reached", None),
    };
    fields.push(("cause", s(kind)));
    if let Some(detail) = detail {
        fields.push(("detail", s(detail.clone())));
    }
}

/// The event's name, level and fields (after `event` and `tunnel`).
pub fn describe(kind: &EventKind) -> (&'static str, LogLevel, Fields) {
    let mut f: Fields = Vec::new();
    let (name, level) = match kind {
        EventKind::Listening(local) => {
            f.push(("local", s(local.clone())));
            ("listening", LogLevel::Info)
        }
        EventKind::SessionStarted(id) => {
            f.push(("session_id", s(id.clone())));
            ("session_started", LogLevel::Info)
        }
        EventKind::Connected(id) => {
            f.push(("session_id", s(id.clone())));
            ("connected", LogLevel::Info)
        }
        EventKind::Forwarding(info) => {
            f.push(("session_id", s(info.session_id.clone())));
            let mode = match info.mode {
                ForwardingMode::Mux => "mux",
                ForwardingMode::Basic => "basic",
            };
            f.push(("mode", s(mode)));
            f.push(("agent_version", s(info.agent_version.clone())));
            ("forwarding", LogLevel::Info)
        }
        EventKind::Disconnected(cause) => {
            cause_fields(&mut f, cause);
            ("disconnected", LogLevel::Warn)
        }
        EventKind::AttemptFailed(info) => {
            f.push(("attempt", Value::Num(u64::from(info.attempt))));
            cause_fields(&mut f, &info.cause);
            ("attempt_failed", LogLevel::Warn)
        }
        EventKind::Resuming(info) => {
            f.push(("attempt", Value::Num(u64::from(info.attempt))));
            f.push(("outage_ms", Value::Num(info.outage_ms)));
            ("resuming", LogLevel::Info)
        }
        EventKind::Resumed(outage_ms) => {
            f.push(("outage_ms", Value::Num(*outage_ms)));
            ("resumed", LogLevel::Info)
        }
        EventKind::Restarting(info) => {
            f.push(("attempt", Value::Num(u64::from(info.attempt))));
            f.push(("outage_ms", Value::Num(info.outage_ms)));
            cause_fields(&mut f, &info.cause);
            ("restarting", LogLevel::Info)
        }
        EventKind::Restarted(info) => {
            f.push(("session_id", s(info.session_id.clone())));
            f.push(("outage_ms", Value::Num(info.outage_ms)));
            ("restarted", LogLevel::Info)
        }
        EventKind::GivingUp(reason) => {
            f.push(("reason", s(reason.clone())));
            ("giving_up", LogLevel::Error)
        }
        EventKind::ConnectionOpened(info) => {
            f.push(("id", Value::Num(info.id)));
            f.push(("peer", s(info.peer.clone())));
            ("connection_opened", LogLevel::Debug)
        }
        EventKind::ConnectionClosed(info) => {
            f.push(("id", Value::Num(info.id)));
            f.push(("bytes_up", Value::Num(info.bytes_up)));
            f.push(("bytes_down", Value::Num(info.bytes_down)));
            f.push(("reason", s(info.reason.clone())));
            ("connection_closed", LogLevel::Debug)
        }
        EventKind::DestinationUnreachable(destination) => {
            f.push(("destination", s(destination.clone())));
            ("destination_unreachable", LogLevel::Warn)
        }
        EventKind::ProbeResult(info) => {
            f.push(("check", s(info.check.clone())));
            let level = match &info.outcome {
                ProbeOutcome::Healthy => {
                    f.push(("outcome", s("healthy")));
                    LogLevel::Debug
                }
                ProbeOutcome::Degraded(reason) => {
                    f.push(("outcome", s("degraded")));
                    f.push(("reason", s(reason.clone())));
                    LogLevel::Warn
                }
                ProbeOutcome::Unhealthy(reason) => {
                    f.push(("outcome", s("unhealthy")));
                    f.push(("reason", s(reason.clone())));
                    LogLevel::Warn
                }
            };
            f.push((
                "consecutive_failures",
                Value::Num(u64::from(info.consecutive_failures)),
            ));
            f.push(("duration_ms", Value::Num(info.duration_ms)));
            ("probe_result", level)
        }
        EventKind::PluginFailed(info) => {
            f.push(("plugin", s(info.plugin.clone())));
            let role = match info.role {
                PluginRole::ReconnectPolicy => "reconnect_policy",
                PluginRole::HealthCheck => "health_check",
                PluginRole::EventHook => "event_hook",
            };
            f.push(("role", s(role)));
            f.push(("reason", s(info.reason.clone())));
            f.push(("quarantined", Value::Bool(info.quarantined)));
            ("plugin_failed", LogLevel::Error)
        }
        EventKind::Stopped => ("stopped", LogLevel::Info),
    };
    (name, level, f)
}

fn logfmt_value(out: &mut String, text: &str) {
    let plain = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\');
    if plain {
        out.push_str(text);
    } else {
        out.push('"');
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&format!("\\u{{{:04x}}}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Renders an event of `session` (`host.call-session`): `None` when the settings filter it
/// out, else its level and line.
pub fn render(
    settings: &Settings,
    event: &TunnelEvent,
    session: Option<&SessionRef>,
) -> Option<(LogLevel, String)> {
    let (name, level, fields) = describe(&event.kind);
    if level_rank(level) < settings.min_level || settings.skip.iter().any(|s| s == name) {
        return None;
    }
    let mut all: Fields = vec![
        ("event", s(name)),
        ("tunnel", s(event.tunnel.clone())),
        ("at_unix_ms", Value::Num(event.at_unix_ms)),
    ];
    if let Some(session) = session {
        all.push(("stripe", Value::Num(u64::from(session.stripe))));
        all.push(("session", Value::Num(u64::from(session.serial))));
    }
    all.extend(fields);
    let line = match settings.format {
        Format::Logfmt => {
            let mut out = String::new();
            for (i, (key, value)) in all.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(key);
                out.push('=');
                match value {
                    Value::Str(text) => logfmt_value(&mut out, text),
                    Value::Num(n) => out.push_str(&n.to_string()),
                    Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                }
            }
            out
        }
        Format::Json => {
            let mut map = serde_json::Map::new();
            for (key, value) in all {
                let value = match value {
                    Value::Str(text) => serde_json::Value::String(text),
                    Value::Num(n) => serde_json::Value::from(n),
                    Value::Bool(b) => serde_json::Value::Bool(b),
                };
                map.insert(key.to_owned(), value);
            }
            serde_json::Value::Object(map).to_string()
        }
    };
    Some((level, line))
}

// ----- component glue --------------------------------------------------------------------

/// The component: the settings `init` validated.
pub struct LogHook(Settings);

impl EventHook for LogHook {
    type Config = RawConfig;

    fn new(config: RawConfig) -> Result<Self, String> {
        Settings::from_json(config.as_str()).map(Self)
    }

    fn on_event(&mut self, event: TunnelEvent) {
        let session = host::call_session();
        if let Some((level, line)) = render(&self.0, &event, session.as_ref()) {
            host::log(level, &line);
        }
    }
}

// describe: the version from Cargo.toml (the package is `log-hook`, the plugin `log`).
ssm_tether_plugin::event_hook!(
    LogHook,
    name = "log",
    description = "Writes every lifecycle event as one structured line (logfmt or JSON) \
                   into the runtime's log."
);

#[cfg(test)]
mod tests {
    use super::*;
    use ssm_tether_plugin::types::{
        AttemptFailedInfo, ConnectionClosedInfo, ForwardingInfo, PluginFailedInfo, ProbeResultInfo,
    };

    fn event(kind: EventKind) -> TunnelEvent {
        TunnelEvent {
            tunnel: "db".to_owned(),
            at_unix_ms: 1_700_000_000_000,
            kind,
        }
    }

    fn line(settings: &Settings, kind: EventKind) -> (LogLevel, String) {
        render(settings, &event(kind), None).expect("rendered")
    }

    #[test]
    fn config_keys_and_errors() {
        assert_eq!(Settings::from_json("{}"), Ok(Settings::default()));
        let s = Settings::from_json(
            r#"{"format": "json", "min_level": "info", "skip": ["connection-opened", "resumed"]}"#,
        )
        .expect("valid");
        assert_eq!(s.format, Format::Json);
        assert_eq!(s.min_level, 2);
        assert_eq!(s.skip, vec!["connection_opened", "resumed"]);
        for (json, key) in [
            (r#"{"format": "xml"}"#, "`format`"),
            (r#"{"min_level": "loud"}"#, "`min_level`"),
            (r#"{"skip": ["nope"]}"#, "`skip`"),
            (r#"{"skip": "resumed"}"#, "`skip`"),
            (r#"{"level": "info"}"#, "`level`"),
        ] {
            let err = Settings::from_json(json).expect_err(json);
            assert!(err.contains(key), "{json}: {err}");
        }
    }

    #[test]
    fn logfmt_lines_carry_the_fields() {
        let s = Settings::default();
        let (level, text) = line(
            &s,
            EventKind::Disconnected(Cause::TransportError("reset by peer".into())),
        );
        assert_eq!(level, LogLevel::Warn);
        assert_eq!(
            text,
            "event=disconnected tunnel=db at_unix_ms=1700000000000 cause=transport_error detail=\"reset by peer\""
        );
        let (_, text) = line(
            &s,
            EventKind::AttemptFailed(AttemptFailedInfo {
                cause: Cause::ResumeFailed(ApiFailure {
                    class: ApiErrorClass::Throttling,
                    code: Some("ThrottlingException".into()),
                    message: "Rate exceeded".into(),
                }),
                attempt: 2,
            }),
        );
        assert!(
            text.ends_with("attempt=2 cause=resume_failed class=throttling code=ThrottlingException detail=\"Rate exceeded\""),
            "{text}"
        );
        let (level, text) = line(
            &s,
            EventKind::Forwarding(ForwardingInfo {
                session_id: "s-1".into(),
                mode: ForwardingMode::Mux,
                agent_version: "3.3.0".into(),
            }),
        );
        assert_eq!(level, LogLevel::Info);
        assert!(
            text.ends_with("session_id=s-1 mode=mux agent_version=3.3.0"),
            "{text}"
        );
        let (_, text) = line(
            &s,
            EventKind::GivingUp("quote \" and \\ and\nnewline".into()),
        );
        assert!(
            text.ends_with(r#"reason="quote \" and \\ and\nnewline""#),
            "{text}"
        );
        let (level, _) = line(&s, EventKind::Stopped);
        assert_eq!(level, LogLevel::Info);
    }

    #[test]
    fn json_lines_parse_back() {
        let s = Settings {
            format: Format::Json,
            ..Settings::default()
        };
        let (level, text) = line(
            &s,
            EventKind::ProbeResult(ProbeResultInfo {
                check: "http".into(),
                outcome: ProbeOutcome::Unhealthy("HTTP 503".into()),
                consecutive_failures: 2,
                duration_ms: 12,
            }),
        );
        assert_eq!(level, LogLevel::Warn);
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["event"], "probe_result");
        assert_eq!(v["outcome"], "unhealthy");
        assert_eq!(v["reason"], "HTTP 503");
        assert_eq!(v["consecutive_failures"], 2);
        let (level, text) = line(
            &s,
            EventKind::PluginFailed(PluginFailedInfo {
                plugin: "policy.wasm".into(),
                role: PluginRole::ReconnectPolicy,
                reason: "cpu budget exhausted".into(),
                quarantined: true,
            }),
        );
        assert_eq!(level, LogLevel::Error);
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["role"], "reconnect_policy");
        assert_eq!(v["quarantined"], true);
    }

    #[test]
    fn filters_by_level_and_name() {
        let closed = EventKind::ConnectionClosed(ConnectionClosedInfo {
            id: 1,
            bytes_up: 10,
            bytes_down: 20,
            reason: "eof".into(),
        });
        let info = Settings::from_json(r#"{"min_level": "info"}"#).expect("valid");
        assert!(render(&info, &event(closed.clone()), None).is_none());
        assert!(render(&info, &event(EventKind::Resumed(5)), None).is_some());
        let skip = Settings::from_json(r#"{"skip": ["resumed"]}"#).expect("valid");
        assert!(render(&skip, &event(EventKind::Resumed(5)), None).is_none());
        assert!(render(&skip, &event(closed), None).is_some());
    }

    #[test]
    fn the_session_of_the_event_is_named() {
        let session = SessionRef {
            stripe: 1,
            serial: 4,
            session_id: Some("alice-0a1b".to_owned()),
        };
        let (_, text) = render(
            &Settings::default(),
            &event(EventKind::Resumed(5)),
            Some(&session),
        )
        .expect("rendered");
        assert_eq!(
            text,
            "event=resumed tunnel=db at_unix_ms=1700000000000 stripe=1 session=4 outage_ms=5"
        );
    }

    #[test]
    fn every_event_name_is_listed() {
        let kinds = [
            EventKind::Listening("127.0.0.1:5432".into()),
            EventKind::SessionStarted("s".into()),
            EventKind::Connected("s".into()),
            EventKind::Resumed(1),
            EventKind::GivingUp("x".into()),
            EventKind::DestinationUnreachable("db:5432".into()),
            EventKind::Disconnected(Cause::MaxDurationReached),
            EventKind::Stopped,
        ];
        for kind in kinds {
            let (name, _, _) = describe(&kind);
            assert!(EVENTS.contains(&name), "{name}");
        }
    }
}
