//! The agent's KMS session encryption (PROTOCOL-SESSIONS.md §4; agent `session/crypto`): the
//! split of the 64-byte data key, AES-256-GCM with counter nonces, and the KMS `Decrypt` call
//! that recovers the data key from the client's ciphertext blob.
//!
//! Key material lives only in the ciphers: it is never logged, and `Debug` shows nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use aes_gcm::aead::Aead;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The data key size the agent expects: two AES-256 keys.
pub(crate) const DATA_KEY_BYTES: usize = 64;
/// GCM nonce size.
pub(crate) const NONCE_LEN: usize = 12;
/// GCM tag size.
pub(crate) const TAG_LEN: usize = 16;
/// Bytes of the random challenge the agent offers for the encryption context.
pub(crate) const RANDOM_CHALLENGE_BYTES: usize = 16;
/// Bytes of the challenge sent (encrypted) in EncChallengeRequest.
pub(crate) const ENC_CHALLENGE_BYTES: usize = 64;
/// Encryption-context keys.
pub(crate) const CONTEXT_SESSION_ID: &str = "aws:ssm:SessionId";
/// The target (instance id) the data key is bound to.
pub(crate) const CONTEXT_TARGET_ID: &str = "aws:ssm:TargetId";
/// The random challenge, when the client acknowledged it.
pub(crate) const CONTEXT_RANDOM_CHALLENGE: &str = "aws:ssm:RandomChallenge";
/// How long the agent's KMS call may take.
const KMS_TIMEOUT: Duration = Duration::from_secs(15);
/// The agent's SigV4 header; the emulator checks no signature (see `mgs`).
const DUMMY_AUTHORIZATION: &str = "AWS4-HMAC-SHA256 Credential=AKIAEMULATORAGENT/20240101/us-east-1/kms/aws4_request, SignedHeaders=host;x-amz-date;x-amz-target, Signature=0000000000000000000000000000000000000000000000000000000000000000";

/// Why a payload could not be encrypted or decrypted, or the key not set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CryptoError {
    /// The data key KMS returned is not 64 bytes.
    #[error("the data key has {0} bytes, not 64")]
    KeyLength(usize),
    /// The payload is shorter than a nonce and a tag.
    #[error("Error decrypting encrypted text, the payload of {0} bytes is too short")]
    TooShort(usize),
    /// Authentication failed: another key, another nonce, or altered bytes.
    #[error("Error decrypting encrypted text, cipher: message authentication failed")]
    Authentication,
    /// The cipher refused to encrypt (cannot happen for payloads of a data channel).
    #[error("Error encrypting text")]
    Encrypt,
}

/// The agent's two directions: it encrypts with the data key's first half and decrypts with
/// the second (the client does the opposite). Nonces are a 96-bit little-endian counter in
/// three u32 words from a random start, as the agent's `NonceGenerator`.
pub(crate) struct BlockCipher {
    encrypt: Aes256Gcm,
    decrypt: Aes256Gcm,
    nonce: [u32; 3],
}

impl std::fmt::Debug for BlockCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockCipher(<keys redacted>)")
    }
}

impl BlockCipher {
    /// The ciphers for a 64-byte data key, with a random nonce start.
    ///
    /// # Errors
    /// [`CryptoError::KeyLength`] for a key of another length.
    pub(crate) fn new(data_key: &[u8]) -> Result<Self, CryptoError> {
        Self::with_nonce(data_key, rand::random())
    }

    /// The same, with a given nonce start (tests).
    pub(crate) fn with_nonce(data_key: &[u8], nonce: [u32; 3]) -> Result<Self, CryptoError> {
        if data_key.len() != DATA_KEY_BYTES {
            return Err(CryptoError::KeyLength(data_key.len()));
        }
        let (agent, client) = data_key.split_at(DATA_KEY_BYTES / 2);
        let key = |half: &[u8]| {
            Aes256Gcm::new_from_slice(half).map_err(|_| CryptoError::KeyLength(data_key.len()))
        };
        Ok(Self {
            encrypt: key(agent)?,
            decrypt: key(client)?,
            nonce,
        })
    }

    /// `nonce ‖ ciphertext ‖ tag` of `plaintext`, no associated data; advances the counter.
    ///
    /// # Errors
    /// [`CryptoError::Encrypt`] if the cipher fails (not for sizes a data channel carries).
    pub(crate) fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce = self.next_nonce();
        let sealed = self
            .encrypt
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .map_err(|_| CryptoError::Encrypt)?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// What the client encrypted with its half.
    ///
    /// # Errors
    /// [`CryptoError::TooShort`] or [`CryptoError::Authentication`].
    pub(crate) fn decrypt(&self, payload: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if payload.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::TooShort(payload.len()));
        }
        let (nonce, sealed) = payload.split_at(NONCE_LEN);
        self.decrypt
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| CryptoError::Authentication)
    }

    /// The current counter as 12 little-endian bytes, then the counter plus one (with carry
    /// from word to word).
    fn next_nonce(&mut self) -> [u8; NONCE_LEN] {
        let mut bytes = [0u8; NONCE_LEN];
        for (chunk, word) in bytes.chunks_exact_mut(4).zip(self.nonce) {
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        for word in &mut self.nonce {
            *word = word.wrapping_add(1);
            if *word != 0 {
                break;
            }
        }
        bytes
    }
}

