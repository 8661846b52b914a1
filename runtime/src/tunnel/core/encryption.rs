//! KMS session encryption of shell sessions (docs/protocol.md §11), sans-IO: the data key's
//! split into two AES-256-GCM keys and the payload framing. The KMS call itself is an action
//! of the core (`Action::GenerateDataKey`), performed by the I/O layer.
//!
//! The 64-byte data key KMS generates is split in halves: bytes 0–31 are the key the agent
//! encrypts with (so the client decrypts with it), bytes 32–63 the key the client encrypts
//! with. An encrypted payload is `nonce (12) ‖ ciphertext ‖ tag (16)` with no associated data.
//! Only Output travels encrypted from the client; Output, StdErr and ExitCode from the agent.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of data key the client asks KMS for.
pub const DATA_KEY_BYTES: i32 = 64;
/// Bytes an encrypted payload is longer than its plaintext: nonce and tag.
pub const OVERHEAD: usize = NONCE_LEN + 16;

/// A data key as KMS `GenerateDataKey` returns it.
pub struct DataKey {
    /// The encrypted key, handed to the agent, which has KMS decrypt it.
    pub ciphertext_blob: Vec<u8>,
    /// The key itself. Secret: never logged, wiped when dropped.
    pub plaintext: zeroize::Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field(
                "ciphertext_blob",
                &format_args!("{} bytes", self.ciphertext_blob.len()),
            )
            .field("plaintext", &"<redacted>")
            .finish()
    }
}

/// Why a payload could not be encrypted or decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncryptionError {
    /// The data key is not 64 bytes.
    #[error("the data key has {0} bytes, not {DATA_KEY_BYTES}")]
    KeyLength(usize),
    /// The payload is shorter than a nonce and a tag.
    #[error("an encrypted payload of {0} bytes is too short")]
    TooShort(usize),
    /// The tag does not match: another key, or altered bytes.
    #[error("the payload does not decrypt with the session key")]
    Authentication,
    /// The system's random number generator failed.
    #[error("no randomness for a nonce")]
    Random,
}

/// The two directions' keys of one session.
pub struct SessionCipher {
    /// Decrypts what the agent sends (the data key's first half).
    decrypt: LessSafeKey,
    /// Encrypts what the client sends (the second half).
    encrypt: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for SessionCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionCipher(<keys redacted>)")
    }
}

impl SessionCipher {
    /// The cipher for a 64-byte data key.
    ///
    /// # Errors
    /// [`EncryptionError::KeyLength`] for a key of any other length.
    pub fn new(data_key: &[u8]) -> Result<Self, EncryptionError> {
        if data_key.len() != DATA_KEY_BYTES as usize {
            return Err(EncryptionError::KeyLength(data_key.len()));
        }
        let (agent, client) = data_key.split_at(data_key.len() / 2);
        let key = |bytes: &[u8]| {
            UnboundKey::new(&AES_256_GCM, bytes)
                .map(LessSafeKey::new)
                .map_err(|_| EncryptionError::KeyLength(data_key.len()))
        };
        Ok(Self {
            decrypt: key(agent)?,
            encrypt: key(client)?,
            random: SystemRandom::new(),
        })
    }

    /// `plaintext` encrypted for the agent, with a random nonce (as the official client does).
    ///
    /// # Errors
    /// [`EncryptionError::Random`] if no nonce can be drawn.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| EncryptionError::Random)?;
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .encrypt
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| EncryptionError::Random)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// What the agent encrypted.
    ///
    /// # Errors
    /// [`EncryptionError::TooShort`] or [`EncryptionError::Authentication`].
    pub fn decrypt(&self, payload: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        if payload.len() < OVERHEAD {
            return Err(EncryptionError::TooShort(payload.len()));
        }
        let (nonce, sealed) = payload.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| EncryptionError::Random)?;
        let mut buffer = sealed.to_vec();
        let plaintext = self
            .decrypt
            .open_in_place(nonce, Aad::empty(), &mut buffer)
            .map_err(|_| EncryptionError::Authentication)?;
        Ok(plaintext.to_vec())
    }

    /// The challenge answer: what the agent encrypted, re-encrypted with the client's key.
    ///
    /// # Errors
    /// As [`SessionCipher::decrypt`] and [`SessionCipher::encrypt`].
    pub fn answer_challenge(&self, challenge: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        let plain = zeroize::Zeroizing::new(self.decrypt(challenge)?);
        self.encrypt(&plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's side, for the tests: it encrypts with the first half and decrypts with the
    /// second.
    fn agent(data_key: &[u8]) -> SessionCipher {
        let mut swapped = data_key[32..].to_vec();
        swapped.extend_from_slice(&data_key[..32]);
        SessionCipher::new(&swapped).expect("64 bytes")
    }

    #[test]
    fn each_side_decrypts_what_the_other_encrypted_and_nothing_else() {
        let key: Vec<u8> = (0..64).collect();
        let client = SessionCipher::new(&key).expect("64 bytes");
        let agent = agent(&key);
        let sealed = client.encrypt(b"ls -la\r").expect("encrypt");
        assert_eq!(sealed.len(), 7 + OVERHEAD);
        assert_eq!(agent.decrypt(&sealed).expect("agent decrypts"), b"ls -la\r");
        // The client cannot read its own traffic: the halves differ.
        assert_eq!(
            client.decrypt(&sealed),
            Err(EncryptionError::Authentication)
        );
        let reply = agent.encrypt(b"total 0\r\n").expect("encrypt");
        assert_eq!(client.decrypt(&reply).expect("decrypts"), b"total 0\r\n");
        let mut altered = reply.clone();
        altered[15] ^= 1;
        assert_eq!(
            client.decrypt(&altered),
            Err(EncryptionError::Authentication)
        );
        assert_eq!(
            client.decrypt(&reply[..27]),
            Err(EncryptionError::TooShort(27))
        );
        assert!(matches!(
            SessionCipher::new(&key[..32]),
            Err(EncryptionError::KeyLength(32))
        ));
    }

    #[test]
    fn the_challenge_comes_back_readable_by_the_agent() {
        let key: Vec<u8> = (100..164).collect();
        let client = SessionCipher::new(&key).expect("64 bytes");
        let agent = agent(&key);
        let secret = [7u8; 64];
        let challenge = agent.encrypt(&secret).expect("encrypt");
        assert_eq!(challenge.len(), 92, "12 + 64 + 16, as the agent sends it");
        let answer = client.answer_challenge(&challenge).expect("answer");
        assert_eq!(agent.decrypt(&answer).expect("agent reads it"), secret);
    }

    #[test]
    fn the_data_key_never_shows_in_debug_output() {
        let key = DataKey {
            ciphertext_blob: vec![1, 2, 3],
            plaintext: zeroize::Zeroizing::new(vec![0x5a; 64]),
        };
        let shown = format!("{key:?}");
        assert!(!shown.contains("90"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
