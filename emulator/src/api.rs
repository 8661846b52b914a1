//! The SSM JSON-1.1 API (`POST /`, routed by `X-Amz-Target`; `TrentService.*` targets go to
//! the fake KMS in [`crate::kms`]) and MGS's CreateDataChannel (`POST /v1/data-channel/{id}`),
//! docs/protocol.md §4.1 and §8.1.
//!
//! Any SigV4 `Authorization` header is accepted (signatures are not checked); its access key
//! id is recorded in the event log and drives the credential-expiry fault.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::events::Event;
use crate::faults::ResumeFailCode;
use crate::service::{Service, Termination};

const JSON_11: &str = "application/x-amz-json-1.1";

/// An API error: HTTP status, `__type` code and message.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }

    fn validation(message: impl Into<String>) -> Self {
        Self::new("ValidationException", message)
    }
}

/// The outcome of one operation: a JSON body, or an error.
type ApiResult = Result<(Option<String>, Value), ApiError>;

/// `POST /`: the SSM API.
pub(crate) async fn ssm(
    State(service): State<Arc<Service>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let access_key_id = access_key_id(&headers);
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some(operation) = target.strip_prefix(crate::kms::TARGET_PREFIX) {
        return crate::kms::handle(&service, operation, access_key_id.as_deref(), &body);
    }
    let operation = target
        .strip_prefix("AmazonSSM.")
        .unwrap_or(target)
        .to_owned();
    let result = dispatch(&service, &operation, access_key_id.as_deref(), &body).await;
    let (session_id, status, error, response) = match result {
        Ok((session_id, value)) => (
            session_id,
            StatusCode::OK,
            None,
            (StatusCode::OK, value.to_string()).into_response(),
        ),
        Err(err) => (
            session_id_in(&body),
            err.status,
            Some(err.code.to_owned()),
            (
                err.status,
                json!({"__type": err.code, "message": err.message}).to_string(),
            )
                .into_response(),
        ),
    };
    service.events.emit(Event::Api {
        operation: if operation.is_empty() {
            "Unknown".to_owned()
        } else {
            operation
        },
        access_key_id,
        session_id,
        status: status.as_u16(),
        error,
    });
    with_aws_headers(&service, response)
}

fn with_aws_headers(service: &Service, mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON_11));
    if let Ok(id) = HeaderValue::from_str(&service.random_uuid().to_string()) {
        headers.insert("x-amzn-requestid", id);
    }
    response
}

async fn dispatch(
    service: &Arc<Service>,
    operation: &str,
    access_key_id: Option<&str>,
    body: &[u8],
) -> ApiResult {
    if let Some(answer) = crate::api_ext::intercept(service, operation, access_key_id, body) {
        return answer.map_err(|f| ApiError {
            status: f.status,
            code: f.code,
            message: f.message,
        });
    }
    if !matches!(
        operation,
        "StartSession" | "ResumeSession" | "TerminateSession"
    ) {
        return Err(ApiError::new(
            "UnknownOperationException",
            format!("Operation {operation:?} is not supported by the emulator."),
        ));
    }
    if let Some(key) = access_key_id
        && service.credentials_expired(key)
    {
        service.events.emit(Event::Fault {
            session_id: None,
            kind: "credential_expired".to_owned(),
            detail: format!("access key {key} is past its time-to-live"),
        });
        return Err(ApiError::new(
            "ExpiredTokenException",
            "The security token included in the request is expired",
        ));
    }
    let body: Value = serde_json::from_slice(if body.is_empty() { b"{}" } else { body })
        .map_err(|e| ApiError::new("SerializationException", e.to_string()))?;
    match operation {
        "StartSession" => start_session(service, body),
        "ResumeSession" => resume_session(service, body),
        _ => terminate_session(service, body).await,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StartSessionRequest {
    target: Option<Value>,
    document_name: Option<Value>,
    reason: Option<Value>,
    parameters: Option<Value>,
}

fn start_session(service: &Arc<Service>, body: Value) -> ApiResult {
    let request: StartSessionRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::new("SerializationException", e.to_string()))?;
    let target = string_member(request.target.as_ref(), "target", 1, 400)?
        .ok_or_else(|| missing("target"))?;
    let document_name = string_member(request.document_name.as_ref(), "documentName", 3, 128)?
        .unwrap_or_else(|| "SSM-SessionManagerRunShell".to_owned());
    if !document_name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-.:/".contains(c))
    {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value '{document_name}' at 'documentName' failed to satisfy constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9_\\-.:/]{{3,128}}$"
        )));
    }
    string_member(request.reason.as_ref(), "reason", 1, 256)?;
    let parameters = parameters(request.parameters.as_ref())?;
    if !target_is_connected(&target) {
        return Err(ApiError::new(
            "TargetNotConnected",
            format!("{target} is not connected."),
        ));
    }
    let document = service
        .documents
        .resolve(&document_name, &parameters)
        .map_err(|e| ApiError::new("InvalidDocument", e.to_string()))?;
    let (session, token) = service.start_session(&target, document);
    Ok((
        Some(session.id.clone()),
        json!({
            "SessionId": session.id,
            "TokenValue": token,
            "StreamUrl": service.stream_url(&session),
        }),
    ))
}

