//! The policy parser under arbitrary input, as a fuzzer would drive it: it never panics, and
//! every rejection points at a place in the file (`name:line:column`) or names the file.
//!
//! The parser lives in the runtime crate, whose dependency tree (the AWS SDK, wasmtime) would
//! all have to be built under the fuzzer's sanitizers; these properties run on every
//! `cargo test` instead, over generated text that is mostly valid TOML made of the policy's
//! own keys and values, which reaches far deeper than random bytes would.

use proptest::prelude::*;
use ssm_tether::policy;

const KEYS: &[&str] = &[
    "name",
    "target",
    "remote_port",
    "remote_host",
    "local",
    "allow_non_loopback",
    "region",
    "profile",
    "endpoint_url",
    "allow_insecure_endpoint",
    "aws_config_file",
    "aws_credentials_file",
    "reason",
    "ping_interval",
    "pong_timeout",
    "sessions",
    "max_session_duration",
    "rotate_before",
    "slow_reader_buffer",
    "slow_reader_tunnel_buffer",
    "slow_reader_timeout",
    "base_delay",
    "max_delay",
    "give_up_after",
    "stable_after",
    "resume_attempts_before_restart",
    "plugin",
    "config",
    "grants",
    "interval",
    "unhealthy_after",
    "memory_mb",
    "cpu",
    "timeout",
    "sha256",
    "bogus",
];

const TABLES: &[&str] = &[
    "[defaults]",
    "[[tunnel]]",
    "[tunnel.recovery]",
    "[defaults.recovery]",
    "[tunnel.reconnect]",
    "[[tunnel.health_check]]",
    "[[tunnel.hook]]",
    "[[defaults.hook]]",
    "[weird]",
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u32..70_000).prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        prop_oneof![
            Just("1s"),
            Just("0s"),
            Just("never"),
            Just("300000000y"),
            Just("20s"),
            Just("2h"),
            Just("i-0123456789abcdef0"),
            Just("127.0.0.1:0"),
            Just("0.0.0.0:80"),
            Just("unix:./s.sock"),
            Just("http://10.0.0.1"),
            Just("https://ssm.example.com"),
            Just("builtin:tcp-connect"),
            Just("builtin:nope"),
            Just("4MiB"),
            Just("tunnel-tcp"),
        ]
        .prop_map(|s| format!("{s:?}")),
        "[ -~]{0,24}".prop_map(|s| format!("{s:?}")),
        "\\PC{0,12}".prop_map(|s| format!("{s:?}")),
        Just("[\"tunnel-tcp\", 1]".to_owned()),
        Just("{ a = 1, b = [true] }".to_owned()),
    ]
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (proptest::sample::select(KEYS), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => proptest::sample::select(TABLES).prop_map(str::to_owned),
        1 => "[ -~]{0,30}",
    ]
}

fn policy_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(line(), 0..40).prop_map(|lines| lines.join("\n"))
}

fn check(text: &str) -> Result<(), TestCaseError> {
    if let Err(err) = policy::parse("fuzz.toml", text) {
        let message = err.to_string();
        prop_assert!(message.starts_with("fuzz.toml"), "{message}");
        prop_assert!(!message.contains('\n'), "one line: {message:?}");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn generated_policies_never_panic_and_errors_point_into_the_file(text in policy_text()) {
        check(&text)?;
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        check(&text)?;
    }

    #[test]
    fn arbitrary_bytes_as_text_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }
}
