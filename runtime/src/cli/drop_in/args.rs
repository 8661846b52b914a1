//! The argument convention of the AWS CLI's `session-manager-plugin` call (docs/protocol.md
//! §8.2): `RESPONSE REGION OPERATION PROFILE PARAMETERS ENDPOINT`.
//!
//! Every error names the argument and the field; none quotes a value from RESPONSE, which
//! holds the session token.

use std::collections::BTreeMap;

use serde_json::Value;
use ssm_tether::aws::SessionGrant;
use ssm_tether::tunnel::StartRequest;

/// Prefix of the environment variable the AWS CLI puts the StartSession response into
/// (`AWS_SSM_START_SESSION_RESPONSE`), passing its name instead of the JSON.
pub(crate) const RESPONSE_ENV_PREFIX: &str = "AWS_SSM_START_SESSION_RESPONSE";

/// The one operation the AWS CLI hands to a plugin.
const START_SESSION: &str = "StartSession";

/// The document StartSession uses when the request names none.
const DEFAULT_DOCUMENT: &str = "SSM-SessionManagerRunShell";

/// Longest argument accepted (the CLI's JSON is a few KiB; anything far larger is not it).
const MAX_ARGUMENT_BYTES: usize = 256 * 1024;

/// What the command line asks for.
#[derive(Debug)]
pub(crate) enum Invocation {
    /// No arguments: the official "installed successfully" line.
    Installed,
    /// `--version`.
    Version,
    /// A session the AWS CLI started.
    Session(Box<CliSession>),
}

/// A session started by the AWS CLI, with everything needed to resume and restart it.
#[derive(Debug)]
pub(crate) struct CliSession {
    /// SessionId, TokenValue and StreamUrl from the CLI's StartSession call.
    pub(crate) grant: SessionGrant,
    /// The region the CLI used.
    pub(crate) region: String,
    /// The profile the CLI used (`--profile`), if any.
    pub(crate) profile: Option<String>,
    /// The StartSession request, replayed to restart a session that is gone.
    pub(crate) request: StartRequest,
    /// The SSM endpoint the CLI called.
    pub(crate) endpoint: String,
}

/// Why the command line is not a session-manager-plugin call.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ArgsError {
    /// Fewer or more arguments than the AWS CLI passes.
    #[error(
        "expected 6 arguments (RESPONSE REGION OPERATION PROFILE PARAMETERS ENDPOINT) as the AWS CLI passes them, got {0}; `--version` prints the version"
    )]
    Count(usize),
    /// An argument is not valid UTF-8.
    #[error("argument {0} is not valid UTF-8")]
    NotUtf8(usize),
    /// An argument is implausibly long.
    #[error("argument {0} is longer than {MAX_ARGUMENT_BYTES} bytes")]
    TooLong(usize),
    /// RESPONSE names an environment variable that is not set.
    #[error("argument 1 names the environment variable {0}, which is not set")]
    MissingEnv(String),
    /// RESPONSE (or the variable it names) is not a JSON object.
    #[error("argument 1 (the StartSession response) is not a JSON object: {0}")]
    ResponseJson(String),
    /// A required field of the response is missing or not a string.
    #[error("the StartSession response has no string field {0:?}")]
    ResponseField(&'static str),
    /// OPERATION is not StartSession.
    #[error("argument 3: unsupported operation {0:?}; the only operation is StartSession")]
    Operation(String),
    /// PARAMETERS is not a JSON object.
    #[error("argument 5 (the StartSession request) is not a JSON object: {0}")]
    RequestJson(String),
    /// A field of the request is missing or has the wrong type.
    #[error("argument 5 (the StartSession request): {0}")]
    RequestField(String),
}