/// Instance (`i-…`) and managed-instance (`mi-…`) ids are "connected"; anything else is not.
fn target_is_connected(target: &str) -> bool {
    let id = target
        .strip_prefix("i-")
        .or_else(|| target.strip_prefix("mi-"));
    id.is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric()))
}

fn resume_session(service: &Arc<Service>, body: Value) -> ApiResult {
    let session_id = session_id_member(&body)?;
    if let Some(code) = service.take_resume_failure() {
        service.events.emit(Event::Fault {
            session_id: Some(session_id.clone()),
            kind: "resume_fail".to_owned(),
            detail: format!("{code:?}"),
        });
        return Err(match code {
            ResumeFailCode::AccessDenied => ApiError {
                status: StatusCode::FORBIDDEN,
                code: "AccessDeniedException",
                message: format!(
                    "User is not authorized to perform: ssm:ResumeSession on resource: {session_id}"
                ),
            },
            ResumeFailCode::Throttling => ApiError::new("ThrottlingException", "Rate exceeded"),
        });
    }
    let session = service.session(&session_id).ok_or_else(|| {
        ApiError::new(
            "DoesNotExistException",
            format!("Session with id {session_id} does not exist."),
        )
    })?;
    let token = service.issue_client_token(&session);
    service.events.emit(Event::Session {
        session_id: session_id.clone(),
        state: if token.is_some() {
            "resumed"
        } else {
            "resume_refused"
        }
        .to_owned(),
        reason: "ResumeSession".to_owned(),
    });
    let body = match token {
        Some(token) => json!({
            "SessionId": session_id,
            "TokenValue": token,
            "StreamUrl": service.stream_url(&session),
        }),
        // A terminated (timed-out) session: no TokenValue, the plugin prints "timed out".
        None => json!({ "SessionId": session_id }),
    };
    Ok((Some(session.id.clone()), body))
}

async fn terminate_session(service: &Arc<Service>, body: Value) -> ApiResult {
    let session_id = session_id_member(&body)?;
    let session = service.session(&session_id).ok_or_else(|| {
        ApiError::new(
            "DoesNotExistException",
            format!("Session with id {session_id} does not exist."),
        )
    })?;
    service.terminate(&session, Termination::Api).await;
    Ok((Some(session_id.clone()), json!({ "SessionId": session_id })))
}

fn session_id_member(body: &Value) -> Result<String, ApiError> {
    string_member(body.get("SessionId"), "sessionId", 1, 96)?.ok_or_else(|| missing("sessionId"))
}

