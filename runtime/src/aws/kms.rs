//! KMS for shell sessions encrypted by the account's Session Manager preferences: one
//! `GenerateDataKey` per session (docs/protocol.md §11).
//!
//! The call goes to KMS's own endpoint for the region, not to the SSM endpoint of the
//! tunnel: set `AWS_ENDPOINT_URL_KMS` (or `endpoint_url` in a profile's `services` section)
//! to reach another one, as for any AWS SDK.

use aws_sdk_kms::primitives::Blob;

use super::{ApiError, ApiErrorKind, SsmApi};
use crate::tunnel::core::encryption::{DATA_KEY_BYTES, DataKey};

impl SsmApi {
    /// A 64-byte data key under `key_id`, bound to `context`.
    ///
    /// # Errors
    /// [`ApiError`] from KMS (e.g. access denied to the key, an unknown key), or
    /// [`ApiErrorKind::Other`] when the answer lacks the key.
    pub async fn generate_data_key(
        &self,
        key_id: &str,
        context: &[(String, String)],
    ) -> Result<DataKey, ApiError> {
        const OP: &str = "GenerateDataKey";
        let config = self.load().await?;
        let client = aws_sdk_kms::Client::new(&config);
        let mut call = client
            .generate_data_key()
            .key_id(key_id)
            .number_of_bytes(DATA_KEY_BYTES);
        for (name, value) in context {
            call = call.encryption_context(name, value);
        }
        let output = call.send().await.map_err(|e| ApiError::from_sdk(OP, e))?;
        let missing = |field: &str| {
            ApiError::new(OP, ApiErrorKind::Other, format!("response has no {field}"))
        };
        let ciphertext_blob = output
            .ciphertext_blob()
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| missing("CiphertextBlob"))?;
        let plaintext = output
            .plaintext()
            .map(Blob::as_ref)
            .map(|b| zeroize::Zeroizing::new(b.to_vec()))
            .ok_or_else(|| missing("Plaintext"))?;
        tracing::debug!(target: "ssm_tether::aws", key_id, "GenerateDataKey ok");
        Ok(DataKey {
            ciphertext_blob,
            plaintext,
        })
    }
}
