//! Session documents and their parameter substitution (docs/protocol.md §7,
//! PROTOCOL-SESSIONS.md §5): the AWS-owned documents (port forwarding, SSH, the default shell
//! `SSM-SessionManagerRunShell`, `AWS-StartInteractiveCommand`,
//! `AWS-StartNonInteractiveCommand`) and custom documents of all four session types, written as
//! SSM document JSON content (what `aws ssm create-document --document-type Session` takes).
//!
//! The real AWS-owned documents live in the SSM service; the definitions here are the widely
//! published ones, with their port regexes approximated by numeric range checks. Every document,
//! built-in or custom, is a [`SessionDocument`] in the one [`Documents`] registry and is resolved
//! the same way.

use std::collections::BTreeMap;

use regex_lite::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Names with this prefix belong to AWS-owned documents, in the real service as here.
const AWS_PREFIX: &str = "AWS-";

/// The document StartSession uses when the request names none. It holds the account's
/// Session Manager preferences, and an account may replace it with its own content (so may a
/// `--document` or scenario document of this name).
pub const DEFAULT_SHELL_DOCUMENT: &str = "SSM-SessionManagerRunShell";

/// What kind of session a document starts: its `sessionType`, which names the agent plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SessionType {
    /// `Port`: port forwarding (mux or basic mode, docs/protocol.md §6).
    Port,
    /// `Standard_Stream`: an interactive shell (`sh`) on a pty.
    #[serde(rename = "Standard_Stream")]
    StandardStream,
    /// `InteractiveCommands`: `sh -c <command>` on a pty.
    InteractiveCommands,
    /// `NonInteractiveCommands`: the command run directly, with pipes and no stdin.
    NonInteractiveCommands,
}

impl SessionType {
    /// The `sessionType` string (also the handshake's `SessionType`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Port => "Port",
            Self::StandardStream => "Standard_Stream",
            Self::InteractiveCommands => "InteractiveCommands",
            Self::NonInteractiveCommands => "NonInteractiveCommands",
        }
    }

    /// The session type named `text`, if it is one of the four.
    pub fn from_name(text: &str) -> Option<Self> {
        [
            Self::Port,
            Self::StandardStream,
            Self::InteractiveCommands,
            Self::NonInteractiveCommands,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
    }

    /// Whether the agent runs a shell plugin (everything but `Port`).
    pub fn is_shell(self) -> bool {
        self != Self::Port
    }
}

impl std::fmt::Display for SessionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The session settings a shell document's `inputs` give, after substitution: the subset the
/// agent model acts on. Every other preference input is accepted and ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SessionInputs {
    /// `kmsKeyId`: encrypt the session with KMS under this key; `None` when empty or absent.
    pub kms_key_id: Option<String>,
    /// `shellProfile.linux`: typed into a `Standard_Stream` shell after it starts; `None`
    /// when blank or absent.
    pub shell_profile: Option<String>,
}

/// A session document: its session type, declared parameters, and `properties` and `inputs`
/// templates.
///
/// Custom documents are made with [`SessionDocument::parse`] or [`SessionDocument::from_value`],
/// which validate them completely, so a document in a [`Documents`] registry always resolves
/// or fails with a parameter error.
#[derive(Debug, Clone)]
pub struct SessionDocument {
    name: String,
    session_type: SessionType,
    parameters: Vec<Parameter>,
    /// `properties` with `{{ name }}` placeholders.
    properties: Properties,
    /// `inputs` (shell documents) with `{{ name }}` placeholders in their strings.
    inputs: serde_json::Map<String, Value>,
    /// A built-in document that an account's own document of the same name may replace.
    replaceable: bool,
}

/// A `properties` template.
#[derive(Debug, Clone)]
enum Properties {
    /// Port documents: string values (numbers and booleans taken as their JSON text).
    Flat(Vec<(String, String)>),
    /// Shell documents: any JSON, with placeholders substituted in every string.
    Tree(serde_json::Map<String, Value>),
}

#[derive(Debug, Clone)]
struct Parameter {
    name: String,
    /// `None`: the parameter is required.
    default: Option<String>,
    checks: Vec<Check>,
}

#[derive(Debug, Clone)]
enum Check {
    /// A port number in `min..=65535`.
    Port { min: u32 },
    /// A host name or address.
    Host,
    /// A custom document's `allowedPattern`.
    Pattern(Regex),
    /// A custom document's `allowedValues`.
    OneOf(Vec<String>),
}

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
        why: String,
    },
}

/// Why a custom document was rejected when it was loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentLoadError {
    /// The name is not a valid SSM document name.
    #[error("document name {0:?} is not valid: use 3 to 128 letters, digits, '_', '-' or '.'")]
    InvalidName(String),
    /// The name has the `AWS-` prefix of the AWS-owned documents.
    #[error("document {0}: the name is reserved, AWS- names belong to AWS-owned documents")]
    ReservedName(String),
    /// A registry already has a document with this name.
    #[error("document {0} is defined more than once")]
    Duplicate(String),
    /// The content is not JSON, not an object, lacks a key, has an unknown key or a value of
    /// the wrong type.
    #[error("document {document}: {reason}")]
    Malformed {
        /// The document.
        document: String,
        /// What is wrong.
        reason: String,
    },
    /// `schemaVersion` is not the Session documents' `1.0`.
    #[error("document {document}: schemaVersion {version:?} is not supported, use \"1.0\"")]
    UnsupportedSchemaVersion {
        /// The document.
        document: String,
        /// The version found.
        version: String,
    },
    /// `sessionType` is not one of the four session types.
    #[error(
        "document {document}: sessionType {session_type:?} is not supported: use Port, Standard_Stream, InteractiveCommands or NonInteractiveCommands"
    )]
    UnsupportedSessionType {
        /// The document.
        document: String,
        /// The session type found.
        session_type: String,
    },
    /// A parameter definition is malformed, unsupported or contradicts itself.
    #[error("document {document}: parameter {parameter}: {reason}")]
    InvalidParameter {
        /// The document.
        document: String,
        /// The parameter.
        parameter: String,
        /// What is wrong.
        reason: String,
    },
    /// A parameter's `allowedPattern` is not a valid regular expression.
    #[error(
        "document {document}: parameter {parameter}: allowedPattern {pattern:?} is not a valid regular expression: {error}"
    )]
    InvalidPattern {
        /// The document.
        document: String,
        /// The parameter.
        parameter: String,
        /// The pattern.
        pattern: String,
        /// The regex compiler's message.
        error: String,
    },
    /// A shell document's `inputs` entry is unknown or of the wrong type, or names an
    /// undeclared parameter.
    #[error("document {document}: inputs.{input}: {reason}")]
    InvalidInput {
        /// The document.
        document: String,
        /// The input (`shellProfile.linux` for a nested one).
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// A property value is of the wrong type or shape, or names an undeclared parameter.
    #[error("document {document}: property {property}: {reason}")]
    InvalidProperty {
        /// The document.
        document: String,
        /// The property.
        property: String,
        /// What is wrong.
        reason: String,
    },
}

