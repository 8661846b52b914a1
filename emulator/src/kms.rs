//! A fake AWS KMS for KMS-encrypted shell sessions (PROTOCOL-SESSIONS.md §4), served on the
//! SSM endpoint: the AWS JSON 1.1 protocol, `POST /` with `X-Amz-Target:
//! TrentService.GenerateDataKey` (the client's call) or `TrentService.Decrypt` (the agent's).
//!
//! Keys: one per key id that the configuration or a session's preferences name (the configured
//! `kms_key_id`, [`DEFAULT_KEY_ID`] otherwise, and the `kmsKeyId` of every shell session
//! started), each reachable by what was configured and by its key id, key ARN, alias name and
//! alias ARN. Anything else is `NotFoundException`.
//!
//! Ciphertext blobs bind the encryption context: a data key is sealed with AES-256-GCM under
//! the key's own random master key, with the canonical (sorted) encryption context as
//! associated data. Decrypt with another context, another key or altered bytes fails with
//! `InvalidCiphertextException` (or `IncorrectKeyException` when `KeyId` names another key),
//! as KMS does; nothing is stored per data key, so memory stays bounded.
//!
//! Master keys and data keys come from the operating system's generator, not from the
//! emulator's seed: knowing the seed must not give key material away. No key material is ever
//! logged; KMS calls appear in the event log as [`Event::Api`] with the session id of their
//! encryption context.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::events::Event;
use crate::service::Service;

/// The key id shell sessions are encrypted under when KMS is switched on without one.
pub const DEFAULT_KEY_ID: &str = "alias/ssm-emulator";
/// The region of keys configured without an ARN.
pub const REGION: &str = "us-east-1";
/// The account of keys configured without an ARN.
pub const ACCOUNT: &str = "111122223333";
/// The `X-Amz-Target` prefix of KMS operations.
pub(crate) const TARGET_PREFIX: &str = "TrentService.";

/// At most this many keys: a key per distinct configured id is plenty, and a runaway stream
/// of documents naming new keys must not grow memory without bound.
const MAX_KEYS: usize = 256;
/// Blob layout: magic, key id (16 bytes), nonce (12), sealed data key with tag.
const BLOB_MAGIC: &[u8; 4] = b"EKM1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KEY_ID_LEN: usize = 16;
const HEADER_LEN: usize = BLOB_MAGIC.len() + KEY_ID_LEN + NONCE_LEN;
/// KMS's limit on `NumberOfBytes`.
const MAX_DATA_KEY: u64 = 1024;

/// Why a KMS call failed; each variant is the `__type` of the error response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KmsError {
    /// `ValidationException`: a member is missing or out of range.
    #[error("{0}")]
    Validation(String),
    /// `SerializationException`: the body is not the operation's JSON shape.
    #[error("{0}")]
    Serialization(String),
    /// `NotFoundException`: no key or alias has that id.
    #[error("{0}")]
    NotFound(String),
    /// `AccessDeniedException`: refused by the `kms_deny` fault.
    #[error("{0}")]
    AccessDenied(String),
    /// `ExpiredTokenException`: the caller's credentials are past the credential TTL.
    #[error("{0}")]
    ExpiredToken(String),
    /// `InvalidCiphertextException`: not a blob of this KMS, altered, or another context.
    #[error("{0}")]
    InvalidCiphertext(String),
    /// `IncorrectKeyException`: `KeyId` names another key than the blob's.
    #[error("{0}")]
    IncorrectKey(String),
    /// `UnknownOperationException`: a KMS operation the fake does not serve.
    #[error("{0}")]
    UnknownOperation(String),
}

impl KmsError {
    /// The error code (`__type`).
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::Validation(_) => "ValidationException",
            Self::Serialization(_) => "SerializationException",
            Self::NotFound(_) => "NotFoundException",
            Self::AccessDenied(_) => "AccessDeniedException",
            Self::ExpiredToken(_) => "ExpiredTokenException",
            Self::InvalidCiphertext(_) => "InvalidCiphertextException",
            Self::IncorrectKey(_) => "IncorrectKeyException",
            Self::UnknownOperation(_) => "UnknownOperationException",
        }
    }
}

/// One KMS key.
struct Key {
    /// The key id, a UUID.
    id: uuid::Uuid,
    /// `arn:aws:kms:REGION:ACCOUNT:key/ID`.
    arn: String,
    /// Alias names (`alias/x`) and alias ARNs that resolve to it.
    aliases: Vec<String>,
    /// The identifier as configured, which always resolves to it.
    configured: Vec<String>,
    /// The master key the key's ciphertext blobs are sealed with.
    cipher: Aes256Gcm,
}

