//! The AWS-owned Port session documents (port forwarding and SSH) and their parameter substitution
//! (docs/protocol.md §7).
//!
//! The real documents live in the SSM service; the definitions here are the widely published
//! ones. Parameter regexes are approximated by numeric range checks.

use std::collections::BTreeMap;

use serde_json::Value;

/// One session document the emulator knows.
#[derive(Debug)]
struct Document {
    name: &'static str,
    parameters: &'static [Parameter],
    /// `properties` with `{{ name }}` placeholders, in the published key order.
    properties: &'static [(&'static str, &'static str)],
}

#[derive(Debug, Clone, Copy)]
struct Parameter {
    name: &'static str,
    default: Option<&'static str>,
    check: Check,
}

#[derive(Debug, Clone, Copy)]
enum Check {
    Port { min: u32 },
    Host,
}

const PORT_PARAMETERS: &[Parameter] = &[
    Parameter {
        name: "portNumber",
        default: Some("80"),
        check: Check::Port { min: 1 },
    },
    Parameter {
        name: "localPortNumber",
        default: Some("0"),
        check: Check::Port { min: 0 },
    },
];

const DOCUMENTS: &[Document] = &[
    Document {
        name: "AWS-StartPortForwardingSession",
        parameters: PORT_PARAMETERS,
        properties: &[
            ("portNumber", "{{ portNumber }}"),
            ("type", "LocalPortForwarding"),
            ("localPortNumber", "{{ localPortNumber }}"),
        ],
    },
    Document {
        name: "AWS-StartPortForwardingSessionToRemoteHost",
        parameters: &[
            Parameter {
                name: "host",
                default: None,
                check: Check::Host,
            },
            PORT_PARAMETERS[0],
            PORT_PARAMETERS[1],
        ],
        properties: &[
            ("host", "{{ host }}"),
            ("portNumber", "{{ portNumber }}"),
            ("type", "LocalPortForwarding"),
            ("localPortNumber", "{{ localPortNumber }}"),
        ],
    },
    // A Port session without `type`: the client forwards it over stdin/stdout.
    Document {
        name: "AWS-StartSSHSession",
        parameters: &[Parameter {
            name: "portNumber",
            default: Some("22"),
            check: Check::Port { min: 1 },
        }],
        properties: &[("portNumber", "{{ portNumber }}")],
    },
];

/// Why a document could not be resolved; the API maps every variant to `InvalidDocument`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    /// The document name is not one the emulator knows.
    #[error("Document with name {0} does not exist.")]
    Unknown(String),
    /// A parameter the document does not declare was passed.
    #[error("Parameter {0} is not defined in document {1}.")]
    UnknownParameter(String, String),
    /// A required parameter is missing.
    #[error("Parameter {0} is required by document {1}.")]
    MissingParameter(String, String),
    /// A parameter was given more than one value or an empty list.
    #[error("Parameter {0} must have exactly one value.")]
    NotOneValue(String),
    /// A parameter value does not satisfy the document's constraint.
    #[error("Parameter {name} value {value:?} is not valid: {why}.")]
    BadValue {
        /// The parameter.
        name: String,
        /// The offending value.
        value: String,
        /// The constraint.
        why: &'static str,
    },
}

/// A resolved document: its canonical name and the substituted `properties`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedDocument {
    /// The document name (an ARN is reduced to its name).
    pub name: String,
    /// `properties` after substitution, as the agent and the client receive them.
    pub properties: BTreeMap<String, Value>,
}

