//! The SSM API beyond the session operations: `DescribeInstanceInformation` (over the fake
//! nodes of [`crate::instances`]) and `GetDocument`, the target check of StartSession against
//! the configured nodes, and injected API errors ([`crate::api_faults`]). `api::dispatch`
//! asks [`intercept`] first; `None` lets it handle the call as before.

use serde_json::{Value, json};

use axum::http::StatusCode;

use crate::api_faults::ApiFailures;
use crate::config::EmulatorConfig;
use crate::events::Event;
use crate::instances::{Filter, Instances, resource_type};
use crate::service::Service;

/// Largest `MaxResults` of DescribeInstanceInformation (the API's limit).
const MAX_RESULTS: usize = 50;
/// Smallest `MaxResults` the API accepts.
const MIN_RESULTS: usize = 5;
/// Most filters, and values per filter, the emulator reads.
const MAX_FILTERS: usize = 20;

/// The state behind these operations, part of the service.
#[derive(Debug)]
pub(crate) struct Extras {
    /// The fake managed nodes.
    pub(crate) instances: Instances,
    /// Armed API errors.
    pub(crate) failures: ApiFailures,
}

impl Extras {
    pub(crate) fn new(config: &EmulatorConfig) -> Self {
        Self {
            instances: Instances::new(&config.instances),
            failures: ApiFailures::default(),
        }
    }
}

/// A failed call: HTTP status, `__type` and message.
pub(crate) struct Failure {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl Failure {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
        }
    }
}

/// The answer of a call this module handles: the session id for the event log and the body.
pub(crate) type Answer = Result<(Option<String>, Value), Failure>;

/// Handles the call if it is one of this module's: an armed error for `operation`,
/// DescribeInstanceInformation, GetDocument, or a StartSession whose target is not a connected
/// node. `None`: `api::dispatch` goes on as usual.
pub(crate) fn intercept(
    service: &Service,
    operation: &str,
    access_key_id: Option<&str>,
    body: &[u8],
) -> Option<Answer> {
    if let Some(code) = service.extras.failures.take(operation) {
        service.events.emit(Event::Fault {
            session_id: None,
            kind: "api_fail".to_owned(),
            detail: format!("{operation}: {code:?}"),
        });
        let (status, code, message) = code.answer(operation);
        return Some(Err(Failure {
            status,
            code,
            message,
        }));
    }
    let ours = matches!(operation, "DescribeInstanceInformation" | "GetDocument");
    if ours
        && let Some(key) = access_key_id
        && service.credentials_expired(key)
    {
        return Some(Err(Failure::new(
            "ExpiredTokenException",
            "The security token included in the request is expired",
        )));
    }
    let parse = || -> Result<Value, Failure> {
        serde_json::from_slice(if body.is_empty() { b"{}" } else { body })
            .map_err(|e| Failure::new("SerializationException", e.to_string()))
    };
    match operation {
        "DescribeInstanceInformation" => Some(parse().and_then(|b| describe(service, &b))),
        "GetDocument" => Some(parse().and_then(|b| get_document(service, &b))),
        // Only a well-formed instance id that is not an online configured node: everything
        // else is `api::start_session`'s to validate and refuse, in its order.
        "StartSession" => {
            let body = parse().ok()?;
            let target = body.get("Target")?.as_str()?;
            let instances = &service.extras.instances;
            let offline = instances.is_configured()
                && crate::instances::is_instance_id(target)
                && !instances.is_connected(target);
            offline.then(|| {
                Err(Failure::new(
                    "TargetNotConnected",
                    format!("{target} is not connected."),
                ))
            })
        }
        _ => None,
    }
}

fn describe(service: &Service, body: &Value) -> Answer {
    if body.get("InstanceInformationFilterList").is_some() {
        return Err(Failure::new(
            "ValidationException",
            "the emulator supports Filters, not InstanceInformationFilterList",
        ));
    }
    let filters = filters(body.get("Filters"))?;
    let max = match body.get("MaxResults") {
        None | Some(Value::Null) => MAX_RESULTS,
        Some(value) => value
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| (MIN_RESULTS..=MAX_RESULTS).contains(n))
            .ok_or_else(|| {
                Failure::new(
                    "ValidationException",
                    format!(
                        "1 validation error detected: Value '{value}' at 'maxResults' failed \
                         to satisfy constraint: Member must have value between {MIN_RESULTS} \
                         and {MAX_RESULTS}"
                    ),
                )
            })?,
    };
    let start = match body.get("NextToken").and_then(Value::as_str) {
        None => 0,
        Some(token) => token
            .strip_prefix("emulator-")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| Failure::new("InvalidNextToken", "The specified token is not valid."))?,
    };
    let matched = service
        .extras
        .instances
        .describe(&filters)
        .map_err(|e| Failure::new("InvalidFilterKey", e))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let page: Vec<Value> = matched
        .iter()
        .skip(start)
        .take(max)
        .map(|node| {
            json!({
                "InstanceId": node.id,
                "PingStatus": node.ping_status.as_str(),
                "LastPingDateTime": now,
                "AgentVersion": service.agent.version,
                "IsLatestVersion": false,
                "PlatformType": "Linux",
                "PlatformName": "Amazon Linux",
                "ResourceType": resource_type(&node.id),
            })
        })
        .collect();
    let mut answer = json!({ "InstanceInformationList": page });
    if start + max < matched.len() {
        answer["NextToken"] = json!(format!("emulator-{}", start + max));
    }
    Ok((None, answer))
}

/// `Filters`: a list of `{"Key": …, "Values": […]}`.
fn filters(value: Option<&Value>) -> Result<Vec<Filter>, Failure> {
    let bad = || {
        Failure::new(
            "SerializationException",
            "Filters must be a list of {\"Key\": string, \"Values\": [string]}",
        )
    };
    let Some(list) = value.filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let list = list.as_array().ok_or_else(bad)?;
    if list.len() > MAX_FILTERS {
        return Err(Failure::new("ValidationException", "too many filters"));
    }
    list.iter()
        .map(|entry| {
            let key = entry.get("Key").and_then(Value::as_str).ok_or_else(bad)?;
            let values = entry
                .get("Values")
                .and_then(Value::as_array)
                .ok_or_else(bad)?;
            if values.is_empty() || values.len() > MAX_FILTERS {
                return Err(Failure::new(
                    "ValidationException",
                    format!("filter {key:?} needs 1 to {MAX_FILTERS} values"),
                ));
            }
            let values = values
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Filter {
                key: key.to_owned(),
                values,
            })
        })
        .collect()
}

fn get_document(service: &Service, body: &Value) -> Answer {
    let name = body
        .get("Name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            Failure::new(
                "ValidationException",
                "1 validation error detected: Value null at 'name' failed to satisfy \
                 constraint: Member must not be null",
            )
        })?;
    let short = if name.starts_with("arn:") {
        name.rsplit('/').next().unwrap_or(name)
    } else {
        name
    };
    if !service.documents.names().any(|known| known == short) {
        return Err(Failure::new(
            "InvalidDocument",
            "The specified document does not exist.",
        ));
    }
    Ok((
        None,
        json!({
            "Name": short,
            "DocumentType": "Session",
            "DocumentFormat": "JSON",
            "DocumentVersion": "1",
            "Status": "Active",
        }),
    ))
}