/// A resolved document: its canonical name, session type and the substituted `properties`
/// and `inputs`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedDocument {
    /// The document name (an ARN is reduced to its name).
    pub name: String,
    /// The document's `sessionType`.
    pub session_type: SessionType,
    /// `properties` after substitution, as the agent receives them (Port documents: also the
    /// client, in the HandshakeRequest; shell sessions send it `null`).
    pub properties: BTreeMap<String, Value>,
    /// The settings of a shell document's `inputs`.
    pub inputs: SessionInputs,
}

/// The documents StartSession can name: the AWS-owned documents and any custom ones.
#[derive(Clone)]
pub struct Documents {
    by_name: BTreeMap<String, SessionDocument>,
}

impl Default for Documents {
    /// The AWS-owned documents only.
    fn default() -> Self {
        Self {
            by_name: builtin_documents()
                .into_iter()
                .map(|document| (document.name.clone(), document))
                .collect(),
        }
    }
}

impl std::fmt::Debug for Documents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.by_name.keys()).finish()
    }
}

impl Documents {
    /// Registers a custom document. A `Standard_Stream` document named
    /// [`DEFAULT_SHELL_DOCUMENT`] replaces the built-in one, as an account's own preferences
    /// document does.
    ///
    /// # Errors
    /// [`DocumentLoadError::Duplicate`] if a document of that name is already registered (and
    /// is not the replaceable built-in).
    pub fn add(&mut self, document: SessionDocument) -> Result<(), DocumentLoadError> {
        if self
            .by_name
            .get(&document.name)
            .is_some_and(|existing| !existing.replaceable)
        {
            return Err(DocumentLoadError::Duplicate(document.name));
        }
        self.by_name.insert(document.name.clone(), document);
        Ok(())
    }

    /// The names of every registered document, built-in and custom, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Looks up `name` (a plain name or a document ARN) and substitutes `parameters` (name →
    /// list of strings, as StartSession takes them) into its properties.
    ///
    /// # Errors
    /// The document is unknown, or a parameter is undeclared, missing, repeated or invalid.
    pub fn resolve(
        &self,
        name: &str,
        parameters: &BTreeMap<String, Vec<String>>,
    ) -> Result<ResolvedDocument, DocumentError> {
        // `arn:aws:ssm:us-east-1::document/AWS-StartPortForwardingSession` names the same
        // document.
        let short = if name.starts_with("arn:") {
            name.rsplit('/').next().unwrap_or(name)
        } else {
            name
        };
        let document = self
            .by_name
            .get(short)
            .ok_or_else(|| DocumentError::Unknown(name.to_owned()))?;
        document.resolve(parameters)
    }
}

impl SessionDocument {
    /// A custom document from its JSON text.
    ///
    /// # Errors
    /// The text is not JSON, or see [`SessionDocument::from_value`].
    pub fn parse(name: &str, text: &str) -> Result<Self, DocumentLoadError> {
        let content: Value =
            serde_json::from_str(text).map_err(|e| DocumentLoadError::Malformed {
                document: name.to_owned(),
                reason: format!("not valid JSON: {e}"),
            })?;
        Self::from_value(name, &content)
    }