impl Key {
    fn matches(&self, id: &str) -> bool {
        self.arn == id
            || self.id.hyphenated().to_string() == id
            || self.aliases.iter().any(|alias| alias == id)
            || self.configured.iter().any(|configured| configured == id)
    }
}

/// The fake KMS's keys.
pub(crate) struct Kms {
    keys: Mutex<Vec<Key>>,
}

impl std::fmt::Debug for Kms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_list()
            .entries(keys.iter().map(|key| &key.arn))
            .finish()
    }
}

impl Kms {
    /// A KMS that knows `key_id` (and nothing else yet).
    pub(crate) fn new(key_id: &str) -> Self {
        let kms = Self {
            keys: Mutex::new(Vec::new()),
        };
        kms.ensure_key(key_id);
        kms
    }

    /// Makes sure a key answers to `configured` (a key id, key ARN, alias or alias ARN):
    /// preferences naming a key imply that the key exists. Returns its key ARN, or `None`
    /// when the id is empty or the key table is full.
    pub(crate) fn ensure_key(&self, configured: &str) -> Option<String> {
        let configured = configured.trim();
        if configured.is_empty() {
            return None;
        }
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(key) = keys.iter().find(|key| key.matches(configured)) {
            return Some(key.arn.clone());
        }
        if keys.len() >= MAX_KEYS {
            return None;
        }
        let key = new_key(configured);
        let arn = key.arn.clone();
        keys.push(key);
        Some(arn)
    }

    /// `GenerateDataKey`: a fresh data key, in plaintext and sealed to `EncryptionContext`.
    ///
    /// # Errors
    /// A missing key id, a bad byte count or key spec, a malformed context, or an unknown key.
    pub(crate) fn generate_data_key(&self, request: &Value) -> Result<Value, KmsError> {
        let key_id = required_string(request, "KeyId", "keyId")?;
        let context = encryption_context(request)?;
        let bytes = match (request.get("NumberOfBytes"), request.get("KeySpec")) {
            (Some(n), None) if !n.is_null() => {
                let n = n.as_u64().ok_or_else(|| {
                    KmsError::Serialization("NumberOfBytes must be an integer".to_owned())
                })?;
                if n == 0 || n > MAX_DATA_KEY {
                    return Err(KmsError::Validation(format!(
                        "1 validation error detected: Value '{n}' at 'numberOfBytes' failed to satisfy constraint: Member must have value between 1 and {MAX_DATA_KEY}"
                    )));
                }
                usize::try_from(n).unwrap_or(0)
            }
            (None, Some(spec)) => match spec.as_str() {
                Some("AES_256") => 32,
                Some("AES_128") => 16,
                _ => {
                    return Err(KmsError::Validation(format!(
                        "1 validation error detected: Value {spec} at 'keySpec' failed to satisfy constraint: Member must satisfy enum value set: [AES_256, AES_128]"
                    )));
                }
            },
            _ => {
                return Err(KmsError::Validation(
                    "Please specify either number of bytes or key spec.".to_owned(),
                ));
            }
        };
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let key = find(&keys, &key_id)?;
        let plaintext: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
        let blob = seal(key, &plaintext, &context)?;
        Ok(json!({
            "CiphertextBlob": STANDARD.encode(&blob),
            "KeyId": key.arn,
            "Plaintext": STANDARD.encode(&plaintext),
        }))
    }

