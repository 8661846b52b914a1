//! The `PayloadType` header field (docs/protocol.md §3.2).

use std::fmt;

/// What the payload of a stream-data message holds.
///
/// A transparent `u32` so that values unknown today (a newer agent) are kept and re-encoded
/// unchanged; the known values are associated constants and can be used in `match` patterns.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PayloadType(pub u32);

impl PayloadType {
    /// 0: no payload type, used by acknowledge, session-state and service messages.
    pub const UNSPECIFIED: Self = Self(0);
    /// 1: tunnel bytes (the smux byte stream in mux mode, raw TCP bytes in basic mode).
    pub const OUTPUT: Self = Self(1);
    /// 2: error text (unused by port sessions).
    pub const ERROR: Self = Self(2);
    /// 3: terminal size JSON (shell sessions only).
    pub const SIZE: Self = Self(3);
    /// 4: parameter (unused).
    pub const PARAMETER: Self = Self(4);
    /// 5: agent → client handshake request (JSON).
    pub const HANDSHAKE_REQUEST: Self = Self(5);
    /// 6: client → agent handshake response (JSON).
    pub const HANDSHAKE_RESPONSE: Self = Self(6);
    /// 7: agent → client handshake completion (JSON).
    pub const HANDSHAKE_COMPLETE: Self = Self(7);
    /// 8: KMS encryption challenge from the agent (never used for port sessions).
    pub const ENC_CHALLENGE_REQUEST: Self = Self(8);
    /// 9: KMS encryption challenge answer from the client.
    pub const ENC_CHALLENGE_RESPONSE: Self = Self(9);
    /// 10: a 4-byte big-endian flag (see [`Flag`](crate::payload::Flag)).
    pub const FLAG: Self = Self(10);
    /// 11: standard error of a non-interactive command.
    pub const STD_ERR: Self = Self(11);
    /// 12: exit code of a non-interactive command.
    pub const EXIT_CODE: Self = Self(12);

    /// The protocol's name for this value, if it is a known one.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::UNSPECIFIED => "Unspecified",
            Self::OUTPUT => "Output",
            Self::ERROR => "Error",
            Self::SIZE => "Size",
            Self::PARAMETER => "Parameter",
            Self::HANDSHAKE_REQUEST => "HandshakeRequest",
            Self::HANDSHAKE_RESPONSE => "HandshakeResponse",
            Self::HANDSHAKE_COMPLETE => "HandshakeComplete",
            Self::ENC_CHALLENGE_REQUEST => "EncChallengeRequest",
            Self::ENC_CHALLENGE_RESPONSE => "EncChallengeResponse",
            Self::FLAG => "Flag",
            Self::STD_ERR => "StdErr",
            Self::EXIT_CODE => "ExitCode",
            _ => return None,
        })
    }
}

impl fmt::Debug for PayloadType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}({})", self.0),
            None => write!(f, "PayloadType({})", self.0),
        }
    }
}

impl From<u32> for PayloadType {
    fn from(value: u32) -> Self {
        Self(value)
    }
}

impl From<PayloadType> for u32 {
    fn from(value: PayloadType) -> Self {
        value.0
    }
}
