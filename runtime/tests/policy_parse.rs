//! The policy file as a user meets it: valid files, merged defaults, and error messages that
//! name file, line, column, field and value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ssm_tether::policy::{
    self, LocalAddress, PolicyError, RecoverySettings, RotationSettings, SlowReaderSettings,
    TransportSettings,
};

fn ok(text: &str) -> policy::Policy {
    match policy::parse("tunnels.toml", text) {
        Ok(p) => p,
        Err(e) => panic!("expected a valid policy, got: {e}"),
    }
}

fn err(text: &str) -> String {
    match policy::parse("tunnels.toml", text) {
        Ok(p) => panic!("expected an error, got {p:?}"),
        Err(e) => e.to_string(),
    }
}

fn addr(s: &str) -> LocalAddress {
    LocalAddress::Tcp(s.parse::<SocketAddr>().expect("test address"))
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn example_file_is_valid_and_merges_defaults() {
    let path = examples_dir().join("tunnels.toml");
    let policy = policy::load(&path).expect("examples/tunnels.toml is valid");
    assert_eq!(policy.tunnels.len(), 2);

    let db = &policy.tunnels[0];
    assert_eq!(db.name, "db");
    assert_eq!(db.target, "i-0123456789abcdef0");
    assert_eq!(db.remote_port, 5432);
    assert_eq!(db.remote_host.as_deref(), Some("db.internal"));
    assert_eq!(db.local, addr("127.0.0.1:15432"));
    assert_eq!(db.aws.region.as_deref(), Some("us-east-1"));
    assert_eq!(db.aws.profile.as_deref(), Some("prod"));
    assert_eq!(db.reason.as_deref(), Some("ssm-tether"));
    assert_eq!(db.transport.ping_interval, Duration::from_secs(20));
    // Tunnel recovery overrides one key; the rest come from [defaults.recovery].
    assert_eq!(db.recovery.max_delay, Duration::from_secs(60));
    assert_eq!(db.recovery.base_delay, Duration::from_millis(200));
    assert_eq!(db.recovery.give_up_after, None);
    assert_eq!(
        db.document_name(),
        "AWS-StartPortForwardingSessionToRemoteHost"
    );
    let params = serde_json::to_string(&db.parameters()).expect("json");
    assert_eq!(
        params,
        r#"{"host":["db.internal"],"localPortNumber":["0"],"portNumber":["5432"]}"#
    );

    let plugins = &db.plugins;
    assert_eq!(
        plugins.reconnect.as_ref().map(|p| p.source.to_string()),
        Some("builtin:exponential-backoff".to_owned())
    );
    assert_eq!(plugins.health_checks.len(), 1);
    assert!(plugins.health_checks[0].plugin.grants.tunnel_tcp);
    assert_eq!(plugins.hooks.len(), 1);

    let web = &policy.tunnels[1];
    assert!(
        web.plugins.reconnect.is_none(),
        "plugins are per tunnel here"
    );
    assert_eq!(web.local, addr("0.0.0.0:8080"));
    assert_eq!(web.aws.region.as_deref(), Some("eu-west-1"));
    assert_eq!(web.aws.profile.as_deref(), Some("staging"));
    assert_eq!(web.transport.ping_interval, Duration::from_secs(10));
    assert_eq!(web.transport.pong_timeout, Duration::from_secs(25));
    assert_eq!(web.recovery.max_delay, Duration::from_secs(30));
    assert_eq!(web.document_name(), "AWS-StartPortForwardingSession");
    assert!(!web.parameters().contains_key("host"));
}

#[test]
fn minimal_tunnel_gets_builtin_defaults() {
    let p = ok("[[tunnel]]\nname = \"a\"\ntarget = \"i-1\"\nremote_port = 22\n");
    let t = &p.tunnels[0];
    assert_eq!(t.local, addr("127.0.0.1:22"));
    assert_eq!(t.aws, policy::AwsSettings::default());
    assert_eq!(t.transport, TransportSettings::default());
    assert_eq!(t.transport.ping_interval, Duration::from_secs(20));
    assert_eq!(t.transport.pong_timeout, Duration::from_secs(30));
    assert_eq!(t.recovery, RecoverySettings::default());
    assert_eq!(t.recovery.base_delay, Duration::from_millis(200));
    assert_eq!(t.recovery.max_delay, Duration::from_secs(30));
    assert_eq!(t.recovery.resume_attempts_before_restart, 10);
    assert_eq!(t.recovery.stable_after, Duration::from_secs(60));
    assert_eq!(t.reason, None);
    assert_eq!(t.document_name(), "AWS-StartPortForwardingSession");
}

#[test]
fn tunnel_value_beats_defaults_which_beat_builtin() {
    let p = ok(r#"
[defaults]
region = "us-west-2"
endpoint_url = "http://127.0.0.1:4566"
ping_interval = "5s"
pong_timeout = "12s"
[defaults.recovery]
base_delay = "50ms"
give_up_after = "10m"

[[tunnel]]
name = "a"
target = "i-1"
remote_port = 1
region = "eu-central-1"
recovery = { base_delay = "1s", resume_attempts_before_restart = 2 }

[[tunnel]]
name = "b"
target = "i-2"
remote_port = 2
pong_timeout = "6s"
"#);
    let (a, b) = (&p.tunnels[0], &p.tunnels[1]);
    assert_eq!(a.aws.region.as_deref(), Some("eu-central-1"));
    assert_eq!(b.aws.region.as_deref(), Some("us-west-2"));
    assert_eq!(a.aws.endpoint_url.as_deref(), Some("http://127.0.0.1:4566"));
    assert_eq!(a.recovery.base_delay, Duration::from_secs(1));
    assert_eq!(a.recovery.resume_attempts_before_restart, 2);
    assert_eq!(a.recovery.give_up_after, Some(Duration::from_secs(600)));
    assert_eq!(b.recovery.base_delay, Duration::from_millis(50));
    assert_eq!(b.recovery.resume_attempts_before_restart, 10);
    assert_eq!(a.transport.pong_timeout, Duration::from_secs(12));
    assert_eq!(b.transport.pong_timeout, Duration::from_secs(6));
    assert_eq!(b.transport.ping_interval, Duration::from_secs(5));
}

#[test]
fn local_address_forms() {
    let cases = [
        ("\"15432\"", "127.0.0.1:15432"),
        ("15433", "127.0.0.1:15433"),
        ("\"127.0.0.2:99\"", "127.0.0.2:99"),
        ("\"[::1]:80\"", "[::1]:80"),
        ("\"localhost:81\"", "127.0.0.1:81"),
        ("\"127.0.0.1:0\"", "127.0.0.1:0"),
    ];
    for (written, expected) in cases {
        let p = ok(&format!(
            "[[tunnel]]\nname = \"a\"\ntarget = \"i-1\"\nremote_port = 22\nlocal = {written}\n"
        ));
        assert_eq!(p.tunnels[0].local, addr(expected), "local = {written}");
    }
}

#[test]
fn bad_port_names_file_line_column_field_and_value() {
    let text = r#"[[tunnel]]
name = "a"
target = "i-1"
remote_port = 1

[[tunnel]]
name = "b"
target = "i-2"
remote_port = 70000
"#;
    assert_eq!(
        err(text),
        "tunnels.toml:9:15: tunnel[1].remote_port: 70000 is not a port (1-65535)"
    );
    let e = policy::parse("tunnels.toml", text).expect_err("invalid");
    assert_eq!(e.field(), Some("tunnel[1].remote_port"));
    let at = e.location().expect("located");
    assert_eq!((at.line, at.column), (9, 15));
}

#[test]
fn syntax_error_has_line_and_column() {
    let e = err("[[tunnel]]\nname = \"a\nremote_port = 1\n");
    assert!(e.starts_with("tunnels.toml:2:"), "{e}");
    assert!(e.contains("TOML syntax error"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
}

#[test]
fn unknown_keys_are_errors_at_the_key() {
    let e = err("[[tunnel]]\nname = \"a\"\ntarget = \"i-1\"\nremote_prot = 5\n");
    assert!(
        e.starts_with("tunnels.toml:4:1: tunnel[0].remote_prot: unknown key"),
        "{e}"
    );
    assert!(e.contains("remote_port"), "lists valid keys: {e}");

    let e = err("[defaults]\nregoin = \"x\"\n[[tunnel]]\nname = \"a\"\n");
    assert!(
        e.starts_with("tunnels.toml:2:1: defaults.regoin: unknown key"),
        "{e}"
    );

    let e = err("[defaults]\nname = \"x\"\n");
    assert_eq!(
        e,
        "tunnels.toml:2:1: defaults.name: is only valid in a [[tunnel]] table, not in [defaults]"
    );

    let e = err(
        "[[tunnel]]\nname = \"a\"\ntarget = \"i-1\"\nremote_port = 5\n[tunnel.recovery]\nbase = \"1s\"\n",
    );
    assert!(
        e.starts_with("tunnels.toml:6:1: tunnel[0].recovery.base: unknown key"),
        "{e}"
    );

    let e = err("tunnels = []\n");
    assert!(
        e.starts_with("tunnels.toml:1:1: tunnels: unknown key"),
        "{e}"
    );
}

#[test]
fn missing_required_keys_point_at_the_tunnel() {
    let e = err("[[tunnel]]\nname = \"a\"\nremote_port = 5\n");
    assert!(e.starts_with("tunnels.toml:1:"), "{e}");
    assert!(e.contains("tunnel[0].target: missing"), "{e}");
    let e = err("[[tunnel]]\nname = \"a\"\ntarget = \"i-1\"\n");
    assert!(e.contains("tunnel[0].remote_port: missing"), "{e}");
    let e = err("[defaults]\nregion = \"us-east-1\"\n");
    assert_eq!(
        e,
        "tunnels.toml:1:1: tunnel: no [[tunnel]] table: a policy needs at least one tunnel"
    );
}

#[test]
fn wrong_types_name_the_type_and_value() {
    let e = err("[[tunnel]]\nname = \"a\"\ntarget = \"i-1\"\nremote_port = \"5432\"\n");
    assert_eq!(
        e,
        "tunnels.toml:4:15: tunnel[0].remote_port: \"5432\" is a string, expected an integer"
    );
    let e =
        err("[[tunnel]]\nname = \"a\"\ntarget = \"i-1\"\nremote_port = 1\nping_interval = 20\n");
    assert!(
        e.starts_with(
            "tunnels.toml:5:17: tunnel[0].ping_interval: 20 is an integer, expected a duration"
        ),
        "{e}"
    );
    let e = err("[tunnel]\nname = \"a\"\n");
    assert!(e.contains("tunnel: "), "{e}");
    assert!(e.contains("expected an array of tables"), "{e}");
}

#[test]
fn bad_values_are_quoted() {
    let base = "[[tunnel]]\nname = \"a\"\ntarget = \"i-1\"\nremote_port = 1\n";
    let cases = [
        (
            "ping_interval = \"20 parsecs\"",
            "tunnel[0].ping_interval: \"20 parsecs\" is not a duration",
        ),
        (
            "pong_timeout = \"0s\"",
            "tunnel[0].pong_timeout: \"0s\" must be longer than zero",
        ),
        (
            "local = \"db:5432\"",
            "tunnel[0].local: \"db:5432\" is not a local address",
        ),
        (
            "local = 70000",
            "tunnel[0].local: 70000 is not a port (0-65535)",
        ),
        (
            "endpoint_url = \"ftp://x\"",
            "tunnel[0].endpoint_url: \"ftp://x\" is not an http(s) URL",
        ),
        (
            "region = \"US East\"",
            "tunnel[0].region: \"US East\" must not contain spaces",
        ),
        (
            "region = \"US_EAST\"",
            "tunnel[0].region: \"US_EAST\" is not an AWS region name",
        ),
        (
            "remote_host = \"\"",
            "tunnel[0].remote_host: must not be empty",
        ),
        (
            "recovery.resume_attempts_before_restart = 0",
            "tunnel[0].recovery.resume_attempts_before_restart: 0 must be at least 1",
        ),
        (
            "recovery.give_up_after = \"soon\"",
            "tunnel[0].recovery.give_up_after: \"soon\" is not a duration",
        ),
    ];
    for (line, expected) in cases {
        let e = err(&format!("{base}{line}\n"));
        assert!(e.starts_with("tunnels.toml:5:"), "{line}: {e}");
        assert!(e.contains(expected), "{line}: expected {expected:?} in {e}");
    }

    let e = err("[[tunnel]]\nname = \"my db\"\ntarget = \"i-1\"\nremote_port = 1\n");
    assert_eq!(
        e,
        "tunnels.toml:2:8: tunnel[0].name: \"my db\" is not a valid name (letters, digits, '_', '.', '-')"
    );
    let e = err("[[tunnel]]\nname = \"a\"\ntarget = \"db-1\"\nremote_port = 1\n");
    assert_eq!(
        e,
        "tunnels.toml:3:10: tunnel[0].target: \"db-1\" is not an SSM target (i-…, mi-… or ecs:…)"
    );
}

#[test]
fn non_loopback_needs_opt_in() {
    let base =
        "[[tunnel]]\nname = \"a\"\ntarget = \"i-1\"\nremote_port = 1\nlocal = \"0.0.0.0:8080\"\n";
    let e = err(base);
    assert!(
        e.starts_with(
            "tunnels.toml:5:9: tunnel[0].local: \"0.0.0.0:8080\" is not a loopback address"
        ),
        "{e}"
    );
    assert!(e.contains("allow_non_loopback = true"), "{e}");
    let p = ok(&format!("{base}allow_non_loopback = true\n"));
    assert_eq!(p.tunnels[0].local, addr("0.0.0.0:8080"));
}

#[test]
fn timing_relations_are_checked_after_merging() {
    // pong_timeout from [defaults] is not longer than this tunnel's ping_interval.
    let e = err(r#"[defaults]
pong_timeout = "10s"
[[tunnel]]
name = "a"
target = "i-1"
remote_port = 1
ping_interval = "15s"
"#);
    assert_eq!(
        e,
        "tunnels.toml:2:16: defaults.pong_timeout: \"10s\" must be longer than ping_interval \
         (15s, set at tunnel[0].ping_interval)"
    );
    // Only ping_interval written: it collides with the built-in pong_timeout.
    let e = err(
        "[[tunnel]]\nname = \"a\"\ntarget = \"i-1\"\nremote_port = 1\nping_interval = \"1m\"\n",
    );
    assert!(
        e.starts_with("tunnels.toml:5:17: tunnel[0].ping_interval: \"1m\" is too large: pong_timeout (30s, built-in default)"),
        "{e}"
    );
    let e = err(
        "[[tunnel]]\nname = \"a\"\ntarget = \"i-1\"\nremote_port = 1\n[tunnel.recovery]\nmax_delay = \"100ms\"\n",
    );
    assert!(
        e.starts_with("tunnels.toml:6:13: tunnel[0].recovery.max_delay: \"100ms\" must be at least base_delay (200ms, built-in default)"),
        "{e}"
    );
}

#[test]
fn duplicate_names_and_local_addresses_name_both_tunnels() {
    let e = err(r#"[[tunnel]]
name = "db"
target = "i-1"
remote_port = 5432

[[tunnel]]
name = "db"
target = "i-2"
remote_port = 5433
"#);
    assert_eq!(
        e,
        "tunnels.toml:7:8: tunnel[1].name: duplicate tunnel name \"db\": also used by tunnel[0] \
         at tunnels.toml:2:8"
    );

    // Second tunnel's default local address (from remote_port) equals the first's explicit one.
    let e = err(r#"[[tunnel]]
name = "one"
target = "i-1"
remote_port = 1
local = "5432"

[[tunnel]]
name = "two"
target = "i-2"
remote_port = 5432
"#);
    assert!(
        e.starts_with("tunnels.toml:7:1: tunnel[1].local: 127.0.0.1:5432"),
        "{e}"
    );
    assert!(e.contains("\"one\""), "{e}");
    assert!(e.contains("\"two\""), "{e}");
    assert!(e.contains("tunnels.toml:5:9"), "points at the first: {e}");

    // 0.0.0.0 overlaps every IPv4 address on the same port.
    let e = err(r#"[[tunnel]]
name = "one"
target = "i-1"
remote_port = 80
[[tunnel]]
name = "two"
target = "i-2"
remote_port = 81
local = "0.0.0.0:80"
allow_non_loopback = true
"#);
    assert!(e.starts_with("tunnels.toml:9:9: tunnel[1].local"), "{e}");

    // Port 0 never clashes.
    ok(r#"[[tunnel]]
name = "one"
target = "i-1"
remote_port = 80
local = "0"
[[tunnel]]
name = "two"
target = "i-2"
remote_port = 81
local = "0"
"#);
}

#[test]
fn load_reports_unreadable_files_and_resolves_relative_aws_files() {
    let missing = Path::new("/nonexistent/dir/tunnels.toml");
    let e = policy::load(missing).expect_err("missing file");
    assert!(matches!(e, PolicyError::Read { .. }));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/dir/tunnels.toml: cannot read"),
        "{e}"
    );

    let dir = std::env::temp_dir().join(format!("ssm-tether-policy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let file = dir.join("t.toml");
    std::fs::write(
        &file,
        "[defaults]\naws_credentials_file = \"creds\"\naws_config_file = \"/abs/config\"\n\
         [[tunnel]]\nname = \"a\"\ntarget = \"i-1\"\nremote_port = 1\n",
    )
    .expect("write");
    let p = policy::load(&file).expect("valid");
    assert_eq!(p.tunnels[0].aws.credentials_file, Some(dir.join("creds")));
    assert_eq!(
        p.tunnels[0].aws.config_file,
        Some(PathBuf::from("/abs/config"))
    );
    // Errors from load name the path as given.
    std::fs::write(&file, "[[tunnel]]\nname = 1\n").expect("write");
    let e = policy::load(&file).expect_err("invalid");
    assert!(
        e.to_string()
            .starts_with(&format!("{}:2:8: tunnel[0].name", file.display())),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn plugin_tables_merge_with_defaults_and_resolve_paths() {
    use ssm_tether::policy::{PluginSource, Role};
    let text = r#"
[defaults.reconnect]
plugin = "builtin:exponential-backoff"
config = { base_ms = 100, nested = { list = [1, "two"] } }
cpu = "20ms"

[[defaults.hook]]
plugin = "builtin:log"

[[tunnel]]
name = "a"
target = "i-1"
remote_port = 1

[[tunnel]]
name = "b"
target = "i-2"
remote_port = 2

[[tunnel.health_check]]
plugin = "probes/redis.wasm"
grants = ["tunnel-tcp"]
interval = "10s"
unhealthy_after = 2
memory_mb = 64
timeout = "3s"

[tunnel.reconnect]
plugin = "policy.wasm"
"#;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("tunnels.toml");
    std::fs::write(&path, text).expect("write");
    let policy = policy::load(&path).expect("valid");
    let a = &policy.tunnels[0].plugins;
    let reconnect = a.reconnect.as_ref().expect("inherited");
    assert_eq!(
        reconnect.source,
        PluginSource::Builtin("exponential-backoff".into())
    );
    let config: serde_json::Value = serde_json::from_str(&reconnect.config).expect("json");
    assert_eq!(
        config,
        serde_json::json!({"base_ms": 100, "nested": {"list": [1, "two"]}})
    );
    assert_eq!(reconnect.limits.cpu, Duration::from_millis(20));
    assert_eq!(a.hooks.len(), 1);
    assert!(a.health_checks.is_empty());

    let b = &policy.tunnels[1].plugins;
    assert_eq!(
        b.reconnect.as_ref().expect("own").source,
        PluginSource::File(dir.path().join("policy.wasm"))
    );
    let check = &b.health_checks[0];
    assert_eq!(
        check.plugin.source,
        PluginSource::File(dir.path().join("probes/redis.wasm"))
    );
    assert!(check.plugin.grants.tunnel_tcp);
    assert_eq!(check.interval, Duration::from_secs(10));
    assert_eq!(check.unhealthy_after, 2);
    assert_eq!(check.plugin.limits.memory, 64 << 20);
    assert_eq!(check.plugin.limits.timeout, Duration::from_secs(3));
    assert_eq!(check.plugin.config, "{}");
    assert_eq!(b.hooks.len(), 1, "[defaults] hooks apply");
    assert_eq!(
        b.entries().map(|(role, _)| role).collect::<Vec<_>>(),
        [Role::ReconnectPolicy, Role::HealthCheck, Role::EventHook]
    );
}

#[test]
fn plugin_entry_errors_name_the_field_and_value() {
    let base = "[[tunnel]]\nname = \"a\"\ntarget = \"i-1\"\nremote_port = 1\n";
    let cases = [
        (
            "[tunnel.reconnect]\nconfig = {}\n",
            "tunnels.toml:5:1: tunnel[0].reconnect.plugin: missing",
        ),
        (
            "[tunnel.reconnect]\nplugin = \"builtin:nope\"\n",
            "tunnels.toml:6:10: tunnel[0].reconnect.plugin: \"builtin:nope\" is not a built-in plugin",
        ),
        (
            "[[tunnel.hook]]\nplugin = \"builtin:log\"\ngrants = [\"network\"]\n",
            "tunnels.toml:7:11: tunnel[0].hook[0].grants: \"network\" is not a grant (known: tunnel-tcp)",
        ),
        (
            "[[tunnel.health_check]]\nplugin = \"x.wasm\"\nunhealthy_after = 0\n",
            "tunnels.toml:7:19: tunnel[0].health_check[0].unhealthy_after: 0 must be at least 1",
        ),
        (
            "[[tunnel.health_check]]\nplugin = \"x.wasm\"\nmemory_mb = 1\n",
            "tunnels.toml:7:13: tunnel[0].health_check[0].memory_mb: 1 must be 2..=4096 (MiB)",
        ),
        (
            "[tunnel.reconnect]\nplugin = \"x.wasm\"\nconfig = 3\n",
            "tunnels.toml:7:10: tunnel[0].reconnect.config: 3 is an integer, expected a table",
        ),
        (
            "[tunnel.reconnect]\nplugin = \"x.wasm\"\nintervl = \"1s\"\n",
            "tunnels.toml:7:1: tunnel[0].reconnect.intervl: unknown key",
        ),
    ];
    for (table, expected) in cases {
        let message = err(&format!("{base}{table}"));
        assert!(
            message.starts_with(expected),
            "{table:?}\n got: {message}\nwant: {expected}…"
        );
    }
}

#[test]
fn the_redis_example_policy_is_valid() {
    let path = examples_dir().join("redis-check/tunnels.toml");
    let policy = policy::load(&path).expect("examples/redis-check/tunnels.toml is valid");
    let check = &policy.tunnels[0].plugins.health_checks[0];
    assert!(
        check
            .plugin
            .source
            .to_string()
            .ends_with("redis_check.wasm")
    );
    assert!(check.plugin.grants.tunnel_tcp);
}

const TUNNEL: &str = "[[tunnel]]\nname = \"a\"\ntarget = \"i-1\"\nremote_port = 1\n";

#[test]
fn session_keys_merge_with_defaults_and_have_builtin_values() {
    let p = ok(TUNNEL);
    let t = &p.tunnels[0];
    assert_eq!(t.sessions, 1);
    assert_eq!(t.rotation, None);
    assert_eq!(t.slow_reader, SlowReaderSettings::default());
    assert_eq!(t.slow_reader.buffer, 16 << 20);
    assert_eq!(t.slow_reader.timeout, Duration::from_secs(60));

    let p = ok(&format!(
        "[defaults]\nsessions = 4\nmax_session_duration = \"1h\"\nslow_reader_buffer = \"1MiB\"\n\
         {TUNNEL}rotate_before = \"5m\"\nslow_reader_timeout = \"10s\"\n\
         slow_reader_tunnel_buffer = 8388608\n"
    ));
    let t = &p.tunnels[0];
    assert_eq!(t.sessions, 4);
    assert_eq!(
        t.rotation,
        Some(RotationSettings {
            max_session_duration: Duration::from_secs(3600),
            rotate_before: Duration::from_secs(300),
        })
    );
    assert_eq!(
        t.slow_reader,
        SlowReaderSettings {
            buffer: 1 << 20,
            tunnel_buffer: 8 << 20,
            timeout: Duration::from_secs(10),
        }
    );
    // The default rotate_before applies when only the duration is set.
    let p = ok(&format!("{TUNNEL}max_session_duration = \"20m\"\n"));
    assert_eq!(
        p.tunnels[0].rotation.map(|r| r.rotate_before),
        Some(Duration::from_secs(120))
    );
}

#[test]
fn session_key_errors_name_file_line_column_field_and_value() {
    let cases = [
        (
            "sessions = 0\n",
            "tunnels.toml:5:12: tunnel[0].sessions: 0 must be between 1 and 16",
        ),
        (
            "sessions = 17\n",
            "tunnels.toml:5:12: tunnel[0].sessions: 17 must be between 1 and 16",
        ),
        (
            "sessions = \"4\"\n",
            "tunnels.toml:5:12: tunnel[0].sessions: \"4\" is a string, expected an integer",
        ),
        (
            "max_session_duration = \"25h\"\n",
            "tunnels.toml:5:24: tunnel[0].max_session_duration: \"25h\" must be between 1s and 24h \
             (the service allows 1 to 1440 minutes)",
        ),
        (
            "max_session_duration = \"20m\"\nrotate_before = \"20m\"\n",
            "tunnels.toml:6:17: tunnel[0].rotate_before: \"20m\" must be shorter than \
             max_session_duration (20m, set at tunnel[0].max_session_duration)",
        ),
        (
            "max_session_duration = \"1m\"\n",
            "tunnels.toml:5:24: tunnel[0].max_session_duration: \"1m\" is too large: rotate_before \
             (2m, built-in default) must be shorter than max_session_duration; set rotate_before \
             as well",
        ),
        (
            "slow_reader_buffer = \"12 parsecs\"\n",
            "tunnels.toml:5:22: tunnel[0].slow_reader_buffer: \"12 parsecs\" is not a size such as \
             \"512KiB\", \"16MiB\" or \"1GiB\", or a number of bytes",
        ),
        (
            "slow_reader_buffer = \"1KiB\"\n",
            "tunnels.toml:5:22: tunnel[0].slow_reader_buffer: \"1KiB\" must be between 64KiB and 4GiB",
        ),
        (
            "slow_reader_buffer = \"128MiB\"\n",
            "tunnels.toml:5:22: tunnel[0].slow_reader_buffer: \"128MiB\" is too large: \
             slow_reader_tunnel_buffer (64MiB, built-in default) must be at least \
             slow_reader_buffer; set slow_reader_tunnel_buffer as well",
        ),
        (
            "slow_reader_timeout = \"0s\"\n",
            "tunnels.toml:5:23: tunnel[0].slow_reader_timeout: \"0s\" must be longer than zero",
        ),
        (
            "rotate_before = \"1m\"\n",
            "tunnels.toml:5:17: tunnel[0].rotate_before: has no effect without \
             max_session_duration; set max_session_duration (the maximum session duration of \
             the account's Session Manager preferences) as well",
        ),
    ];
    for (extra, expected) in cases {
        assert_eq!(err(&format!("{TUNNEL}{extra}")), expected, "for {extra:?}");
    }
}

#[test]
fn unix_local_addresses_resolve_against_the_policy_file_and_may_not_clash() {
    let p = ok(&format!("{TUNNEL}local = \"unix:/run/db.sock\"\n"));
    assert_eq!(
        p.tunnels[0].local,
        LocalAddress::Unix("/run/db.sock".into())
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tunnels.toml");
    std::fs::write(&path, format!("{TUNNEL}local = \"unix:db.sock\"\n")).expect("write");
    let p = policy::load(&path).expect("valid");
    assert_eq!(
        p.tunnels[0].local,
        LocalAddress::Unix(dir.path().join("db.sock"))
    );
    let e = err(&format!("{TUNNEL}local = \"unix:\"\n"));
    assert_eq!(
        e,
        "tunnels.toml:5:9: tunnel[0].local: \"unix:\" names no path after unix:"
    );
    let long = "x".repeat(200);
    let e = err(&format!("{TUNNEL}local = \"unix:/{long}\"\n"));
    assert!(e.contains("is longer than the 103 bytes"), "{e}");
    let e = err(&format!(
        "{TUNNEL}local = \"unix:/run/a.sock\"\n[[tunnel]]\nname = \"b\"\ntarget = \"i-2\"\n\
         remote_port = 2\nlocal = \"unix:/run/a.sock\"\n"
    ));
    assert!(
        e.contains("clashes with local address unix:/run/a.sock"),
        "{e}"
    );
}

#[test]
fn durations_are_capped_so_that_no_clock_arithmetic_can_overflow() {
    let base = "[[tunnel]]\nname = \"a\"\ntarget = \"i-1\"\nremote_port = 1\n";
    for (key, line) in [
        (
            "slow_reader_timeout",
            "slow_reader_timeout = \"300000000y\"\n",
        ),
        ("ping_interval", "ping_interval = \"31days\"\n"),
    ] {
        let e = err(&format!("{base}{line}"));
        assert!(
            e.starts_with("tunnels.toml:5:") && e.contains(&format!("tunnel[0].{key}")),
            "{e}"
        );
        assert!(e.contains("is longer than 30days"), "{e}");
    }
    let e = err(&format!(
        "[defaults.recovery]\ngive_up_after = \"100000d\"\n{base}"
    ));
    assert!(
        e.starts_with("tunnels.toml:2:17: defaults.recovery.give_up_after"),
        "{e}"
    );
    let p = ok(&format!(
        "{base}[tunnel.recovery]\ngive_up_after = \"30d\"\n"
    ));
    assert_eq!(
        p.tunnels[0].recovery.give_up_after,
        Some(Duration::from_secs(30 * 86_400))
    );
}

#[test]
fn a_cleartext_endpoint_is_refused_unless_it_is_this_machine_or_allowed() {
    let base = "[[tunnel]]\nname = \"a\"\ntarget = \"i-1\"\nremote_port = 1\n";
    let e = err(&format!(
        "{base}endpoint_url = \"http://ssm.example.com\"\n"
    ));
    assert!(
        e.starts_with(
            "tunnels.toml:5:16: tunnel[0].endpoint_url: \"http://ssm.example.com\" sends session \
             tokens unencrypted"
        ),
        "{e}"
    );
    assert!(e.contains("allow_insecure_endpoint = true"), "{e}");
    // From [defaults], the error points there.
    let e = err(&format!(
        "[defaults]\nendpoint_url = \"http://10.0.0.1:4566\"\n{base}"
    ));
    assert!(
        e.starts_with("tunnels.toml:2:16: defaults.endpoint_url"),
        "{e}"
    );
    for fine in [
        "endpoint_url = \"https://ssm.example.com\"\n",
        "endpoint_url = \"http://127.0.0.1:4566\"\n",
        "endpoint_url = \"http://localhost:4566\"\n",
        "endpoint_url = \"http://[::1]:4566\"\n",
        "endpoint_url = \"http://ssm.example.com\"\nallow_insecure_endpoint = true\n",
    ] {
        ok(&format!("{base}{fine}"));
    }
    ok(&format!(
        "[defaults]\nallow_insecure_endpoint = true\n{base}endpoint_url = \"http://10.1.2.3\"\n"
    ));
}

#[test]
fn only_a_bounded_regular_file_is_read_as_a_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A FIFO would block a plain read until a writer came; /dev/zero would never end.
    let fifo = dir.path().join("fifo.toml");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
    for (path, expected) in [
        (fifo.as_path(), "not a regular file"),
        (Path::new("/dev/zero"), "not a regular file"),
        (dir.path(), "not a regular file"),
    ] {
        let e = policy::load(path)
            .expect_err("not a policy file")
            .to_string();
        assert!(e.contains(expected), "{}: {e}", path.display());
    }
    let big = dir.path().join("big.toml");
    std::fs::write(&big, "# padding\n".repeat(200_000)).expect("write");
    let e = policy::load(&big).expect_err("too large").to_string();
    assert!(e.contains("larger than 1048576 bytes"), "{e}");
}

const ONE_TUNNEL: &str = "[[tunnel]]\nname = \"db\"\ntarget = \"i-1\"\nremote_port = 5432\n";

fn metrics_listen(text: &str) -> Option<SocketAddr> {
    ok(text).metrics.map(|m| m.listen)
}

#[test]
fn the_metrics_table_is_optional_and_listens_on_loopback_9464_by_default() {
    assert_eq!(metrics_listen(ONE_TUNNEL), None);
    let default = metrics_listen(&format!("[metrics]\n{ONE_TUNNEL}"));
    assert_eq!(default, Some("127.0.0.1:9464".parse().expect("addr")));
    // After the tunnels is as good as before them.
    let after = metrics_listen(&format!(
        "{ONE_TUNNEL}\n[metrics]\nlisten = \"127.0.0.1:9100\"\n"
    ));
    assert_eq!(after, Some("127.0.0.1:9100".parse().expect("addr")));
    for (written, expected) in [
        ("9100", "127.0.0.1:9100"),
        ("\"9100\"", "127.0.0.1:9100"),
        ("\"localhost:9100\"", "127.0.0.1:9100"),
        ("\"[::1]:9100\"", "[::1]:9100"),
        ("\"127.0.0.1:0\"", "127.0.0.1:0"),
    ] {
        let listen = metrics_listen(&format!("[metrics]\nlisten = {written}\n{ONE_TUNNEL}"));
        assert_eq!(
            listen,
            Some(expected.parse().expect("addr")),
            "listen = {written}"
        );
    }
}

#[test]
fn metrics_on_the_network_need_allow_non_loopback_in_the_metrics_table() {
    let text = format!("[metrics]\nlisten = \"0.0.0.0:9464\"\n{ONE_TUNNEL}");
    let e = err(&text);
    assert!(
        e.starts_with(
            "tunnels.toml:2:10: metrics.listen: \"0.0.0.0:9464\" is not a loopback address"
        ),
        "{e}"
    );
    assert!(e.contains("allow_non_loopback = true in [metrics]"), "{e}");
    let allowed = metrics_listen(&format!(
        "[metrics]\nlisten = \"0.0.0.0:9464\"\nallow_non_loopback = true\n{ONE_TUNNEL}"
    ));
    assert_eq!(allowed, Some("0.0.0.0:9464".parse().expect("addr")));
    // A tunnel's allow_non_loopback is no permission for the metrics endpoint.
    let e = err(&format!(
        "[metrics]\nlisten = \"0.0.0.0:9464\"\n{ONE_TUNNEL}allow_non_loopback = true\n"
    ));
    assert!(e.starts_with("tunnels.toml:2:10: metrics.listen:"), "{e}");
}

#[test]
fn metrics_errors_name_file_line_column_field_and_value() {
    let cases = [
        (
            "[metrics]\nport = 9464\n",
            "tunnels.toml:2:1: metrics.port: unknown key (expected one of: listen, allow_non_loopback)",
        ),
        (
            "[metrics]\nlisten = true\n",
            "tunnels.toml:2:10: metrics.listen: true is a boolean, expected a string such as \
             \"127.0.0.1:9464\"",
        ),
        (
            "[metrics]\nlisten = \"unix:/run/m.sock\"\n",
            "tunnels.toml:2:10: metrics.listen: \"unix:/run/m.sock\" is a Unix socket",
        ),
        (
            "[metrics]\nlisten = \"nowhere\"\n",
            "tunnels.toml:2:10: metrics.listen: \"nowhere\" is not a listen address",
        ),
        (
            "[metrics]\nlisten = 70000\n",
            "tunnels.toml:2:10: metrics.listen: 70000 is not a port (0-65535)",
        ),
        (
            "[metrics]\nallow_non_loopback = \"yes\"\n",
            "tunnels.toml:2:22: metrics.allow_non_loopback: \"yes\" is a string, expected true or \
             false",
        ),
        (
            "metrics = 9464\n",
            "tunnels.toml:1:11: metrics: 9464 is an integer, expected a table",
        ),
    ];
    for (metrics, expected) in cases {
        let e = err(&format!("{metrics}{ONE_TUNNEL}"));
        assert!(
            e.starts_with(expected),
            "{metrics:?}:\n  got      {e}\n  expected {expected}"
        );
    }
}

#[test]
fn the_metrics_endpoint_cannot_share_a_tunnels_address() {
    // The tunnel listens on its default, 127.0.0.1:5432.
    let e = err(&format!(
        "[metrics]\nlisten = \"127.0.0.1:5432\"\n{ONE_TUNNEL}"
    ));
    assert!(
        e.starts_with("tunnels.toml:2:10: metrics.listen: 127.0.0.1:5432 clashes with local"),
        "{e}"
    );
    assert!(
        e.contains("tunnel \"db\" (tunnel[0] at tunnels.toml:3:1)"),
        "{e}"
    );
    // Port 0 never clashes.
    assert!(metrics_listen(&format!("[metrics]\nlisten = 0\n{ONE_TUNNEL}")).is_some());
}

#[test]
fn a_proxy_is_read_from_defaults_or_the_tunnel_and_its_password_never_shown() {
    let base = "[[tunnel]]\nname = \"a\"\ntarget = \"i-1\"\nremote_port = 1\n";
    let p = ok(&format!(
        "[defaults]\nproxy = \"http://alice:S3CRET-pw@proxy.corp:3128\"\n{base}\
         [[tunnel]]\nname = \"b\"\ntarget = \"i-2\"\nremote_port = 2\nproxy = \"proxy2:8080\"\n"
    ));
    let a = p.tunnels[0].aws.proxy.as_ref().expect("from [defaults]");
    assert_eq!(a.shown(), "http://***@proxy.corp:3128");
    assert!(a.has_credentials());
    let b = p.tunnels[1].aws.proxy.as_ref().expect("the tunnel's own");
    assert_eq!(b.shown(), "http://proxy2:8080");
    assert!(
        !format!("{p:?}").contains("S3CRET"),
        "Debug shows no password"
    );

    // A bad URL is an error that does not repeat the value: it may hold a password.
    for bad in [
        "https://alice:S3CRET@proxy:3128",
        "socks5://alice:S3CRET@proxy:1080",
        "http://alice:S3CRET@proxy:3128/path",
        "",
    ] {
        let e = err(&format!("{base}proxy = \"{bad}\"\n"));
        assert!(e.starts_with("tunnels.toml:5:9: tunnel[0].proxy: "), "{e}");
        assert!(!e.contains("S3CRET"), "{e}");
    }
    let e = err(&format!("{base}proxy = 3128\n"));
    assert!(e.contains("expected a string"), "{e}");
}

#[test]
fn ssmmessages_endpoint_fips_and_dual_stack_are_read() {
    let base = "[[tunnel]]\nname = \"a\"\ntarget = \"i-1\"\nremote_port = 1\n";
    let p = ok(&format!(
        "[defaults]\nuse_fips = true\n\
         ssmmessages_endpoint = \"vpce-0abc-xyz.ssmmessages.eu-west-1.vpce.amazonaws.com\"\n\
         {base}use_dual_stack = true\n"
    ));
    let aws = &p.tunnels[0].aws;
    assert_eq!(aws.use_fips, Some(true));
    assert_eq!(aws.use_dual_stack, Some(true));
    assert_eq!(
        aws.ssmmessages_endpoint
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("vpce-0abc-xyz.ssmmessages.eu-west-1.vpce.amazonaws.com")
    );
    let plain = ok(base);
    assert_eq!(plain.tunnels[0].aws.use_fips, None);
    assert_eq!(plain.tunnels[0].aws.ssmmessages_endpoint, None);

    let e = err(&format!(
        "{base}ssmmessages_endpoint = \"vpce.example/path\"\n"
    ));
    assert!(
        e.starts_with(
            "tunnels.toml:5:24: tunnel[0].ssmmessages_endpoint: \"vpce.example/path\" has a path"
        ),
        "{e}"
    );
    // Cleartext to another host: the data channel's token would travel unencrypted.
    let e = err(&format!(
        "{base}ssmmessages_endpoint = \"ws://10.0.0.5:8080\"\n"
    ));
    assert!(e.contains("unencrypted"), "{e}");
    ok(&format!(
        "{base}ssmmessages_endpoint = \"ws://10.0.0.5:8080\"\nallow_insecure_endpoint = true\n"
    ));
    ok(&format!(
        "{base}ssmmessages_endpoint = \"ws://127.0.0.2:8080\"\n"
    ));
    let e = err(&format!("{base}use_fips = \"yes\"\n"));
    assert!(
        e.contains("tunnel[0].use_fips") && e.contains("true or false"),
        "{e}"
    );
}

#[test]
fn a_tag_target_is_accepted_and_a_malformed_one_explained() {
    let p = ok("[[tunnel]]\nname = \"a\"\ntarget = \"tag:Name=bastion host\"\nremote_port = 22\n");
    assert_eq!(p.tunnels[0].target, "tag:Name=bastion host");
    ok(
        "[[tunnel]]\nname = \"a\"\ntarget = \"tag:aws:autoscaling:groupName=bastion\"\nremote_port = 22\n",
    );
    for (bad, why) in [
        ("tag:Name", "no '='"),
        ("tag:=x", "tag key"),
        ("tag:Name=", "tag value"),
    ] {
        let e = err(&format!(
            "[[tunnel]]\nname = \"a\"\ntarget = \"{bad}\"\nremote_port = 22\n"
        ));
        assert!(
            e.starts_with(&format!("tunnels.toml:3:10: tunnel[0].target: \"{bad}\"")),
            "{e}"
        );
        assert!(e.contains(why), "{e}");
    }
}

#[test]
fn the_example_file_documents_and_enables_metrics() {
    let policy = policy::load(&examples_dir().join("tunnels.toml")).expect("valid");
    assert_eq!(
        policy.metrics.map(|m| m.listen),
        Some("127.0.0.1:9464".parse().expect("addr"))
    );
}