/// Looks up `name` (a plain name or a document ARN) and substitutes `parameters` (name → list
/// of strings, as StartSession takes them) into its properties.
pub fn resolve(
    name: &str,
    parameters: &BTreeMap<String, Vec<String>>,
) -> Result<ResolvedDocument, DocumentError> {
    // `arn:aws:ssm:us-east-1::document/AWS-StartPortForwardingSession` names the same document.
    let short = if name.starts_with("arn:") {
        name.rsplit('/').next().unwrap_or(name)
    } else {
        name
    };
    let document = DOCUMENTS
        .iter()
        .find(|d| d.name == short)
        .ok_or_else(|| DocumentError::Unknown(name.to_owned()))?;
    if let Some(unknown) = parameters
        .keys()
        .find(|key| !document.parameters.iter().any(|p| p.name == key.as_str()))
    {
        return Err(DocumentError::UnknownParameter(
            unknown.clone(),
            document.name.to_owned(),
        ));
    }
    let mut values = BTreeMap::new();
    for parameter in document.parameters {
        let value = match parameters.get(parameter.name) {
            Some(list) if list.len() == 1 => list[0].clone(),
            Some(_) => return Err(DocumentError::NotOneValue(parameter.name.to_owned())),
            None => match parameter.default {
                Some(default) => default.to_owned(),
                None => {
                    return Err(DocumentError::MissingParameter(
                        parameter.name.to_owned(),
                        document.name.to_owned(),
                    ));
                }
            },
        };
        check(parameter, &value)?;
        values.insert(parameter.name, value);
    }
    let properties = document
        .properties
        .iter()
        .map(|(key, template)| {
            (
                (*key).to_owned(),
                Value::String(substitute(template, &values)),
            )
        })
        .collect();
    Ok(ResolvedDocument {
        name: document.name.to_owned(),
        properties,
    })
}

fn check(parameter: &Parameter, value: &str) -> Result<(), DocumentError> {
    let bad = |why| DocumentError::BadValue {
        name: parameter.name.to_owned(),
        value: value.to_owned(),
        why,
    };
    match parameter.check {
        Check::Port { min } => {
            let port: u32 = value
                .parse()
                .ok()
                .filter(|_| !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| bad("not a port number"))?;
            if port < min || port > 65535 {
                return Err(bad(if min == 0 {
                    "must be between 0 and 65535"
                } else {
                    "must be between 1 and 65535"
                }));
            }
        }
        Check::Host => {
            if value.is_empty() || value.len() > 255 || value.chars().any(char::is_whitespace) {
                return Err(bad("not a host name or address"));
            }
        }
    }
    Ok(())
}

/// Replaces `{{ name }}` (spaces optional) with the parameter's value.
fn substitute(template: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let name = after[..end].trim();
                match values.get(name) {
                    Some(value) => out.push_str(value),
                    None => out.push_str(&rest[start..start + 2 + end + 2]),
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
            .collect()
    }

    #[test]
    fn substitutes_parameters_and_defaults() {
        let doc = resolve(
            "AWS-StartPortForwardingSession",
            &params(&[("portNumber", "8080")]),
        )
        .expect("resolves");
        assert_eq!(
            serde_json::to_string(&doc.properties).expect("json"),
            r#"{"localPortNumber":"0","portNumber":"8080","type":"LocalPortForwarding"}"#
        );
        let remote = resolve(
            "arn:aws:ssm:us-east-1::document/AWS-StartPortForwardingSessionToRemoteHost",
            &params(&[("host", "db.internal"), ("portNumber", "5432")]),
        )
        .expect("resolves");
        assert_eq!(remote.name, "AWS-StartPortForwardingSessionToRemoteHost");
        assert_eq!(remote.properties["host"], "db.internal");
    }

    #[test]
    fn rejects_bad_parameters() {
        let name = "AWS-StartPortForwardingSession";
        assert!(matches!(
            resolve(name, &params(&[("portNumber", "0")])),
            Err(DocumentError::BadValue { .. })
        ));
        assert!(matches!(
            resolve(name, &params(&[("portNumber", "x1")])),
            Err(DocumentError::BadValue { .. })
        ));
        assert!(matches!(
            resolve(name, &params(&[("nope", "1")])),
            Err(DocumentError::UnknownParameter(..))
        ));
        assert!(matches!(
            resolve("AWS-StartPortForwardingSessionToRemoteHost", &params(&[])),
            Err(DocumentError::MissingParameter(..))
        ));
        assert!(matches!(
            resolve("AWS-RunShellScript", &params(&[])),
            Err(DocumentError::Unknown(_))
        ));
    }

    #[test]
    fn substitution_leaves_unknown_placeholders() {
        let values = BTreeMap::from([("a", "1".to_owned())]);
        assert_eq!(substitute("x{{a}}y{{ b }}z{{", &values), "x1y{{ b }}z{{");
    }
}