/// Reads the arguments after the program name. `env` looks up an environment variable.
pub(crate) fn parse(
    args: &[std::ffi::OsString],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Invocation, ArgsError> {
    let args = args
        .iter()
        .enumerate()
        .map(|(i, arg)| {
            let arg = arg.to_str().ok_or(ArgsError::NotUtf8(i + 1))?;
            if arg.len() > MAX_ARGUMENT_BYTES {
                return Err(ArgsError::TooLong(i + 1));
            }
            Ok(arg)
        })
        .collect::<Result<Vec<_>, _>>()?;
    match args.as_slice() {
        [] => Ok(Invocation::Installed),
        ["--version"] => Ok(Invocation::Version),
        [response, region, operation, profile, parameters, endpoint] => {
            let response = if response.starts_with(RESPONSE_ENV_PREFIX) {
                env(response).ok_or_else(|| ArgsError::MissingEnv((*response).to_owned()))?
            } else {
                (*response).to_owned()
            };
            if *operation != START_SESSION {
                return Err(ArgsError::Operation(printable(operation)));
            }
            Ok(Invocation::Session(Box::new(CliSession {
                grant: grant(&response)?,
                region: (*region).to_owned(),
                profile: Some((*profile).to_owned()).filter(|p| !p.is_empty()),
                request: request(parameters)?,
                endpoint: (*endpoint).to_owned(),
            })))
        }
        other => Err(ArgsError::Count(other.len())),
    }
}

/// The response's three fields. serde_json's syntax errors name a line and column, never
/// the text, so they are safe to show.
fn grant(response: &str) -> Result<SessionGrant, ArgsError> {
    let value: Value =
        serde_json::from_str(response).map_err(|e| ArgsError::ResponseJson(e.to_string()))?;
    let Value::Object(fields) = value else {
        return Err(ArgsError::ResponseJson("not an object".into()));
    };
    let field = |name: &'static str| {
        fields
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or(ArgsError::ResponseField(name))
    };
    Ok(SessionGrant {
        session_id: field("SessionId")?,
        token_value: field("TokenValue")?,
        stream_url: field("StreamUrl")?,
    })
}

/// The StartSession request as the CLI sent it: `Target`, `DocumentName`, `Parameters`
/// (lists of strings), `Reason`.
fn request(parameters: &str) -> Result<StartRequest, ArgsError> {
    let value: Value =
        serde_json::from_str(parameters).map_err(|e| ArgsError::RequestJson(e.to_string()))?;
    let Value::Object(fields) = value else {
        return Err(ArgsError::RequestJson("not an object".into()));
    };
    let string = |name: &str| match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ArgsError::RequestField(format!("{name} is not a string"))),
    };
    let target = string("Target")?
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ArgsError::RequestField("no string field \"Target\"".into()))?;
    let mut document_parameters = BTreeMap::new();
    match fields.get("Parameters") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (key, values) in map {
                let list = values
                    .as_array()
                    .and_then(|list| {
                        list.iter()
                            .map(|v| v.as_str().map(str::to_owned))
                            .collect::<Option<Vec<_>>>()
                    })
                    .ok_or_else(|| {
                        ArgsError::RequestField(format!(
                            "Parameters.{} is not a list of strings",
                            printable(key)
                        ))
                    })?;
                document_parameters.insert(key.clone(), list);
            }
        }
        Some(_) => {
            return Err(ArgsError::RequestField(
                "Parameters is not an object".into(),
            ));
        }
    }
    Ok(StartRequest {
        target,
        document_name: string("DocumentName")?.unwrap_or_else(|| DEFAULT_DOCUMENT.to_owned()),
        parameters: document_parameters,
        reason: string("Reason")?,
    })
}

