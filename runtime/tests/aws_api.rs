//! `SsmApi` against the in-process emulator: StartSession / ResumeSession / TerminateSession,
//! error classification, and credentials re-read from a rewritten credentials file.
//!
//! Credentials come from temporary shared config/credentials files selected through the
//! `aws_config_file` / `aws_credentials_file` settings and a profile — never from the process
//! environment, which parallel tests must not mutate.

use std::path::PathBuf;
use std::time::Duration;

use ssm_emulator::events::Event;
use ssm_emulator::faults::ResumeFailCode;
use ssm_emulator::{Emulator, EmulatorConfig, FaultSettings};
use ssm_tether::aws::{ApiErrorKind, SsmApi};
use ssm_tether::policy::{AwsSettings, TunnelSpec};
use ssm_tether::transport::sign;

/// A temporary directory with an AWS config and credentials file for profile `emu`.
struct AwsFiles {
    dir: PathBuf,
}

impl AwsFiles {
    fn new(tag: &str, access_key: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "ssm-tether-aws-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(
            dir.join("config"),
            "[profile emu]\nregion = us-east-1\n\n[profile broken]\nregion = us-east-1\ncredential_process = false\n",
        )
        .expect("config");
        let files = Self { dir };
        files.set_key(access_key);
        files
    }

    /// Rewrites the credentials file, as a credential rotation tool would.
    fn set_key(&self, access_key: &str) {
        std::fs::write(
            self.dir.join("credentials"),
            format!(
                "[emu]\naws_access_key_id = {access_key}\naws_secret_access_key = secret-{access_key}\n\
                 aws_session_token = token-{access_key}\n"
            ),
        )
        .expect("credentials");
    }

    fn settings(&self, profile: &str, endpoint_url: &str) -> AwsSettings {
        AwsSettings {
            region: None, // resolved from the profile
            profile: Some(profile.to_owned()),
            endpoint_url: Some(endpoint_url.to_owned()),
            config_file: Some(self.dir.join("config")),
            credentials_file: Some(self.dir.join("credentials")),
            ..AwsSettings::default()
        }
    }
}