    /// A custom document from its JSON content: `schemaVersion` `"1.0"`, `sessionType` (one of
    /// the four), `parameters` (each with optional `type` `"String"`, `default`,
    /// `allowedPattern`, `allowedValues`, `description`), `properties` (Port and the two
    /// command types), `inputs` (the shell types) and an optional `description`. Any other key
    /// is an error.
    ///
    /// # Errors
    /// The name is invalid or reserved, or the content is malformed.
    pub fn from_value(name: &str, content: &Value) -> Result<Self, DocumentLoadError> {
        check_name(name)?;
        let malformed = |reason: String| DocumentLoadError::Malformed {
            document: name.to_owned(),
            reason,
        };
        let content = Content::deserialize(content).map_err(|e| malformed(e.to_string()))?;
        if content.schema_version != "1.0" {
            return Err(DocumentLoadError::UnsupportedSchemaVersion {
                document: name.to_owned(),
                version: content.schema_version,
            });
        }
        let session_type = SessionType::from_name(&content.session_type).ok_or_else(|| {
            DocumentLoadError::UnsupportedSessionType {
                document: name.to_owned(),
                session_type: content.session_type.clone(),
            }
        })?;
        if name == DEFAULT_SHELL_DOCUMENT && session_type != SessionType::StandardStream {
            return Err(malformed(format!(
                "{DEFAULT_SHELL_DOCUMENT} holds the shell preferences: its sessionType must be Standard_Stream"
            )));
        }
        let parameters = content
            .parameters
            .iter()
            .map(|(parameter, definition)| load_parameter(name, parameter, definition))
            .collect::<Result<Vec<_>, _>>()?;
        let properties = match (session_type, content.properties) {
            (SessionType::Port, None) => {
                return Err(malformed("missing field `properties`".to_owned()));
            }
            (SessionType::Port, Some(properties)) => Properties::Flat(
                properties
                    .iter()
                    .map(|(property, value)| load_property(name, &parameters, property, value))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            (SessionType::StandardStream, None) => Properties::Tree(serde_json::Map::new()),
            (SessionType::StandardStream, Some(_)) => {
                return Err(malformed(
                    "Standard_Stream documents have no properties: the shell is configured by inputs"
                        .to_owned(),
                ));
            }
            (_, None) => {
                return Err(malformed(format!(
                    "{session_type} documents need properties with linux.commands"
                )));
            }
            (_, Some(properties)) => {
                Properties::Tree(load_shell_properties(name, &parameters, properties)?)
            }
        };
        let inputs = match (session_type, content.inputs) {
            (_, None) => serde_json::Map::new(),
            (SessionType::Port, Some(_)) => {
                return Err(malformed(
                    "inputs are session preferences of shell documents, not of Port documents"
                        .to_owned(),
                ));
            }
            (_, Some(inputs)) => load_inputs(name, &parameters, inputs)?,
        };
        Ok(Self {
            name: name.to_owned(),
            session_type,
            parameters,
            properties,
            inputs,
            replaceable: false,
        })
    }

    /// The document name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn resolve(
        &self,
        parameters: &BTreeMap<String, Vec<String>>,
    ) -> Result<ResolvedDocument, DocumentError> {
        if let Some(unknown) = parameters
            .keys()
            .find(|key| !self.parameters.iter().any(|p| p.name == **key))
        {
            return Err(DocumentError::UnknownParameter(
                unknown.clone(),
                self.name.clone(),
            ));
        }
        let mut values = BTreeMap::new();
        for parameter in &self.parameters {
            let value = match parameters.get(&parameter.name) {
                Some(list) => match list.as_slice() {
                    [one] => one.clone(),
                    _ => return Err(DocumentError::NotOneValue(parameter.name.clone())),
                },
                None => match &parameter.default {
                    Some(default) => default.clone(),
                    None => {
                        return Err(DocumentError::MissingParameter(
                            parameter.name.clone(),
                            self.name.clone(),
                        ));
                    }
                },
            };
            parameter.check(&value)?;
            values.insert(parameter.name.as_str(), value);
        }
        let properties = match &self.properties {
            Properties::Flat(templates) => templates
                .iter()
                .map(|(key, template)| (key.clone(), Value::String(substitute(template, &values))))
                .collect(),
            Properties::Tree(tree) => tree
                .iter()
                .map(|(key, value)| (key.clone(), substitute_json(value, &values)))
                .collect(),
        };
        let input = |pointer: &str| {
            self.inputs_pointer(pointer)
                .map(|template| substitute(template, &values))
                .filter(|text| !text.trim().is_empty())
        };
        Ok(ResolvedDocument {
            name: self.name.clone(),
            session_type: self.session_type,
            properties,
            inputs: SessionInputs {
                kms_key_id: input("/kmsKeyId").map(|key| key.trim().to_owned()),
                shell_profile: input("/shellProfile/linux"),
            },
        })
    }

    /// The document's session type.
    pub fn session_type(&self) -> SessionType {
        self.session_type
    }

    /// The string template at `pointer` (a JSON pointer) in `inputs`.
    fn inputs_pointer(&self, pointer: &str) -> Option<&str> {
        let mut parts = pointer.trim_start_matches('/').split('/');
        let first = parts.next()?;
        let mut value = self.inputs.get(first)?;
        for part in parts {
            value = value.get(part)?;
        }
        value.as_str()
    }
}

