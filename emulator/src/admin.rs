//! The admin HTTP endpoint (its own port): trigger faults, change settings, read the event
//! log, counters and sessions. Every endpoint is listed in the README.
//!
//! | Method and path | Effect |
//! |---|---|
//! | `POST /faults/recycle?side=client\|agent\|both&session=ID` | close 1000 "Bye" now |
//! | `POST /faults/reset?side=…&session=ID` | drop the socket(s) without a close frame |
//! | `POST /faults/black-hole?side=…&on=true\|false&session=ID` | stop/resume reading+writing |
//! | `POST /faults/terminate?session=ID` | service-side termination |
//! | `POST /faults/resume-fail?count=N&for=10s&code=access-denied\|throttling` | fail ResumeSession |
//! | `POST /faults/refuse-destination?on=true\|false` | agents refuse their destination |
//! | `GET /faults`, `PUT /faults` (JSON merge patch) | read / change [`FaultSettings`] |
//! | `GET /events` | the event log as JSON lines (`?since_ms=T` for newer records only) |
//! | `GET /counters` | counters as one JSON object |
//! | `GET /sessions` | sessions as a JSON array |
//! | `GET /instances` | the fake managed nodes as a JSON array |
//! | `POST /faults/replace-instance?id=ID` | a new node with ID's tags comes online, ID goes `ConnectionLost`; answers `{"old": ID, "new": NEW}` |
//! | `POST /faults/ping-status?id=ID&status=Online\|ConnectionLost\|Inactive` | set a node's ping status |
//! | `POST /faults/api-fail?code=CODE&count=N&operation=OP` | fail the next N calls of OP (default: any) with CODE: `access-denied`, `expired-token`, `throttling`, `invalid-document`, `target-not-connected`, `unrecognized-client`, `internal` |
//!
//! Without `session`, a fault applies to every active session.

use std::collections::HashMap;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::events::EventLog;
use crate::faults::{FaultControl, FaultError, FaultSettings, ResumeFailCode, SideSelection};

#[derive(Clone)]
struct Admin {
    faults: FaultControl,
    events: EventLog,
}

/// The admin router.
pub(crate) fn router(faults: FaultControl, events: EventLog) -> Router {
    Router::new()
        .route("/faults", get(get_faults).put(put_faults))
        .route("/faults/recycle", post(recycle))
        .route("/faults/reset", post(reset))
        .route("/faults/black-hole", post(black_hole))
        .route("/faults/terminate", post(terminate))
        .route("/faults/resume-fail", post(resume_fail))
        .route("/faults/refuse-destination", post(refuse_destination))
        .route("/events", get(event_lines))
        .route("/counters", get(counters))
        .route("/sessions", get(sessions))
        .route("/instances", get(instances))
        .route("/faults/replace-instance", post(replace_instance))
        .route("/faults/ping-status", post(ping_status))
        .route("/faults/api-fail", post(api_fail))
        .with_state(Admin { faults, events })
}

type Params = Query<HashMap<String, String>>;

fn bad_request(message: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": message.to_string()})),
    )
        .into_response()
}

fn fault_error(err: FaultError) -> Response {
    match err {
        FaultError::NoSuchSession(_) => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": err.to_string()})),
        )
            .into_response(),
        FaultError::InvalidSettings(_) => bad_request(err),
    }
}

fn side(params: &HashMap<String, String>) -> Result<SideSelection, String> {
    params
        .get("side")
        .map_or(Ok(SideSelection::Both), |s| s.parse())
}

fn flag(params: &HashMap<String, String>, name: &str) -> Result<bool, String> {
    match params.get(name).map(String::as_str) {
        None | Some("true" | "1" | "on") => Ok(true),
        Some("false" | "0" | "off") => Ok(false),
        Some(other) => Err(format!("{name} must be true or false, got {other:?}")),
    }
}

async fn get_faults(State(admin): State<Admin>) -> Response {
    axum::Json(admin.faults.settings()).into_response()
}

async fn put_faults(State(admin): State<Admin>, body: axum::body::Bytes) -> Response {
    let patch: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(patch) => patch,
        Err(err) => return bad_request(format!("body is not JSON: {err}")),
    };
    match admin.faults.patch(&patch) {
        Ok(settings) => axum::Json::<FaultSettings>(settings).into_response(),
        Err(err) => fault_error(err),
    }
}

async fn recycle(State(admin): State<Admin>, Query(params): Params) -> Response {
    let sides = match side(&params) {
        Ok(sides) => sides,
        Err(err) => return bad_request(err),
    };
    match admin
        .faults
        .recycle(params.get("session").map(String::as_str), sides)
        .await
    {
        Ok(n) => axum::Json(json!({"sessions": n})).into_response(),
        Err(err) => fault_error(err),
    }
}

async fn reset(State(admin): State<Admin>, Query(params): Params) -> Response {
    let sides = match side(&params) {
        Ok(sides) => sides,
        Err(err) => return bad_request(err),
    };
    match admin
        .faults
        .reset(params.get("session").map(String::as_str), sides)
        .await
    {
        Ok(n) => axum::Json(json!({"sessions": n})).into_response(),
        Err(err) => fault_error(err),
    }
}

