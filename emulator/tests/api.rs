//! The SSM JSON-1.1 API: routing, validation, error bodies, tokens and StreamUrls.

mod support;

use serde_json::json;
use ssm_emulator::FaultSettings;
use ssm_emulator::events::Event;
use support::*;

#[tokio::test]
async fn start_session_returns_token_and_stream_url_and_records_the_access_key() {
    let emulator = start(config_without_agent(FaultSettings::default())).await;
    let endpoint = emulator.endpoint_url();
    let response = ssm_call(
        &endpoint,
        "StartSession",
        "AKIDFIRST",
        json!({
            "Target": "i-0123456789abcdef0",
            "DocumentName": "AWS-StartPortForwardingSessionToRemoteHost",
            "Parameters": {"host": ["db.internal"], "portNumber": ["5432"]},
        }),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.headers["content-type"],
        "application/x-amz-json-1.1"
    );
    assert!(response.headers.contains_key("x-amzn-requestid"));
    let body = response.json();
    let id = body["SessionId"].as_str().expect("id");
    assert!(id.starts_with("emulator-") && id.len() <= 96, "{id}");
    let token = body["TokenValue"].as_str().expect("token");
    assert!(!token.is_empty() && token.len() <= 300);
    let url = body["StreamUrl"].as_str().expect("url");
    let ws_base = endpoint.replace("http://", "ws://");
    assert!(
        url.starts_with(&format!(
            "{ws_base}/v1/data-channel/{id}?role=publish_subscribe&cell-number="
        )),
        "{url}"
    );
    // Every ResumeSession gives a fresh token, same cell without the stale-cell fault.
    let resumed = resumed(&endpoint, id).await;
    assert_ne!(resumed.token, token);
    assert_eq!(resumed.stream_url, url);

    let found = emulator
        .events()
        .wait_for(WAIT, |e| {
            matches!(e, Event::Api { operation, access_key_id, status: 200, .. }
                if operation == "StartSession" && access_key_id.as_deref() == Some("AKIDFIRST"))
        })
        .await;
    assert!(found.is_some());
    // Tokens never reach the event log.
    let log = serde_json::to_string(
        &emulator
            .events()
            .snapshot()
            .iter()
            .map(|r| (**r).clone())
            .collect::<Vec<_>>(),
    )
    .expect("json");
    assert!(!log.contains(token));
    assert!(!log.contains(&resumed.token));
    emulator.shutdown().await;
}