impl Parameter {
    fn check(&self, value: &str) -> Result<(), DocumentError> {
        let bad = |why: String| DocumentError::BadValue {
            name: self.name.clone(),
            value: value.to_owned(),
            why,
        };
        for check in &self.checks {
            match check {
                Check::Port { min } => {
                    let port: u32 = value
                        .parse()
                        .ok()
                        .filter(|_| !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| bad("not a port number".to_owned()))?;
                    if port < *min || port > 65535 {
                        return Err(bad(format!("must be between {min} and 65535")));
                    }
                }
                Check::Host => {
                    if !is_host(value) {
                        return Err(bad("not a host name or address".to_owned()));
                    }
                }
                Check::Pattern(regex) => {
                    if !regex.is_match(value) {
                        return Err(bad(format!(
                            "must match the allowed pattern {}",
                            regex.as_str()
                        )));
                    }
                }
                Check::OneOf(allowed) => {
                    if !allowed.iter().any(|a| a == value) {
                        return Err(bad(format!("must be one of {allowed:?}")));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether `value` can be a host name or address: what the built-in `host` parameter accepts
/// and what the agent's default host must be.
pub(crate) fn is_host(value: &str) -> bool {
    !value.is_empty() && value.len() <= 255 && !value.chars().any(char::is_whitespace)
}

/// The JSON content of a custom document.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Content {
    schema_version: String,
    #[serde(default, rename = "description")]
    _description: Option<String>,
    session_type: String,
    #[serde(default)]
    parameters: BTreeMap<String, Value>,
    #[serde(default)]
    properties: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    inputs: Option<serde_json::Map<String, Value>>,
}

/// One parameter definition of a custom document; read per parameter so errors can name it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ParameterContent {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    allowed_pattern: Option<String>,
    #[serde(default)]
    allowed_values: Option<Vec<String>>,
    #[serde(default, rename = "description")]
    _description: Option<String>,
}

fn check_name(name: &str) -> Result<(), DocumentLoadError> {
    // StartSession only accepts names like this, so any other name could never be used.
    let valid = (3..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if !valid {
        return Err(DocumentLoadError::InvalidName(name.to_owned()));
    }
    let reserved = name
        .get(..AWS_PREFIX.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(AWS_PREFIX));
    if reserved {
        return Err(DocumentLoadError::ReservedName(name.to_owned()));
    }
    Ok(())
}

fn load_parameter(
    document: &str,
    name: &str,
    definition: &Value,
) -> Result<Parameter, DocumentLoadError> {
    let invalid = |reason: String| DocumentLoadError::InvalidParameter {
        document: document.to_owned(),
        parameter: name.to_owned(),
        reason,
    };
    // Placeholders are matched by trimmed name, so a name with spaces or braces could not be
    // referred to.
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        return Err(invalid(
            "parameter names use letters, digits, '_', '-' and '.'".to_owned(),
        ));
    }
    let content = ParameterContent::deserialize(definition).map_err(|e| invalid(e.to_string()))?;
    if let Some(kind) = content.kind.as_deref().filter(|kind| *kind != "String") {
        return Err(invalid(format!(
            "type {kind:?} is not supported, only String parameters are emulated"
        )));
    }
    let mut checks = Vec::new();
    if let Some(pattern) = content.allowed_pattern {
        let regex = Regex::new(&pattern).map_err(|e| DocumentLoadError::InvalidPattern {
            document: document.to_owned(),
            parameter: name.to_owned(),
            pattern: pattern.clone(),
            error: e.to_string(),
        })?;
        checks.push(Check::Pattern(regex));
    }
    if let Some(allowed) = content.allowed_values {
        if allowed.is_empty() {
            return Err(invalid(
                "allowedValues is empty, so no value would be accepted".to_owned(),
            ));
        }
        checks.push(Check::OneOf(allowed));
    }
    let parameter = Parameter {
        name: name.to_owned(),
        default: content.default,
        checks,
    };
    // A default that fails its own constraints would make every session without the
    // parameter fail; better to say so when the document is loaded.
    if let Some(default) = &parameter.default
        && let Err(err) = parameter.check(default)
    {
        return Err(invalid(format!("the default is not accepted: {err}")));
    }
    Ok(parameter)
}

fn load_property(
    document: &str,
    parameters: &[Parameter],
    name: &str,
    value: &Value,
) -> Result<(String, String), DocumentLoadError> {
    let invalid = |reason: String| DocumentLoadError::InvalidProperty {
        document: document.to_owned(),
        property: name.to_owned(),
        reason,
    };
    let template = match value {
        Value::String(text) => text.clone(),
        Value::Number(_) | Value::Bool(_) => value.to_string(),
        _ => {
            return Err(invalid(
                "the value must be a string, a number or a boolean".to_owned(),
            ));
        }
    };
    for segment in segments(&template) {
        if let Segment::Placeholder { name: used, .. } = segment
            && !parameters.iter().any(|p| p.name == used)
        {
            return Err(invalid(format!(
                "{{{{ {used} }}}} is not a declared parameter"
            )));
        }
    }
    Ok((name.to_owned(), template))
}

/// The keys of a shell document's per-platform properties the agent reads, and whether a
/// value may be a string (`true`) or must be a boolean (`false`); `separateOutputStream` may
/// be either (the agent converts strings with Go's `strconv.ParseBool`).
const SHELL_PROPERTY_KEYS: [(&str, ShellValue); 5] = [
    ("commands", ShellValue::String),
    ("runAsElevated", ShellValue::Bool),
    ("separateOutputStream", ShellValue::StringOrBool),
    ("stdOutSeparatorPrefix", ShellValue::String),
    ("stdErrSeparatorPrefix", ShellValue::String),
];

/// The preference inputs a shell document may have. The agent model acts on `kmsKeyId` and
/// `shellProfile.linux`; the others (logging, RunAs, timeouts) are accepted and ignored.
const INPUT_KEYS: [(&str, ShellValue); 12] = [
    ("kmsKeyId", ShellValue::String),
    ("shellProfile", ShellValue::Profile),
    ("runAsEnabled", ShellValue::StringOrBool),
    ("runAsDefaultUser", ShellValue::String),
    ("idleSessionTimeout", ShellValue::String),
    ("maxSessionDuration", ShellValue::String),
    ("s3BucketName", ShellValue::String),
    ("s3KeyPrefix", ShellValue::String),
    ("s3EncryptionEnabled", ShellValue::StringOrBool),
    ("cloudWatchLogGroupName", ShellValue::String),
    ("cloudWatchEncryptionEnabled", ShellValue::StringOrBool),
    ("cloudWatchStreamingEnabled", ShellValue::StringOrBool),
];

/// The JSON type a shell property or input must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ShellValue {
    String,
    Bool,
    StringOrBool,
    /// `{"windows": "...", "linux": "..."}`.
    Profile,
}

impl ShellValue {
    fn accepts(self, value: &Value) -> bool {
        match (self, value) {
            (Self::String | Self::StringOrBool, Value::String(_)) => true,
            (Self::Bool | Self::StringOrBool, Value::Bool(_)) => true,
            (Self::Profile, Value::Object(map)) => map.iter().all(|(key, value)| {
                matches!(key.as_str(), "windows" | "linux") && value.is_string()
            }),
            _ => false,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::String => "a string",
            Self::Bool => "a boolean",
            Self::StringOrBool => "a string or a boolean",
            Self::Profile => "an object with string members windows and linux",
        }
    }
}

/// The first `{{ name }}` in the strings of `value` that names no declared parameter.
fn undeclared_placeholder<'a>(value: &'a Value, parameters: &[Parameter]) -> Option<&'a str> {
    match value {
        Value::String(text) => segments(text)
            .into_iter()
            .find_map(|segment| match segment {
                Segment::Placeholder { name, .. } if !parameters.iter().any(|p| p.name == name) => {
                    Some(name)
                }
                _ => None,
            }),
        Value::Array(items) => items
            .iter()
            .find_map(|item| undeclared_placeholder(item, parameters)),
        Value::Object(map) => map
            .values()
            .find_map(|item| undeclared_placeholder(item, parameters)),
        Value::Null | Value::Bool(_) | Value::Number(_) => None,
    }
}

/// Checks a shell document's `properties`: per-platform objects (`linux`, `windows`,
/// `macos`) of the keys the agent reads, with `linux.commands` present (the model is a Linux
/// agent) and every placeholder declared.
fn load_shell_properties(
    document: &str,
    parameters: &[Parameter],
    properties: serde_json::Map<String, Value>,
) -> Result<serde_json::Map<String, Value>, DocumentLoadError> {
    let invalid = |property: String, reason: String| DocumentLoadError::InvalidProperty {
        document: document.to_owned(),
        property,
        reason,
    };
    for (platform, config) in &properties {
        if !matches!(platform.as_str(), "linux" | "windows" | "macos") {
            return Err(invalid(
                platform.clone(),
                "shell properties are per platform: linux, windows or macos".to_owned(),
            ));
        }
        let Value::Object(config) = config else {
            return Err(invalid(platform.clone(), "must be an object".to_owned()));
        };
        for (key, value) in config {
            let property = format!("{platform}.{key}");
            let Some((_, kind)) = SHELL_PROPERTY_KEYS.iter().find(|(k, _)| k == key) else {
                let known: Vec<&str> = SHELL_PROPERTY_KEYS.iter().map(|(k, _)| *k).collect();
                return Err(invalid(
                    property,
                    format!("unknown key, the agent reads {}", known.join(", ")),
                ));
            };
            if !kind.accepts(value) {
                return Err(invalid(property, format!("must be {}", kind.describe())));
            }
            if let Some(used) = undeclared_placeholder(value, parameters) {
                return Err(invalid(
                    property,
                    format!("{{{{ {used} }}}} is not a declared parameter"),
                ));
            }
        }
    }
    let has_commands = properties
        .get("linux")
        .and_then(|linux| linux.get("commands"))
        .is_some();
    if !has_commands {
        return Err(invalid(
            "linux.commands".to_owned(),
            "missing: the emulated agent runs on Linux and runs this command".to_owned(),
        ));
    }
    Ok(properties)
}

/// Checks a shell document's `inputs` (session preferences).
fn load_inputs(
    document: &str,
    parameters: &[Parameter],
    inputs: serde_json::Map<String, Value>,
) -> Result<serde_json::Map<String, Value>, DocumentLoadError> {
    let invalid = |input: &str, reason: String| DocumentLoadError::InvalidInput {
        document: document.to_owned(),
        input: input.to_owned(),
        reason,
    };
    for (key, value) in &inputs {
        let Some((_, kind)) = INPUT_KEYS.iter().find(|(k, _)| k == key) else {
            let known: Vec<&str> = INPUT_KEYS.iter().map(|(k, _)| *k).collect();
            return Err(invalid(
                key,
                format!("unknown input, use one of {}", known.join(", ")),
            ));
        };
        if !kind.accepts(value) {
            return Err(invalid(key, format!("must be {}", kind.describe())));
        }
        if let Some(used) = undeclared_placeholder(value, parameters) {
            return Err(invalid(
                key,
                format!("{{{{ {used} }}}} is not a declared parameter"),
            ));
        }
    }
    Ok(inputs)
}

fn builtin_documents() -> Vec<SessionDocument> {
    let parameter = |name: &str, default: Option<&str>, check: Option<Check>| Parameter {
        name: name.to_owned(),
        default: default.map(str::to_owned),
        checks: check.into_iter().collect(),
    };
    let properties = |pairs: &[(&str, &str)]| {
        Properties::Flat(
            pairs
                .iter()
                .map(|(key, template)| ((*key).to_owned(), (*template).to_owned()))
                .collect(),
        )
    };
    let document = |name: &str, session_type, parameters, properties| SessionDocument {
        name: name.to_owned(),
        session_type,
        parameters,
        properties,
        inputs: serde_json::Map::new(),
        replaceable: false,
    };
    // The same shell configuration for every platform, as the AWS-owned documents have it.
    let per_platform = |config: Value| {
        Properties::Tree(
            ["linux", "windows", "macos"]
                .into_iter()
                .map(|platform| (platform.to_owned(), config.clone()))
                .collect(),
        )
    };
    let port_number = parameter("portNumber", Some("80"), Some(Check::Port { min: 1 }));
    let local_port_number = parameter("localPortNumber", Some("0"), Some(Check::Port { min: 0 }));
    let true_false = Check::OneOf(vec!["true".to_owned(), "false".to_owned()]);
    vec![
        document(
            "AWS-StartPortForwardingSession",
            SessionType::Port,
            vec![port_number.clone(), local_port_number.clone()],
            properties(&[
                ("portNumber", "{{ portNumber }}"),
                ("type", "LocalPortForwarding"),
                ("localPortNumber", "{{ localPortNumber }}"),
            ]),
        ),
        document(
            "AWS-StartPortForwardingSessionToRemoteHost",
            SessionType::Port,
            vec![
                parameter("host", None, Some(Check::Host)),
                port_number,
                local_port_number,
            ],
            properties(&[
                ("host", "{{ host }}"),
                ("portNumber", "{{ portNumber }}"),
                ("type", "LocalPortForwarding"),
                ("localPortNumber", "{{ localPortNumber }}"),
            ]),
        ),
        // A Port session without `type`: the client forwards it over stdin/stdout.
        document(
            "AWS-StartSSHSession",
            SessionType::Port,
            vec![parameter(
                "portNumber",
                Some("22"),
                Some(Check::Port { min: 1 }),
            )],
            properties(&[("portNumber", "{{ portNumber }}")]),
        ),
        // The default shell; its preferences (KMS, profile) come from the emulator's settings
        // unless an account document of the same name replaces it.
        SessionDocument {
            replaceable: true,
            ..document(
                DEFAULT_SHELL_DOCUMENT,
                SessionType::StandardStream,
                Vec::new(),
                Properties::Tree(serde_json::Map::new()),
            )
        },
        document(
            "AWS-StartInteractiveCommand",
            SessionType::InteractiveCommands,
            vec![parameter("command", None, None)],
            per_platform(serde_json::json!({
                "commands": "{{command}}",
                "runAsElevated": false
            })),
        ),
        // Parameter names as in the published document content (`stdoutSeparatorPrefix`,
        // lower-case o); the properties use the agent's field names.
        document(
            "AWS-StartNonInteractiveCommand",
            SessionType::NonInteractiveCommands,
            vec![
                parameter("command", None, None),
                parameter("separateOutputStream", Some("false"), Some(true_false)),
                parameter("stdoutSeparatorPrefix", Some(""), None),
                parameter("stderrSeparatorPrefix", Some(""), None),
            ],
            per_platform(serde_json::json!({
                "commands": "{{command}}",
                "runAsElevated": false,
                "separateOutputStream": "{{separateOutputStream}}",
                "stdOutSeparatorPrefix": "{{stdoutSeparatorPrefix}}",
                "stdErrSeparatorPrefix": "{{stderrSeparatorPrefix}}"
            })),
        ),
    ]
}

/// A piece of a properties template.
#[derive(Debug, PartialEq, Eq)]
enum Segment<'a> {
    /// Literal text (including unterminated `{{`).
    Text(&'a str),
    /// `{{ name }}`: the trimmed name and the placeholder as written.
    Placeholder { name: &'a str, raw: &'a str },
}

/// Splits a template into text and `{{ name }}` placeholders (spaces optional).
fn segments(template: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            break;
        };
        if start > 0 {
            out.push(Segment::Text(&rest[..start]));
        }
        out.push(Segment::Placeholder {
            name: after[..end].trim(),
            raw: &rest[start..start + 2 + end + 2],
        });
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        out.push(Segment::Text(rest));
    }
    out
}