    /// `Decrypt`: the data key sealed in `CiphertextBlob`, if `EncryptionContext` is the one
    /// it was sealed to (and `KeyId`, when given, names its key).
    ///
    /// # Errors
    /// A missing or undecodable blob, an unknown or other key, or a context mismatch.
    pub(crate) fn decrypt(&self, request: &Value) -> Result<Value, KmsError> {
        let blob_text = required_string(request, "CiphertextBlob", "ciphertextBlob")?;
        let blob = STANDARD.decode(blob_text.as_bytes()).map_err(|_| {
            KmsError::Serialization("CiphertextBlob is not base64-encoded binary data".to_owned())
        })?;
        let context = encryption_context(request)?;
        let invalid = || KmsError::InvalidCiphertext(String::new());
        if blob.len() < HEADER_LEN + TAG_LEN || !blob.starts_with(BLOB_MAGIC) {
            return Err(invalid());
        }
        let key_bytes: [u8; KEY_ID_LEN] = blob[BLOB_MAGIC.len()..BLOB_MAGIC.len() + KEY_ID_LEN]
            .try_into()
            .map_err(|_| invalid())?;
        let blob_key = uuid::Uuid::from_bytes(key_bytes);
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let key = keys
            .iter()
            .find(|key| key.id == blob_key)
            .ok_or_else(invalid)?;
        if let Some(named) = request.get("KeyId").and_then(Value::as_str) {
            let named = find(&keys, named)?;
            if named.id != key.id {
                return Err(KmsError::IncorrectKey(
                    "The key ID in the request does not identify a CMK that can perform this operation."
                        .to_owned(),
                ));
            }
        }
        let nonce = &blob[BLOB_MAGIC.len() + KEY_ID_LEN..HEADER_LEN];
        let aad = canonical_context(&context);
        let plaintext = key
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: &blob[HEADER_LEN..],
                    aad: &aad,
                },
            )
            .map_err(|_| invalid())?;
        Ok(json!({
            "EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            "KeyId": key.arn,
            "Plaintext": STANDARD.encode(&plaintext),
        }))
    }

    /// The key ARN `id` resolves to, for error messages.
    fn arn_of(&self, id: &str) -> Option<String> {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.iter()
            .find(|key| key.matches(id))
            .map(|k| k.arn.clone())
    }
}

/// Answers one KMS request (`operation` is the target without `TrentService.`), records it in
/// the event log and applies the credential-expiry and `kms_deny` faults.
pub(crate) fn handle(
    service: &Service,
    operation: &str,
    access_key_id: Option<&str>,
    body: &[u8],
) -> Response {
    let request: Result<Value, KmsError> =
        serde_json::from_slice(if body.is_empty() { b"{}" } else { body })
            .map_err(|e| KmsError::Serialization(e.to_string()));
    let session_id = request
        .as_ref()
        .ok()
        .and_then(|r| r.get("EncryptionContext"))
        .and_then(|c| c.get("aws:ssm:SessionId"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let result = request.and_then(|request| call(service, operation, access_key_id, &request));
    let (status, error, body) = match result {
        Ok(body) => (StatusCode::OK, None, body.to_string()),
        Err(err) => (
            StatusCode::BAD_REQUEST,
            Some(err.code().to_owned()),
            json!({"__type": err.code(), "message": err.to_string()}).to_string(),
        ),
    };
    service.events.emit(Event::Api {
        operation: operation.to_owned(),
        access_key_id: access_key_id.map(str::to_owned),
        session_id,
        status: status.as_u16(),
        error,
    });
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    if let Ok(id) = HeaderValue::from_str(&service.random_uuid().to_string()) {
        headers.insert("x-amzn-requestid", id);
    }
    response
}

fn call(
    service: &Service,
    operation: &str,
    access_key_id: Option<&str>,
    request: &Value,
) -> Result<Value, KmsError> {
    if !matches!(operation, "GenerateDataKey" | "Decrypt") {
        return Err(KmsError::UnknownOperation(format!(
            "Operation {operation:?} is not supported by the emulator's KMS."
        )));
    }
    // GenerateDataKey is the client's call and carries its credentials; Decrypt is the
    // agent's, whose instance-role credentials never expire here.
    if operation == "GenerateDataKey"
        && let Some(key) = access_key_id
        && service.credentials_expired(key)
    {
        service.events.emit(Event::Fault {
            session_id: None,
            kind: "credential_expired".to_owned(),
            detail: format!("access key {key} is past its time-to-live"),
        });
        return Err(KmsError::ExpiredToken(
            "The security token included in the request is expired".to_owned(),
        ));
    }
    if service.faults().kms_deny.denies(operation) {
        let key_id = request
            .get("KeyId")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let resource = service
            .kms
            .arn_of(key_id)
            .unwrap_or_else(|| key_id.to_owned());
        service.events.emit(Event::Fault {
            session_id: None,
            kind: "kms_deny".to_owned(),
            detail: format!("{operation} refused"),
        });
        let user = access_key_id.unwrap_or("anonymous");
        return Err(KmsError::AccessDenied(format!(
            "User: arn:aws:iam::{ACCOUNT}:user/{user} is not authorized to perform: kms:{operation} on resource: {resource} because no identity-based policy allows the kms:{operation} action"
        )));
    }
    match operation {
        "GenerateDataKey" => service.kms.generate_data_key(request),
        _ => service.kms.decrypt(request),
    }
}

/// A key answering to `configured`, with ARNs built from it where it is one.
fn new_key(configured: &str) -> Key {
    let (region, account, resource) = match configured.strip_prefix("arn:") {
        Some(rest) => {
            // arn:PARTITION:kms:REGION:ACCOUNT:RESOURCE
            let parts: Vec<&str> = rest.splitn(5, ':').collect();
            match parts.as_slice() {
                [_, _, region, account, resource] => (*region, *account, *resource),
                _ => (REGION, ACCOUNT, configured),
            }
        }
        None => (REGION, ACCOUNT, configured),
    };
    let id = resource
        .strip_prefix("key/")
        .and_then(|id| uuid::Uuid::parse_str(id).ok())
        .or_else(|| uuid::Uuid::parse_str(resource).ok())
        .unwrap_or_else(uuid::Uuid::new_v4);
    let mut aliases = Vec::new();
    if let Some(alias) = resource.strip_prefix("alias/") {
        aliases.push(format!("alias/{alias}"));
        aliases.push(format!("arn:aws:kms:{region}:{account}:alias/{alias}"));
    }
    let master: [u8; 32] = rand::random();
    Key {
        id,
        arn: format!("arn:aws:kms:{region}:{account}:key/{}", id.hyphenated()),
        aliases,
        configured: vec![configured.to_owned()],
        cipher: Aes256Gcm::new(&master.into()),
    }
}

fn find<'a>(keys: &'a [Key], id: &str) -> Result<&'a Key, KmsError> {
    keys.iter().find(|key| key.matches(id)).ok_or_else(|| {
        KmsError::NotFound(if id.contains("alias/") {
            let arn = if id.starts_with("arn:") {
                id.to_owned()
            } else {
                format!("arn:aws:kms:{REGION}:{ACCOUNT}:{id}")
            };
            format!("Alias {arn} is not found.")
        } else {
            let arn = if id.starts_with("arn:") {
                id.to_owned()
            } else {
                format!("arn:aws:kms:{REGION}:{ACCOUNT}:key/{id}")
            };
            format!("Key '{arn}' does not exist")
        })
    })
}