async fn black_hole(State(admin): State<Admin>, Query(params): Params) -> Response {
    let (sides, on) = match (side(&params), flag(&params, "on")) {
        (Ok(sides), Ok(on)) => (sides, on),
        (Err(err), _) | (_, Err(err)) => return bad_request(err),
    };
    match admin
        .faults
        .black_hole(params.get("session").map(String::as_str), sides, on)
    {
        Ok(n) => axum::Json(json!({"sockets": n})).into_response(),
        Err(err) => fault_error(err),
    }
}

async fn terminate(State(admin): State<Admin>, Query(params): Params) -> Response {
    match admin
        .faults
        .terminate(params.get("session").map(String::as_str))
        .await
    {
        Ok(n) => axum::Json(json!({"sessions": n})).into_response(),
        Err(err) => fault_error(err),
    }
}

async fn resume_fail(State(admin): State<Admin>, Query(params): Params) -> Response {
    let count = match params.get("count").map(|c| c.parse::<u32>()) {
        None => 0,
        Some(Ok(count)) => count,
        Some(Err(err)) => return bad_request(format!("count: {err}")),
    };
    let window = match params.get("for").map(|w| humantime::parse_duration(w)) {
        None => None,
        Some(Ok(window)) => Some(window),
        Some(Err(err)) => return bad_request(format!("for: {err}")),
    };
    let code = match params.get("code").map(|c| c.parse::<ResumeFailCode>()) {
        None => ResumeFailCode::AccessDenied,
        Some(Ok(code)) => code,
        Some(Err(err)) => return bad_request(format!("code: {err}")),
    };
    if count == 0 && window.is_none() {
        return bad_request("give count=N and/or for=DURATION");
    }
    admin.faults.fail_resume(count, window, code);
    axum::Json(json!({
        "count": count,
        "for": window.map(|w: Duration| humantime::format_duration(w).to_string()),
        "code": code,
    }))
    .into_response()
}

async fn refuse_destination(State(admin): State<Admin>, Query(params): Params) -> Response {
    match flag(&params, "on") {
        Ok(on) => {
            admin.faults.refuse_destination(on);
            axum::Json(json!({"refuse_destination": on})).into_response()
        }
        Err(err) => bad_request(err),
    }
}

async fn event_lines(State(admin): State<Admin>, Query(params): Params) -> Response {
    let since = params
        .get("since_ms")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    let mut body = String::new();
    for record in admin.events.snapshot() {
        if record.t_ms < since {
            continue;
        }
        if let Ok(line) = serde_json::to_string(&*record) {
            body.push_str(&line);
            body.push('\n');
        }
    }
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

async fn counters(State(admin): State<Admin>) -> Response {
    axum::Json(admin.events.counters()).into_response()
}

async fn sessions(State(admin): State<Admin>) -> Response {
    axum::Json(admin.faults.sessions()).into_response()
}

async fn instances(State(admin): State<Admin>) -> Response {
    axum::Json(admin.faults.instances()).into_response()
}

async fn replace_instance(State(admin): State<Admin>, Query(params): Params) -> Response {
    let Some(id) = params.get("id") else {
        return bad_request("give id=INSTANCE_ID");
    };
    match admin.faults.replace_instance(id) {
        Ok(new) => axum::Json(json!({"old": id, "new": new})).into_response(),
        Err(err) => (StatusCode::NOT_FOUND, axum::Json(json!({"error": err}))).into_response(),
    }
}

async fn ping_status(State(admin): State<Admin>, Query(params): Params) -> Response {
    let status = match params.get("status").map(String::as_str) {
        Some("Online") => crate::instances::PingStatus::Online,
        Some("ConnectionLost") => crate::instances::PingStatus::ConnectionLost,
        Some("Inactive") => crate::instances::PingStatus::Inactive,
        _ => return bad_request("status must be Online, ConnectionLost or Inactive"),
    };
    let Some(id) = params.get("id") else {
        return bad_request("give id=INSTANCE_ID");
    };
    match admin.faults.set_ping_status(id, status) {
        Ok(()) => axum::Json(json!({"id": id, "status": status.as_str()})).into_response(),
        Err(err) => (StatusCode::NOT_FOUND, axum::Json(json!({"error": err}))).into_response(),
    }
}

async fn api_fail(State(admin): State<Admin>, Query(params): Params) -> Response {
    let code = match params
        .get("code")
        .map(|c| c.parse::<crate::api_faults::ApiFailCode>())
    {
        Some(Ok(code)) => code,
        Some(Err(err)) => return bad_request(format!("code: {err}")),
        None => return bad_request("give code=CODE"),
    };
    let count = match params.get("count").map(|c| c.parse::<u32>()) {
        None => 1,
        Some(Ok(count)) => count,
        Some(Err(err)) => return bad_request(format!("count: {err}")),
    };
    let operation = params.get("operation").map(String::as_str);
    admin.faults.fail_api(operation, code, count);
    axum::Json(json!({"armed": admin.faults.armed_api_failures()})).into_response()
}