/// The random challenge of a KMS handshake: standard base64 of 16 random bytes.
pub(crate) fn random_challenge() -> String {
    STANDARD.encode(rand::random::<[u8; RANDOM_CHALLENGE_BYTES]>())
}

/// The agent's KMS `Decrypt(CiphertextBlob, EncryptionContext, KeyId)` against `endpoint`
/// (AWS JSON 1.1). Returns the data key, or the agent's error text.
pub(crate) async fn kms_decrypt(
    endpoint: &str,
    blob: &[u8],
    context: &BTreeMap<String, String>,
    key_id: &str,
) -> Result<Vec<u8>, String> {
    let body = serde_json::json!({
        "CiphertextBlob": STANDARD.encode(blob),
        "EncryptionContext": context,
        "KeyId": key_id,
    })
    .to_string();
    let request = hyper::Request::post(format!("{}/", endpoint.trim_end_matches('/')))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", "TrentService.Decrypt")
        .header("x-amz-date", "20240101T000000Z")
        .header("authorization", DUMMY_AUTHORIZATION)
        .body(Full::new(Bytes::from(body)))
        .map_err(|err| format!("Error when decrypting data key {err}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let call = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = tokio::time::timeout(KMS_TIMEOUT, call)
        .await
        .map_err(|_| "Error when decrypting data key RequestTimeout".to_owned())?
        .map_err(|err| format!("Error when decrypting data key {err}"))?;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status != 200 {
        let code = json["__type"].as_str().unwrap_or("UnknownError");
        let message = json["message"].as_str().unwrap_or_default();
        return Err(format!(
            "Error when decrypting data key {code}: {message}\n\tstatus code: {status}"
        ));
    }
    json["Plaintext"]
        .as_str()
        .and_then(|text| STANDARD.decode(text).ok())
        .ok_or_else(|| "Error when decrypting data key: no Plaintext in the response".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Vec<u8> {
        (0..64).collect()
    }

    /// The client's view: it encrypts with the second half, decrypts with the first.
    fn client(data_key: &[u8]) -> BlockCipher {
        let mut swapped = data_key[32..].to_vec();
        swapped.extend_from_slice(&data_key[..32]);
        BlockCipher::with_nonce(&swapped, [0; 3]).expect("64 bytes")
    }

    #[test]
    fn halves_are_split_as_the_agent_does() {
        let mut agent = BlockCipher::with_nonce(&key(), [7, 0, 0]).expect("64 bytes");
        let mut client = client(&key());
        let sealed = agent.encrypt(b"$ ").expect("encrypt");
        assert_eq!(sealed.len(), 2 + NONCE_LEN + TAG_LEN);
        assert_eq!(client.decrypt(&sealed).expect("client reads it"), b"$ ");
        assert_eq!(agent.decrypt(&sealed), Err(CryptoError::Authentication));
        let typed = client.encrypt(b"ls\r").expect("encrypt");
        assert_eq!(agent.decrypt(&typed).expect("agent reads it"), b"ls\r");
        assert_eq!(agent.decrypt(&typed[..20]), Err(CryptoError::TooShort(20)));
        assert!(matches!(
            BlockCipher::new(&key()[..48]),
            Err(CryptoError::KeyLength(48))
        ));
    }

    #[test]
    fn nonces_count_up_little_endian_with_carry() {
        let mut agent = BlockCipher::with_nonce(&key(), [u32::MAX, u32::MAX, 5]).expect("key");
        let first = agent.encrypt(b"a").expect("encrypt");
        let second = agent.encrypt(b"b").expect("encrypt");
        assert_eq!(
            &first[..12],
            &[0xff; 8]
                .iter()
                .copied()
                .chain([5, 0, 0, 0])
                .collect::<Vec<_>>()[..]
        );
        assert_eq!(&second[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0]);
        assert!(!format!("{agent:?}").contains('0'));
    }

    #[test]
    fn the_random_challenge_is_16_bytes_of_base64() {
        let challenge = random_challenge();
        assert_eq!(STANDARD.decode(&challenge).expect("b64").len(), 16);
        assert_eq!(challenge.len(), 24);
    }
}
