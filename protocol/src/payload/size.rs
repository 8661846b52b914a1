//! The terminal size of a shell session (PayloadType 3, client → agent, never encrypted).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{PayloadError, from_json, to_json};

/// `{"cols":<u32>,"rows":<u32>}`, keys in that order. The agent applies it to its pty with
/// `TIOCSWINSZ`, truncating each value to 16 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SizeData {
    /// Columns.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
}

impl SizeData {
    /// Reads a Size payload.
    ///
    /// # Errors
    /// The payload is not the size JSON object (the agent then leaves the message unacked).
    pub fn from_payload(payload: &[u8]) -> Result<Self, PayloadError> {
        from_json("Size", payload)
    }

    /// The JSON payload.
    pub fn to_payload(&self) -> Bytes {
        to_json(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_matches_the_official_client() {
        let size = SizeData {
            cols: 120,
            rows: 40,
        };
        assert_eq!(size.to_payload().as_ref(), br#"{"cols":120,"rows":40}"#);
        assert_eq!(
            SizeData::from_payload(br#"{"rows":40,"cols":120}"#).expect("parses"),
            size
        );
        assert!(SizeData::from_payload(br#"{"cols":-1,"rows":40}"#).is_err());
        assert!(SizeData::from_payload(b"80x24").is_err());
    }
}
