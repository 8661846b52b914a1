//! Payloads carried inside [`ClientMessage`](super::ClientMessage)s and the OpenDataChannel
//! text frame (docs/protocol.md §3–§5).
//!
//! JSON payloads are serde types whose field names, order and shapes match what the Go client
//! and agent marshal, so a frame we write is byte-identical to theirs. Field names therefore
//! follow the wire (`PascalCase`) through `#[serde(rename)]`, not Rust naming.

mod ack;
mod channel;
mod flag;
mod handshake;
mod kms;
mod open;
mod size;

pub use ack::AcknowledgeContent;
pub use channel::{AgentSessionState, ChannelClosed, SessionState};
pub use flag::{Flag, FlagError};
pub use handshake::{
    ActionParameters, ActionStatus, ActionType, HandshakeComplete, HandshakeRequest,
    HandshakeResponse, ProcessedClientAction, RequestedClientAction, SessionTypeRequest,
};
pub use kms::{EncryptionChallenge, KmsEncryptionRequest, KmsEncryptionResponse};
pub use open::OpenDataChannel;
pub use size::SizeData;

/// Why a JSON payload could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid {what} payload: {source}")]
pub struct PayloadError {
    /// Which payload was being read.
    pub what: &'static str,
    /// The JSON error, with line and column.
    #[source]
    pub source: serde_json::Error,
}

/// Parses a JSON payload, naming the payload kind in the error.
pub(crate) fn from_json<'a, T: serde::Deserialize<'a>>(
    what: &'static str,
    bytes: &'a [u8],
) -> Result<T, PayloadError> {
    serde_json::from_slice(bytes).map_err(|source| PayloadError { what, source })
}

/// Serializes a payload to JSON.
///
/// Our payload types contain only strings, numbers, booleans, options, vectors and JSON values
/// with string keys, for which serde_json cannot fail.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> bytes::Bytes {
    match serde_json::to_vec(value) {
        Ok(json) => json.into(),
        Err(err) => unreachable!("payload types always serialize: {err}"),
    }
}

/// Declares a string-valued wire enum that keeps unknown strings, with serde as a JSON string.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// Any other value, kept as received.
            Other(String),
        }

        impl $name {
            /// The wire string.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $text,)*
                    Self::Other(other) => other,
                }
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text {
                    $($text => Self::$variant,)*
                    other => Self::Other(other.to_owned()),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Ok(Self::from(text.as_ref()))
            }
        }
    };
}
pub(crate) use string_enum;