fn seal(
    key: &Key,
    plaintext: &[u8],
    context: &BTreeMap<String, String>,
) -> Result<Vec<u8>, KmsError> {
    let nonce: [u8; NONCE_LEN] = rand::random();
    let aad = canonical_context(context);
    let sealed = key
        .cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| KmsError::Validation("the data key could not be sealed".to_owned()))?;
    let mut blob = Vec::with_capacity(HEADER_LEN + sealed.len());
    blob.extend_from_slice(BLOB_MAGIC);
    blob.extend_from_slice(key.id.as_bytes());
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&sealed);
    Ok(blob)
}

/// The encryption context as associated data: sorted pairs, each length-prefixed, so that no
/// two different contexts share an encoding.
fn canonical_context(context: &BTreeMap<String, String>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in context {
        for text in [name, value] {
            out.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
    }
    out
}

fn encryption_context(request: &Value) -> Result<BTreeMap<String, String>, KmsError> {
    match request.get("EncryptionContext") {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(name, value)| match value {
                Value::String(text) => Ok((name.clone(), text.clone())),
                _ => Err(KmsError::Serialization(format!(
                    "EncryptionContext value of {name:?} must be a string"
                ))),
            })
            .collect(),
        Some(_) => Err(KmsError::Serialization(
            "EncryptionContext must be a map of strings".to_owned(),
        )),
    }
}

