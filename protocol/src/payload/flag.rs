//! The `Flag` payload (PayloadType 10): a 4-byte big-endian u32 (docs/protocol.md §3.3).

use bytes::Bytes;

/// A control flag sent as an ordinary, sequenced stream-data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flag {
    /// 1, client → agent, basic mode: the local TCP client went away.
    DisconnectToPort,
    /// 2, client → agent: the client is quitting; the agent ends the session.
    TerminateSession,
    /// 3, agent → client, mux mode: the agent could not dial the destination for a new stream.
    ConnectToPortError,
    /// Any other value, kept as received.
    Other(u32),
}

/// Why a Flag payload could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("flag payload must be 4 bytes, got {0}")]
pub struct FlagError(pub usize);

impl Flag {
    /// The wire value.
    pub fn value(self) -> u32 {
        match self {
            Self::DisconnectToPort => 1,
            Self::TerminateSession => 2,
            Self::ConnectToPortError => 3,
            Self::Other(value) => value,
        }
    }

    /// The flag for a wire value.
    pub fn from_value(value: u32) -> Self {
        match value {
            1 => Self::DisconnectToPort,
            2 => Self::TerminateSession,
            3 => Self::ConnectToPortError,
            other => Self::Other(other),
        }
    }

    /// Reads a Flag payload.
    ///
    /// # Errors
    /// The payload is not exactly 4 bytes.
    pub fn from_payload(payload: &[u8]) -> Result<Self, FlagError> {
        let bytes: [u8; 4] = payload.try_into().map_err(|_| FlagError(payload.len()))?;
        Ok(Self::from_value(u32::from_be_bytes(bytes)))
    }

    /// The 4-byte big-endian payload.
    pub fn to_payload(self) -> Bytes {
        Bytes::copy_from_slice(&self.value().to_be_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminate_session_is_big_endian_two() {
        assert_eq!(Flag::TerminateSession.to_payload().as_ref(), &[0, 0, 0, 2]);
        assert_eq!(
            Flag::from_payload(&[0, 0, 0, 3]),
            Ok(Flag::ConnectToPortError)
        );
        assert_eq!(Flag::from_payload(&[0, 0, 1, 0]), Ok(Flag::Other(256)));
        assert_eq!(Flag::from_payload(&[0, 1]), Err(FlagError(2)));
        for flag in [
            Flag::DisconnectToPort,
            Flag::TerminateSession,
            Flag::ConnectToPortError,
        ] {
            assert_eq!(Flag::from_value(flag.value()), flag);
        }
    }
}