#[tokio::test]
async fn invalid_requests_get_real_error_codes() {
    let emulator = start(config_without_agent(FaultSettings::default())).await;
    let endpoint = emulator.endpoint_url();
    let cases = [
        (
            "StartSession",
            json!({"DocumentName": "AWS-StartPortForwardingSession"}),
            "ValidationException",
            "target",
        ),
        (
            "StartSession",
            json!({"Target": "i-1", "DocumentName": "no"}),
            "ValidationException",
            "documentName",
        ),
        (
            "StartSession",
            json!({"Target": "i-1", "DocumentName": "bad name!"}),
            "ValidationException",
            "documentName",
        ),
        (
            "StartSession",
            json!({"Target": "x".repeat(401)}),
            "ValidationException",
            "target",
        ),
        (
            "StartSession",
            json!({"Target": "i-1", "DocumentName": "AWS-RunShellScript"}),
            "InvalidDocument",
            "AWS-RunShellScript",
        ),
        (
            "StartSession",
            json!({"Target": "i-1", "DocumentName": "AWS-StartPortForwardingSession", "Parameters": {"portNumber": ["99999"]}}),
            "InvalidDocument",
            "portNumber",
        ),
        (
            "StartSession",
            json!({"Target": "i-1", "DocumentName": "AWS-StartPortForwardingSession", "Parameters": {"portNumber": "80"}}),
            "SerializationException",
            "Parameters",
        ),
        (
            "StartSession",
            json!({"Target": "server-1", "DocumentName": "AWS-StartPortForwardingSession"}),
            "TargetNotConnected",
            "server-1",
        ),
        (
            "ResumeSession",
            json!({"SessionId": "nope-123"}),
            "DoesNotExistException",
            "nope-123",
        ),
        (
            "ResumeSession",
            json!({"SessionId": ""}),
            "ValidationException",
            "sessionId",
        ),
        (
            "ResumeSession",
            json!({"SessionId": "x".repeat(97)}),
            "ValidationException",
            "sessionId",
        ),
        (
            "TerminateSession",
            json!({}),
            "ValidationException",
            "sessionId",
        ),
        (
            "DescribeSessions",
            json!({}),
            "UnknownOperationException",
            "DescribeSessions",
        ),
    ];
    for (operation, body, code, mentions) in cases {
        let response = ssm_call(&endpoint, operation, "AKIDTEST", body.clone()).await;
        assert_eq!(
            response.status, 400,
            "{operation} {body}: {}",
            response.body
        );
        let json = response.json();
        assert_eq!(
            json["__type"], code,
            "{operation} {body}: {}",
            response.body
        );
        let message = json["message"].as_str().expect("message");
        assert!(
            message.contains(mentions),
            "{message} should mention {mentions}"
        );
    }
    let garbage = http(
        "POST",
        &format!("{endpoint}/"),
        &[("x-amz-target", "AmazonSSM.StartSession".to_owned())],
        "{not json",
    )
    .await;
    assert_eq!(garbage.json()["__type"], "SerializationException");
    assert_eq!(
        emulator
            .events()
            .counter("api.ResumeSession.DoesNotExistException"),
        1
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn terminate_session_ends_it_and_resume_then_has_no_token() {
    let emulator = start(config_without_agent(FaultSettings::default())).await;
    let endpoint = emulator.endpoint_url();
    let session = start_session(&endpoint, 80).await;
    let response = ssm_call(
        &endpoint,
        "TerminateSession",
        "AKIDTEST",
        json!({"SessionId": session.session_id}),
    )
    .await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["SessionId"], session.session_id.as_str());
    let resumed = resume_session(&endpoint, &session.session_id, "AKIDTEST").await;
    assert_eq!(resumed.status, 200);
    assert!(
        resumed.json().get("TokenValue").is_none(),
        "{}",
        resumed.body
    );
    // The agent's token request now fails the way real logs show.
    let create = http(
        "POST",
        &format!("{endpoint}/v1/data-channel/{}", session.session_id),
        &[],
        "{}",
    )
    .await;
    assert_eq!(create.status, 400);
    assert!(create.body.contains("Session is already terminated"));
    let unknown = http(
        "POST",
        &format!("{endpoint}/v1/data-channel/nope"),
        &[],
        "{}",
    )
    .await;
    assert_eq!(unknown.status, 404);
    // And the data channel refuses the upgrade.
    assert_eq!(dial(&session.stream_url).await.err(), Some(403));
    emulator.shutdown().await;
}

#[tokio::test]
async fn credential_expiry_rejects_old_access_keys_and_accepts_new_ones() {
    let faults = FaultSettings {
        credential_ttl: Some(std::time::Duration::from_secs(1)),
        ..FaultSettings::default()
    };
    let emulator = start(config_without_agent(faults)).await;
    let endpoint = emulator.endpoint_url();
    let session = start_session(&endpoint, 80).await;
    assert_eq!(
        resume_session(&endpoint, &session.session_id, "AKIDTEST")
            .await
            .status,
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let expired = resume_session(&endpoint, &session.session_id, "AKIDTEST").await;
    assert_eq!(expired.status, 400);
    assert_eq!(expired.json()["__type"], "ExpiredTokenException");
    let refreshed = resume_session(&endpoint, &session.session_id, "AKIDFRESH").await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    assert!(emulator.events().counter("fault.credential_expired") >= 1);
    assert_eq!(
        emulator
            .events()
            .counter("api.ResumeSession.ExpiredTokenException"),
        1
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn resume_session_fails_n_times_then_for_a_window() {
    let faults = FaultSettings {
        resume_fail: ssm_emulator::faults::ResumeFailSettings {
            count: 2,
            window: None,
            code: ssm_emulator::faults::ResumeFailCode::Throttling,
        },
        ..FaultSettings::default()
    };
    let emulator = start(config_without_agent(faults)).await;
    let endpoint = emulator.endpoint_url();
    let session = start_session(&endpoint, 80).await;
    for _ in 0..2 {
        let failed = resume_session(&endpoint, &session.session_id, "AKIDTEST").await;
        assert_eq!(failed.status, 400);
        assert_eq!(failed.json()["__type"], "ThrottlingException");
    }
    assert_eq!(
        resume_session(&endpoint, &session.session_id, "AKIDTEST")
            .await
            .status,
        200
    );

    // Armed at runtime through the admin endpoint: 403 AccessDenied for 300 ms.
    let admin = emulator.admin_url();
    let armed = http(
        "POST",
        &format!("{admin}/faults/resume-fail?for=300ms&code=access-denied"),
        &[],
        "",
    )
    .await;
    assert_eq!(armed.status, 200, "{}", armed.body);
    let denied = resume_session(&endpoint, &session.session_id, "AKIDTEST").await;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json()["__type"], "AccessDeniedException");
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    assert_eq!(
        resume_session(&endpoint, &session.session_id, "AKIDTEST")
            .await
            .status,
        200
    );
    assert_eq!(emulator.events().counter("fault.resume_fail"), 3);
    emulator.shutdown().await;
}

#[tokio::test]
async fn the_admin_endpoint_answers_only_under_its_secret_path() {
    let emulator = start(config_without_agent(FaultSettings::default())).await;
    let admin = emulator.admin_url();
    let (base, token) = admin.rsplit_once('/').expect("a token path");
    assert_eq!(token.len(), 32, "{admin}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{admin}");
    // What another program that only knows the port can do: nothing.
    for (method, path) in [("POST", "/faults/terminate"), ("GET", "/sessions")] {
        let refused = http(method, &format!("{base}{path}"), &[], "").await;
        assert_eq!(refused.status, 404, "{method} {path}");
        let wrong = http(method, &format!("{base}/{}{path}", "0".repeat(32)), &[], "").await;
        assert_eq!(wrong.status, 404, "{method} {path} with a wrong token");
    }
    let allowed = http("GET", &format!("{admin}/sessions"), &[], "").await;
    assert_eq!(allowed.status, 200);
    // A second emulator draws another token, whatever its seed.
    let other = start(config_without_agent(FaultSettings::default())).await;
    assert_ne!(
        other
            .admin_url()
            .rsplit_once('/')
            .map(|(_, t)| t.to_owned()),
        Some(token.to_owned())
    );
    emulator.shutdown().await;
    other.shutdown().await;
}

#[tokio::test]
async fn admin_endpoints_report_and_patch() {
    let emulator = start(config_without_agent(FaultSettings::default())).await;
    let admin = emulator.admin_url();
    let session = start_session(&emulator.endpoint_url(), 80).await;
    let sessions = http("GET", &format!("{admin}/sessions"), &[], "").await;
    assert_eq!(
        sessions.json()[0]["session_id"],
        session.session_id.as_str()
    );
    assert!(!sessions.body.contains(&session.token));
    let patched = http(
        "PUT",
        &format!("{admin}/faults"),
        &[("content-type", "application/json".to_owned())],
        r#"{"to_client":{"drop_rate":0.25},"recycle_every":"5s"}"#,
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    assert_eq!(patched.json()["to_client"]["drop_rate"], 0.25);
    assert_eq!(
        emulator.faults().settings().recycle_every,
        Some(std::time::Duration::from_secs(5))
    );
    let bad = http(
        "PUT",
        &format!("{admin}/faults"),
        &[],
        r#"{"to_client":{"drop_rate":7}}"#,
    )
    .await;
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("drop_rate"), "{}", bad.body);
    let missing = http(
        "POST",
        &format!("{admin}/faults/terminate?session=nope"),
        &[],
        "",
    )
    .await;
    assert_eq!(missing.status, 404);
    let events = http("GET", &format!("{admin}/events"), &[], "").await;
    let lines: Vec<serde_json::Value> = events
        .body
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "api" && l["operation"] == "StartSession")
    );
    let counters = http("GET", &format!("{admin}/counters"), &[], "").await;
    assert_eq!(counters.json()["api.StartSession.ok"], 1);
    emulator.shutdown().await;
}