fn required_string(request: &Value, member: &str, wire: &str) -> Result<String, KmsError> {
    match request.get(member) {
        Some(Value::String(text)) if !text.is_empty() => Ok(text.clone()),
        None | Some(Value::Null) => Err(KmsError::Validation(format!(
            "1 validation error detected: Value null at '{wire}' failed to satisfy constraint: Member must not be null"
        ))),
        Some(Value::String(_)) => Err(KmsError::Validation(format!(
            "1 validation error detected: Value '' at '{wire}' failed to satisfy constraint: Member must have length greater than or equal to 1"
        ))),
        Some(_) => Err(KmsError::Serialization(format!(
            "{member} must be a string"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(session: &str) -> Value {
        json!({"aws:ssm:SessionId": session, "aws:ssm:TargetId": "i-0123456789abcdef0"})
    }

    fn generate(kms: &Kms, key: &str, session: &str) -> (Vec<u8>, String) {
        let out = kms
            .generate_data_key(
                &json!({"KeyId": key, "NumberOfBytes": 64, "EncryptionContext": context(session)}),
            )
            .expect("generates");
        let plaintext = STANDARD
            .decode(out["Plaintext"].as_str().expect("plaintext"))
            .expect("base64");
        (
            plaintext,
            out["CiphertextBlob"].as_str().expect("blob").to_owned(),
        )
    }

    #[test]
    fn data_keys_decrypt_only_with_their_context() {
        let kms = Kms::new(DEFAULT_KEY_ID);
        let (plaintext, blob) = generate(&kms, DEFAULT_KEY_ID, "s-1");
        assert_eq!(plaintext.len(), 64);
        let out = kms
            .decrypt(&json!({"CiphertextBlob": blob, "EncryptionContext": context("s-1"), "KeyId": DEFAULT_KEY_ID}))
            .expect("decrypts");
        assert_eq!(
            STANDARD
                .decode(out["Plaintext"].as_str().expect("text"))
                .expect("b64"),
            plaintext
        );
        assert!(
            out["KeyId"]
                .as_str()
                .expect("arn")
                .starts_with("arn:aws:kms:us-east-1:111122223333:key/")
        );
        let wrong = kms
            .decrypt(&json!({"CiphertextBlob": blob, "EncryptionContext": context("s-2")}))
            .expect_err("other context");
        assert_eq!(wrong.code(), "InvalidCiphertextException");
        let mut extra = context("s-1");
        extra["aws:ssm:RandomChallenge"] = json!("AAAA");
        assert_eq!(
            kms.decrypt(&json!({"CiphertextBlob": blob, "EncryptionContext": extra}))
                .expect_err("extra pair")
                .code(),
            "InvalidCiphertextException"
        );
        let mut bytes = STANDARD.decode(&blob).expect("b64");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(
            kms.decrypt(&json!({"CiphertextBlob": STANDARD.encode(&bytes), "EncryptionContext": context("s-1")}))
                .expect_err("altered")
                .code(),
            "InvalidCiphertextException"
        );
    }

    #[test]
    fn keys_resolve_by_every_identifier_and_unknown_ones_are_not_found() {
        let kms = Kms::new("alias/team");
        let arn = kms.ensure_key("alias/team").expect("exists");
        let id = arn.rsplit('/').next().expect("id").to_owned();
        for name in [
            "alias/team",
            "arn:aws:kms:us-east-1:111122223333:alias/team",
            arn.as_str(),
            id.as_str(),
        ] {
            generate(&kms, name, "s");
        }
        let err = kms
            .generate_data_key(&json!({"KeyId": "alias/other", "NumberOfBytes": 64}))
            .expect_err("unknown");
        assert_eq!(err.code(), "NotFoundException");
        assert!(err.to_string().contains("alias/other"), "{err}");
        // A configured key ARN keeps its region, account and id.
        let given = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        assert_eq!(kms.ensure_key(given).as_deref(), Some(given));
        generate(&kms, "1234abcd-12ab-34cd-56ef-1234567890ab", "s");
        // Decrypt naming another key than the blob's.
        let (_, blob) = generate(&kms, "alias/team", "s");
        assert_eq!(
            kms.decrypt(
                &json!({"CiphertextBlob": blob, "EncryptionContext": context("s"), "KeyId": given})
            )
            .expect_err("other key")
            .code(),
            "IncorrectKeyException"
        );
    }

    #[test]
    fn malformed_requests_are_validation_errors() {
        let kms = Kms::new(DEFAULT_KEY_ID);
        let code = |request: Value| kms.generate_data_key(&request).expect_err("error").code();
        assert_eq!(code(json!({"NumberOfBytes": 64})), "ValidationException");
        assert_eq!(
            code(json!({"KeyId": DEFAULT_KEY_ID})),
            "ValidationException"
        );
        assert_eq!(
            code(json!({"KeyId": DEFAULT_KEY_ID, "NumberOfBytes": 2048})),
            "ValidationException"
        );
        assert_eq!(
            code(
                json!({"KeyId": DEFAULT_KEY_ID, "NumberOfBytes": 64, "EncryptionContext": {"a": 1}})
            ),
            "SerializationException"
        );
        let spec = kms
            .generate_data_key(&json!({"KeyId": DEFAULT_KEY_ID, "KeySpec": "AES_128"}))
            .expect("key spec");
        assert_eq!(
            STANDARD
                .decode(spec["Plaintext"].as_str().expect("text"))
                .expect("b64")
                .len(),
            16
        );
        assert_eq!(
            kms.decrypt(&json!({"CiphertextBlob": "AAAA"}))
                .expect_err("short")
                .code(),
            "InvalidCiphertextException"
        );
        assert_eq!(
            kms.decrypt(&json!({"CiphertextBlob": "%%%"}))
                .expect_err("b64")
                .code(),
            "SerializationException"
        );
        assert_eq!(
            kms.decrypt(&json!({})).expect_err("missing").code(),
            "ValidationException"
        );
    }
}