/// [`substitute`] in every string of a JSON value; other values are kept as they are.
fn substitute_json(template: &Value, values: &BTreeMap<&str, String>) -> Value {
    match template {
        Value::String(text) => Value::String(substitute(text, values)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| substitute_json(item, values))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), substitute_json(value, values)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Replaces `{{ name }}` with the parameter's value; unknown placeholders stay as written.
fn substitute(template: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(template.len());
    for segment in segments(template) {
        match segment {
            Segment::Text(text) => out.push_str(text),
            Segment::Placeholder { name, raw } => {
                out.push_str(values.get(name).map_or(raw, String::as_str));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
            .collect()
    }

    /// A custom document that uses every supported feature.
    fn custom_content() -> Value {
        json!({
            "schemaVersion": "1.0",
            "description": "Port forwarding to a chosen port",
            "sessionType": "Port",
            "parameters": {
                "portNumber": {
                    "type": "String",
                    "default": "22",
                    "allowedPattern": "^([1-9]|[1-9][0-9]{1,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$"
                },
                "localPortNumber": {"type": "String", "default": "0"},
                "region": {"allowedValues": ["eu", "us"], "description": "no default: required"}
            },
            "properties": {
                "portNumber": "{{ portNumber }}",
                "type": "LocalPortForwarding",
                "localPortNumber": "{{localPortNumber}}",
                "note": "{{ region }}-{{ portNumber }}",
                "retries": 3,
                "verbose": true
            }
        })
    }

    fn registry_with(name: &str, content: &Value) -> Documents {
        let mut documents = Documents::default();
        documents
            .add(SessionDocument::from_value(name, content).expect("loads"))
            .expect("adds");
        documents
    }

    fn load_error(content: Value) -> DocumentLoadError {
        SessionDocument::from_value("My-Doc", &content).expect_err("rejected")
    }

    #[test]
    fn substitutes_parameters_and_defaults() {
        let documents = Documents::default();
        let doc = documents
            .resolve(
                "AWS-StartPortForwardingSession",
                &params(&[("portNumber", "8080")]),
            )
            .expect("resolves");
        assert_eq!(
            serde_json::to_string(&doc.properties).expect("json"),
            r#"{"localPortNumber":"0","portNumber":"8080","type":"LocalPortForwarding"}"#
        );
        let remote = documents
            .resolve(
                "arn:aws:ssm:us-east-1::document/AWS-StartPortForwardingSessionToRemoteHost",
                &params(&[("host", "db.internal"), ("portNumber", "5432")]),
            )
            .expect("resolves");
        assert_eq!(remote.name, "AWS-StartPortForwardingSessionToRemoteHost");
        assert_eq!(remote.properties["host"], "db.internal");
    }

    #[test]
    fn rejects_bad_parameters() {
        let documents = Documents::default();
        let name = "AWS-StartPortForwardingSession";
        assert!(matches!(
            documents.resolve(name, &params(&[("portNumber", "0")])),
            Err(DocumentError::BadValue { .. })
        ));
        assert!(matches!(
            documents.resolve(name, &params(&[("portNumber", "x1")])),
            Err(DocumentError::BadValue { .. })
        ));
        assert!(matches!(
            documents.resolve(name, &params(&[("nope", "1")])),
            Err(DocumentError::UnknownParameter(..))
        ));
        assert!(matches!(
            documents.resolve("AWS-StartPortForwardingSessionToRemoteHost", &params(&[])),
            Err(DocumentError::MissingParameter(..))
        ));
        assert!(matches!(
            documents.resolve("AWS-RunShellScript", &params(&[])),
            Err(DocumentError::Unknown(_))
        ));
    }

    #[test]
    fn substitution_leaves_unknown_placeholders() {
        let values = BTreeMap::from([("a", "1".to_owned())]);
        assert_eq!(substitute("x{{a}}y{{ b }}z{{", &values), "x1y{{ b }}z{{");
    }

    #[test]
    fn custom_document_substitutes_parameters_defaults_and_constants() {
        let documents = registry_with("My-Port-Doc", &custom_content());
        let doc = documents
            .resolve(
                "arn:aws:ssm:eu-west-1:123456789012:document/My-Port-Doc",
                &params(&[("region", "eu"), ("localPortNumber", "9090")]),
            )
            .expect("resolves");
        assert_eq!(doc.name, "My-Port-Doc");
        assert_eq!(
            serde_json::to_value(&doc.properties).expect("json"),
            json!({
                "localPortNumber": "9090",
                "note": "eu-22",
                "portNumber": "22",
                "retries": "3",
                "type": "LocalPortForwarding",
                "verbose": "true"
            })
        );
        assert!(documents.names().any(|n| n == "AWS-StartSSHSession"));
        assert!(documents.names().any(|n| n == "My-Port-Doc"));
    }

    #[test]
    fn custom_document_enforces_required_pattern_and_allowed_values() {
        let documents = registry_with("My-Port-Doc", &custom_content());
        let resolve = |pairs: &[(&str, &str)]| documents.resolve("My-Port-Doc", &params(pairs));
        assert_eq!(
            resolve(&[]),
            Err(DocumentError::MissingParameter(
                "region".to_owned(),
                "My-Port-Doc".to_owned()
            ))
        );
        assert!(resolve(&[("region", "us"), ("portNumber", "65535")]).is_ok());
        let err = resolve(&[("region", "us"), ("portNumber", "65536")]).expect_err("pattern");
        assert!(
            matches!(&err, DocumentError::BadValue { name, value, .. } if name == "portNumber" && value == "65536"),
            "{err:?}"
        );
        assert!(err.to_string().contains("allowed pattern"), "{err}");
        let err = resolve(&[("region", "mars")]).expect_err("allowed values");
        assert!(
            matches!(&err, DocumentError::BadValue { name, .. } if name == "region"),
            "{err:?}"
        );
        assert!(err.to_string().contains(r#"["eu", "us"]"#), "{err}");
        assert!(matches!(
            resolve(&[("region", "eu"), ("host", "x")]),
            Err(DocumentError::UnknownParameter(..))
        ));
        let mut two = params(&[]);
        two.insert("region".to_owned(), vec!["eu".to_owned(), "us".to_owned()]);
        assert!(matches!(
            documents.resolve("My-Port-Doc", &two),
            Err(DocumentError::NotOneValue(_))
        ));
    }

    #[test]
    fn custom_documents_with_bad_content_are_rejected() {
        let mut content = custom_content();
        content["sessionType"] = json!("InteractiveCommand");
        let err = load_error(content);
        assert!(
            matches!(err, DocumentLoadError::UnsupportedSessionType { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("My-Doc") && err.to_string().contains("Standard_Stream"),
            "{err}"
        );

        // Port properties in a shell document.
        let mut content = custom_content();
        content["sessionType"] = json!("Standard_Stream");
        assert!(load_error(content).to_string().contains("no properties"));

        let mut content = custom_content();
        content["parameters"]["portNumber"]["allowedPattern"] = json!("^(unclosed$");
        let err = load_error(content);
        assert!(
            matches!(&err, DocumentLoadError::InvalidPattern { document, parameter, .. }
                if document == "My-Doc" && parameter == "portNumber"),
            "{err:?}"
        );

        let mut content = custom_content();
        content["inputs"] = json!({"idleSessionTimeout": "20"});
        let err = load_error(content);
        assert!(err.to_string().contains("inputs"), "{err}");

        let mut content = custom_content();
        content["parameters"]["portNumber"]["type"] = json!("StringList");
        assert!(matches!(
            load_error(content),
            DocumentLoadError::InvalidParameter { .. }
        ));

        let mut content = custom_content();
        content["parameters"]["portNumber"]["minChars"] = json!(1);
        let err = load_error(content);
        assert!(
            err.to_string().contains("portNumber") && err.to_string().contains("minChars"),
            "{err}"
        );

        let mut content = custom_content();
        content["parameters"]["portNumber"]["default"] = json!("99999");
        assert!(matches!(
            load_error(content),
            DocumentLoadError::InvalidParameter { .. }
        ));

        let mut content = custom_content();
        content["parameters"]["region"]["allowedValues"] = json!([]);
        assert!(matches!(
            load_error(content),
            DocumentLoadError::InvalidParameter { .. }
        ));

        let mut content = custom_content();
        content["properties"]["host"] = json!("{{ hostName }}");
        let err = load_error(content);
        assert!(
            matches!(&err, DocumentLoadError::InvalidProperty { property, .. } if property == "host"),
            "{err:?}"
        );

        let mut content = custom_content();
        content["properties"]["hosts"] = json!(["a", "b"]);
        assert!(matches!(
            load_error(content),
            DocumentLoadError::InvalidProperty { .. }
        ));

        let mut content = custom_content();
        content["schemaVersion"] = json!("2.2");
        assert!(matches!(
            load_error(content),
            DocumentLoadError::UnsupportedSchemaVersion { .. }
        ));

        let mut content = custom_content();
        content
            .as_object_mut()
            .expect("object")
            .remove("sessionType");
        assert!(matches!(
            load_error(content),
            DocumentLoadError::Malformed { .. }
        ));

        assert!(matches!(
            SessionDocument::parse("My-Doc", "{not json"),
            Err(DocumentLoadError::Malformed { .. })
        ));
        assert!(matches!(
            SessionDocument::from_value("My-Doc", &json!([1])),
            Err(DocumentLoadError::Malformed { .. })
        ));
    }

    #[test]
    fn custom_document_names_are_checked() {
        let content = custom_content();
        assert_eq!(
            SessionDocument::from_value("AWS-StartPortForwardingSession", &content)
                .expect_err("shadows"),
            DocumentLoadError::ReservedName("AWS-StartPortForwardingSession".to_owned())
        );
        assert!(matches!(
            SessionDocument::from_value("aws-Mine", &content),
            Err(DocumentLoadError::ReservedName(_))
        ));
        assert!(matches!(
            SessionDocument::from_value("my doc", &content),
            Err(DocumentLoadError::InvalidName(_))
        ));
        let mut documents = registry_with("My-Doc", &content);
        let again = SessionDocument::from_value("My-Doc", &content).expect("loads");
        assert_eq!(
            documents.add(again),
            Err(DocumentLoadError::Duplicate("My-Doc".to_owned()))
        );
    }

    #[test]
    fn builtin_shell_documents_resolve_like_the_aws_owned_ones() {
        let documents = Documents::default();
        let shell = documents
            .resolve(DEFAULT_SHELL_DOCUMENT, &params(&[]))
            .expect("resolves");
        assert_eq!(shell.session_type, SessionType::StandardStream);
        assert!(shell.properties.is_empty());
        assert_eq!(shell.inputs, SessionInputs::default());

        let interactive = documents
            .resolve(
                "AWS-StartInteractiveCommand",
                &params(&[("command", "top")]),
            )
            .expect("resolves");
        assert_eq!(interactive.session_type, SessionType::InteractiveCommands);
        assert_eq!(
            serde_json::to_value(&interactive.properties["linux"]).expect("json"),
            json!({"commands": "top", "runAsElevated": false})
        );
        assert!(matches!(
            documents.resolve("AWS-StartInteractiveCommand", &params(&[])),
            Err(DocumentError::MissingParameter(..))
        ));

        let command = documents
            .resolve(
                "AWS-StartNonInteractiveCommand",
                &params(&[
                    ("command", "ls -l /"),
                    ("separateOutputStream", "true"),
                    ("stdoutSeparatorPrefix", "OUT:"),
                ]),
            )
            .expect("resolves");
        assert_eq!(command.session_type, SessionType::NonInteractiveCommands);
        assert_eq!(
            command.properties["linux"],
            json!({
                "commands": "ls -l /",
                "runAsElevated": false,
                "separateOutputStream": "true",
                "stdOutSeparatorPrefix": "OUT:",
                "stdErrSeparatorPrefix": ""
            })
        );
        assert!(matches!(
            documents.resolve(
                "AWS-StartNonInteractiveCommand",
                &params(&[("command", "ls"), ("separateOutputStream", "yes")])
            ),
            Err(DocumentError::BadValue { .. })
        ));
    }

    #[test]
    fn custom_shell_documents_take_inputs_and_per_platform_properties() {
        let preferences = json!({
            "schemaVersion": "1.0",
            "sessionType": "Standard_Stream",
            "parameters": {"key": {"type": "String", "default": "alias/mine"}},
            "inputs": {
                "kmsKeyId": "{{ key }}",
                "shellProfile": {"linux": "cd /tmp", "windows": ""},
                "runAsEnabled": false,
                "idleSessionTimeout": "20",
                "s3EncryptionEnabled": "false"
            }
        });
        let mut documents = Documents::default();
        documents
            .add(SessionDocument::from_value("My-Shell", &preferences).expect("loads"))
            .expect("adds");
        let shell = documents
            .resolve("My-Shell", &params(&[]))
            .expect("resolves");
        assert_eq!(shell.session_type, SessionType::StandardStream);
        assert_eq!(shell.inputs.kms_key_id.as_deref(), Some("alias/mine"));
        assert_eq!(shell.inputs.shell_profile.as_deref(), Some("cd /tmp"));

        // An account's own preferences document replaces the built-in one, once.
        documents
            .add(SessionDocument::from_value(DEFAULT_SHELL_DOCUMENT, &preferences).expect("loads"))
            .expect("replaces the built-in");
        let replaced = documents
            .resolve(DEFAULT_SHELL_DOCUMENT, &params(&[("key", "k-1")]))
            .expect("resolves");
        assert_eq!(replaced.inputs.kms_key_id.as_deref(), Some("k-1"));
        let again =
            SessionDocument::from_value(DEFAULT_SHELL_DOCUMENT, &preferences).expect("loads");
        assert!(matches!(
            documents.add(again),
            Err(DocumentLoadError::Duplicate(_))
        ));

        let command = json!({
            "schemaVersion": "1.0",
            "sessionType": "NonInteractiveCommands",
            "parameters": {"path": {"type": "String", "allowedPattern": "^/[a-z/]*$"}},
            "properties": {"linux": {"commands": "ls {{ path }}", "separateOutputStream": true}}
        });
        documents
            .add(SessionDocument::from_value("My-Ls", &command).expect("loads"))
            .expect("adds");
        let ls = documents
            .resolve("My-Ls", &params(&[("path", "/usr")]))
            .expect("resolves");
        assert_eq!(
            ls.properties["linux"],
            json!({"commands": "ls /usr", "separateOutputStream": true})
        );
    }

    #[test]
    fn bad_shell_documents_are_rejected() {
        let error = |content: Value| {
            SessionDocument::from_value("My-Shell", &content)
                .expect_err("rejected")
                .to_string()
        };
        let base = json!({"schemaVersion": "1.0", "sessionType": "InteractiveCommands",
            "properties": {"linux": {"commands": "top"}}});
        let mut content = base.clone();
        content["properties"]["linux"]["runAsElevated"] = json!("false");
        assert!(error(content).contains("linux.runAsElevated"));
        let mut content = base.clone();
        content["properties"]["linux"]["command"] = json!("top");
        assert!(error(content).contains("linux.command"));
        let mut content = base.clone();
        content["properties"] = json!({"windows": {"commands": "dir"}});
        assert!(error(content).contains("linux.commands"));
        let mut content = base.clone();
        content["properties"]["solaris"] = json!({});
        assert!(error(content).contains("solaris"));
        let mut content = base.clone();
        content["properties"]["linux"]["commands"] = json!("{{ undeclared }}");
        assert!(error(content).contains("undeclared"));
        let mut content = base.clone();
        content
            .as_object_mut()
            .expect("object")
            .remove("properties");
        assert!(error(content).contains("properties"));
        let mut content = base.clone();
        content["inputs"] = json!({"kmsKeyID": "x"});
        assert!(error(content).contains("inputs.kmsKeyID"));
        let mut content = base;
        content["inputs"] = json!({"shellProfile": "cd /"});
        assert!(error(content).contains("shellProfile"));
        let wrong_type = json!({"schemaVersion": "1.0", "sessionType": "Port",
            "properties": {"portNumber": "22"}});
        assert!(
            SessionDocument::from_value(DEFAULT_SHELL_DOCUMENT, &wrong_type)
                .expect_err("preferences must be a shell")
                .to_string()
                .contains("Standard_Stream")
        );
    }
}