impl Drop for AwsFiles {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

async fn emulator(faults: FaultSettings) -> Emulator {
    Emulator::start(EmulatorConfig {
        faults,
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator starts")
}

/// Access key ids of the emulator's API calls for `operation`, in order.
fn keys_seen(emu: &Emulator, operation: &str) -> Vec<Option<String>> {
    emu.events()
        .snapshot()
        .iter()
        .filter_map(|r| match &r.event {
            Event::Api {
                operation: op,
                access_key_id,
                ..
            } if op == operation => Some(access_key_id.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn start_resume_terminate_round_trip_with_rotated_credentials() {
    let emu = emulator(FaultSettings::default()).await;
    let files = AwsFiles::new("roundtrip", "AKIDFIRST");
    let api = SsmApi::new(files.settings("emu", &emu.endpoint_url()));

    let spec = TunnelSpec {
        remote_host: Some("db.internal".to_owned()),
        ..TunnelSpec::new("db", "i-0123456789abcdef0", 5432)
    };
    let grant = api
        .start_session(
            &spec.target,
            spec.document_name(),
            &spec.parameters(),
            Some("ssm-tether test"),
        )
        .await
        .expect("StartSession");
    assert!(!grant.session_id.is_empty());
    assert!(!grant.token_value.is_empty());
    assert!(
        grant.stream_url.starts_with("ws://127.0.0.1:"),
        "{}",
        grant.stream_url
    );
    assert!(!format!("{grant:?}").contains(&grant.token_value));
    assert_eq!(
        keys_seen(&emu, "StartSession"),
        vec![Some("AKIDFIRST".to_owned())]
    );

    // The region came from the profile in the config file.
    assert_eq!(api.region().await.expect("region"), "us-east-1");

    let resumed = api
        .resume_session(&grant.session_id)
        .await
        .expect("ResumeSession")
        .expect("a live session gets a token");
    assert_eq!(resumed.session_id, grant.session_id);
    assert!(!resumed.token_value.is_empty());
    assert!(!resumed.stream_url.is_empty());

    // Rotate: the very next call signs with the new key, without recreating the client.
    files.set_key("AKIDSECOND");
    let again = api
        .resume_session(&grant.session_id)
        .await
        .expect("ResumeSession after rotation");
    assert!(again.is_some());
    assert_eq!(
        keys_seen(&emu, "ResumeSession"),
        vec![Some("AKIDFIRST".to_owned()), Some("AKIDSECOND".to_owned())]
    );
    let creds = api.credentials().await.expect("credentials");
    assert_eq!(creds.access_key_id(), "AKIDSECOND");
    assert_eq!(creds.session_token(), Some("token-AKIDSECOND"));

    // The upgrade request is signed with the fresh credentials for ssmmessages.
    let request = api
        .upgrade_request(&resumed.stream_url)
        .await
        .expect("upgrade request");
    let auth = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .expect("signed");
    assert!(auth.contains("Credential=AKIDSECOND/"), "{auth}");
    assert!(
        auth.contains("/us-east-1/ssmmessages/aws4_request"),
        "{auth}"
    );
    assert!(request.headers().contains_key("x-amz-security-token"));
    assert!(!sign::is_presigned_url(&resumed.stream_url));

    api.terminate_session(&grant.session_id)
        .await
        .expect("TerminateSession");
    assert_eq!(keys_seen(&emu, "TerminateSession").len(), 1);

    // After termination the service has nothing to resume.
    match api.resume_session(&grant.session_id).await {
        Ok(None) => {}
        Err(e) if e.is_session_gone() => {}
        other => panic!("expected no token or a gone session, got {other:?}"),
    }
    emu.shutdown().await;
}

#[tokio::test]
async fn service_errors_are_classified() {
    let emu = emulator(FaultSettings::default()).await;
    let files = AwsFiles::new("errors", "AKIDERR");
    let api = SsmApi::new(files.settings("emu", &emu.endpoint_url()));
    let params = TunnelSpec::new("x", "i-1", 80).parameters();

    let e = api
        .resume_session("no-such-session")
        .await
        .expect_err("unknown session");
    assert_eq!(e.kind, ApiErrorKind::DoesNotExist);
    assert_eq!(e.code.as_deref(), Some("DoesNotExistException"));
    assert!(e.is_session_gone());
    assert!(
        e.to_string()
            .starts_with("ResumeSession: session does not exist (DoesNotExistException): "),
        "{e}"
    );

    let e = api
        .start_session(
            "x-notaninstance",
            "AWS-StartPortForwardingSession",
            &params,
            None,
        )
        .await
        .expect_err("not connected");
    assert_eq!(e.kind, ApiErrorKind::TargetNotConnected, "{e}");

    let e = api
        .start_session("i-0123", "AWS-NoSuchDocument", &params, None)
        .await
        .expect_err("bad document");
    assert_eq!(e.kind, ApiErrorKind::InvalidDocument, "{e}");

    // AccessDenied is not retried by the SDK: one injected failure is one error.
    let grant = api
        .start_session("i-0123", "AWS-StartPortForwardingSession", &params, None)
        .await
        .expect("start");
    emu.faults()
        .fail_resume(1, None, ResumeFailCode::AccessDenied);
    let e = api
        .resume_session(&grant.session_id)
        .await
        .expect_err("denied");
    assert_eq!(e.kind, ApiErrorKind::AccessDenied, "{e}");
    assert!(!e.is_session_gone());
    // Throttling is retried once by the SDK: a single injected failure is absorbed.
    emu.faults()
        .fail_resume(1, None, ResumeFailCode::Throttling);
    let ok = api
        .resume_session(&grant.session_id)
        .await
        .expect("throttle absorbed by one SDK retry");
    assert!(ok.is_some());
    emu.shutdown().await;
}

#[tokio::test]
async fn expired_credentials_recover_when_the_file_is_rewritten() {
    let emu = emulator(FaultSettings {
        credential_ttl: Some(Duration::from_millis(300)),
        ..FaultSettings::default()
    })
    .await;
    let files = AwsFiles::new("expiry", "AKIDOLD");
    let api = SsmApi::new(files.settings("emu", &emu.endpoint_url()));
    let params = TunnelSpec::new("x", "i-1", 80).parameters();
    let grant = api
        .start_session("i-0123", "AWS-StartPortForwardingSession", &params, None)
        .await
        .expect("start with fresh credentials");

    tokio::time::sleep(Duration::from_millis(400)).await;
    let e = api
        .resume_session(&grant.session_id)
        .await
        .expect_err("expired");
    assert_eq!(e.kind, ApiErrorKind::ExpiredToken, "{e}");
    assert!(!e.to_string().contains("secret-AKIDOLD"));
    assert!(!e.to_string().contains("token-AKIDOLD"));

    files.set_key("AKIDNEW");
    let resumed = api
        .resume_session(&grant.session_id)
        .await
        .expect("resume with rotated credentials");
    assert!(resumed.is_some());
    emu.shutdown().await;
}

#[tokio::test]
async fn credential_and_transport_failures_are_classified() {
    let emu = emulator(FaultSettings::default()).await;
    let files = AwsFiles::new("creds", "AKIDX");

    // A profile whose credential_process fails: no credentials, no request sent.
    let broken = SsmApi::new(files.settings("broken", &emu.endpoint_url()));
    let e = broken.credentials().await.expect_err("no credentials");
    assert_eq!(e.kind, ApiErrorKind::Credentials, "{e}");
    let e = broken
        .resume_session("s")
        .await
        .expect_err("no credentials");
    assert_eq!(e.kind, ApiErrorKind::Credentials, "{e}");
    assert!(keys_seen(&emu, "ResumeSession").is_empty());
    emu.shutdown().await;

    // Nothing listens on a just-released port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let down = SsmApi::new(files.settings("emu", &format!("http://127.0.0.1:{port}")));
    let e = down.terminate_session("s").await.expect_err("unreachable");
    assert_eq!(e.kind, ApiErrorKind::Transport, "{e}");
    assert!(e.is_transient());
}