fn missing(member: &str) -> ApiError {
    ApiError::validation(format!(
        "1 validation error detected: Value null at '{member}' failed to satisfy constraint: Member must not be null"
    ))
}

/// A string member with AWS length constraints; `Ok(None)` when absent.
fn string_member(
    value: Option<&Value>,
    member: &str,
    min: usize,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => {
            let len = text.chars().count();
            if len < min || len > max {
                Err(ApiError::validation(format!(
                    "1 validation error detected: Value '{text}' at '{member}' failed to satisfy constraint: Member must have length between {min} and {max}"
                )))
            } else {
                Ok(Some(text.clone()))
            }
        }
        Some(_) => Err(ApiError::new(
            "SerializationException",
            format!("{member} must be a string"),
        )),
    }
}

/// `Parameters`: a map of name → list of strings.
fn parameters(value: Option<&Value>) -> Result<BTreeMap<String, Vec<String>>, ApiError> {
    let bad = || {
        ApiError::new(
            "SerializationException",
            "Parameters must be a map of parameter names to lists of strings",
        )
    };
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Ok(BTreeMap::new());
    };
    let map = value.as_object().ok_or_else(bad)?;
    map.iter()
        .map(|(name, values)| {
            let list = values.as_array().ok_or_else(bad)?;
            let strings = list
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((name.clone(), strings))
        })
        .collect()
}

/// The session id of a request body, for the event of a failed call.
fn session_id_in(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()?
        .get("SessionId")?
        .as_str()
        .map(str::to_owned)
}

/// The access key id of `Authorization: AWS4-HMAC-SHA256 Credential=AKID/date/region/svc/…`.
pub(crate) fn access_key_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let credential = value.split("Credential=").nth(1)?;
    let key = credential.split('/').next()?.trim();
    (!key.is_empty()).then(|| key.to_owned())
}

/// `POST /v1/data-channel/{id}`: the agent's token request (CreateDataChannel). Answers 201
/// with an XML body like MGS, 400 "Session is already terminated" once the session ended.
pub(crate) async fn create_data_channel(
    State(service): State<Arc<Service>>,
    Path(session_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let access_key_id = access_key_id(&headers);
    let (status, error, body) = match service.session(&session_id) {
        None => (
            StatusCode::NOT_FOUND,
            Some("SessionNotFound"),
            "<NotFound>\n<ClientErrorMessage>Session not found</ClientErrorMessage>\n</NotFound>"
                .to_owned(),
        ),
        Some(session) => match service.issue_agent_token(&session) {
            Some(token) => (
                StatusCode::CREATED,
                None,
                format!(
                    "<CreateDataChannelResponse><MessageSchemaVersion>1.0</MessageSchemaVersion><TokenValue>{token}</TokenValue></CreateDataChannelResponse>"
                ),
            ),
            None => (
                StatusCode::BAD_REQUEST,
                Some("SessionAlreadyTerminated"),
                "<BadRequest>\n<ClientErrorMessage>Session is already terminated</ClientErrorMessage>\n</BadRequest>"
                    .to_owned(),
            ),
        },
    };
    service.events.emit(Event::Api {
        operation: "CreateDataChannel".to_owned(),
        access_key_id,
        session_id: Some(session_id),
        status: status.as_u16(),
        error: error.map(str::to_owned),
    });
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_access_key_id_from_sigv4() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/ssm/aws4_request, SignedHeaders=host, Signature=abc",
            ),
        );
        assert_eq!(access_key_id(&headers).as_deref(), Some("AKIDEXAMPLE"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        assert_eq!(access_key_id(&headers), None);
    }

    #[test]
    fn instance_ids_are_connected_targets() {
        assert!(target_is_connected("i-0123456789abcdef0"));
        assert!(target_is_connected("mi-0123"));
        assert!(!target_is_connected("i-"));
        assert!(!target_is_connected("server-1"));
    }
}