/// At most 64 characters of `text` with control characters escaped, for an error line.
pub(super) fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(64)
        .flat_map(char::escape_default)
        .collect();
    if text.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESPONSE: &str = r#"{"SessionId":"s-1","TokenValue":"secret-token","StreamUrl":"wss://x/v1/data-channel/s-1?role=publish_subscribe"}"#;
    const REQUEST: &str = r#"{"Target":"i-0123","DocumentName":"AWS-StartPortForwardingSession","Parameters":{"portNumber":["80"],"localPortNumber":["8080"]}}"#;

    fn call(args: &[&str]) -> Result<Invocation, ArgsError> {
        let args: Vec<_> = args.iter().map(std::ffi::OsString::from).collect();
        parse(&args, |name| {
            (name == "AWS_SSM_START_SESSION_RESPONSE").then(|| RESPONSE.to_owned())
        })
    }

    fn session(args: &[&str]) -> CliSession {
        match call(args).expect("valid") {
            Invocation::Session(session) => *session,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_the_response_from_the_named_environment_variable() {
        let s = session(&[
            "AWS_SSM_START_SESSION_RESPONSE",
            "eu-west-1",
            "StartSession",
            "",
            REQUEST,
            "https://ssm.eu-west-1.amazonaws.com",
        ]);
        assert_eq!(s.grant.session_id, "s-1");
        assert_eq!(s.grant.token_value, "secret-token");
        assert_eq!(s.region, "eu-west-1");
        assert_eq!(s.profile, None);
        assert_eq!(s.request.target, "i-0123");
        assert_eq!(s.request.document_name, "AWS-StartPortForwardingSession");
        assert_eq!(s.request.parameters["localPortNumber"], vec!["8080"]);
        assert_eq!(s.endpoint, "https://ssm.eu-west-1.amazonaws.com");
    }

    #[test]
    fn takes_the_response_inline_and_a_profile() {
        let s = session(&[
            RESPONSE,
            "us-east-1",
            "StartSession",
            "dev",
            r#"{"Target":"i-1"}"#,
            "http://127.0.0.1:1",
        ]);
        assert_eq!(s.profile.as_deref(), Some("dev"));
        assert_eq!(s.request.document_name, "SSM-SessionManagerRunShell");
        assert!(s.request.parameters.is_empty());
    }

    #[test]
    fn version_and_no_arguments() {
        assert!(matches!(call(&[]), Ok(Invocation::Installed)));
        assert!(matches!(call(&["--version"]), Ok(Invocation::Version)));
    }

    #[test]
    fn errors_name_the_problem_and_never_the_token() {
        let cases: &[(&[&str], &str)] = &[
            (&["x", "y"], "expected 6 arguments"),
            (
                &[
                    "AWS_SSM_START_SESSION_RESPONSE_2",
                    "r",
                    "StartSession",
                    "",
                    REQUEST,
                    "e",
                ],
                "AWS_SSM_START_SESSION_RESPONSE_2, which is not set",
            ),
            (
                &["{not json", "r", "StartSession", "", REQUEST, "e"],
                "argument 1 (the StartSession response) is not a JSON object",
            ),
            (
                &[
                    r#"{"SessionId":"s","TokenValue":"secret-token"}"#,
                    "r",
                    "StartSession",
                    "",
                    REQUEST,
                    "e",
                ],
                "no string field \"StreamUrl\"",
            ),
            (
                &[RESPONSE, "r", "ResumeSession", "", REQUEST, "e"],
                "unsupported operation \"ResumeSession\"",
            ),
            (
                &[RESPONSE, "r", "StartSession", "", "[1]", "e"],
                "argument 5 (the StartSession request) is not a JSON object",
            ),
            (
                &[
                    RESPONSE,
                    "r",
                    "StartSession",
                    "",
                    r#"{"DocumentName":"d"}"#,
                    "e",
                ],
                "no string field \"Target\"",
            ),
            (
                &[
                    RESPONSE,
                    "r",
                    "StartSession",
                    "",
                    r#"{"Target":"i","Parameters":{"p":[1]}}"#,
                    "e",
                ],
                "Parameters.p is not a list of strings",
            ),
        ];
        for (args, expected) in cases {
            let err = call(args).expect_err("invalid").to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
            assert!(!err.contains("secret-token"), "{err}");
        }
    }
}
